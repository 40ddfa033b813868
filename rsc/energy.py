"""Energy per image: an analytical model counted from the structure, and measured counters where they exist.

    python -m rsc.energy --model resnet18 --image-size 64 --num-classes 21

**The model** (in the spirit of energy-aware pruning, Yang, Chen & Sze, CVPR 2017): the energy of
one image (batch 1) is the sum over the Conv and Linear layers - the same innermost layers
:func:`rsc.cost.count_macs` counts, float or int8, grouped, depthwise, 1x1, the Tucker/SVD chains
and channel-pruned layers the spaces produce - of *computation* plus *data movement* through
three memory levels::

    E_layer = M * e_mac(b)                                   computation
            + 4 M * e_rf * b/32                              register file (RF)
            + (max(W, M/R) + max(I, M/R) + max(O, M/R)) * e_buf * b/32    on-chip buffer
            + (W + [I + O if (I + O) * b/8 > buffer_bytes]) * e_dram * b/32   DRAM

with ``M`` the layer's MACs, ``W`` its weight words (weights + bias), ``I``/``O`` the words of its
input/output activations, ``b`` its arithmetic and word width in bits (8 for int8 layers of
``torch.ao.nn.quantized``, else the output's dtype: 32 for float32), ``R = array_reuse``.

Reuse assumptions, plainly:

* **RF**: every MAC reads its three operands (weight, input, partial sum) from the register
  file and writes its partial sum back: 4 RF accesses per MAC.
* **Buffer**: each word is read from the buffer into the PE array at least once, and at most
  once per ``array_reuse`` uses (spatial sharing across PEs times temporal reuse in the RF). A
  word used ``u`` times per image (weights ``M/W`` = output positions, inputs about ``M/I``,
  outputs ``M/O`` = accumulations) costs ``max(1, u/R)`` buffer accesses: high-reuse 3x3
  convolutions pay about ``3M/R``, low-reuse layers (depthwise, FC) about one access per word.
  DRAM-to-buffer fills are not counted separately (the DRAM access dominates).
* **DRAM**: weights are read from DRAM once per image (batch 1: no reuse across images);
  activations stay on chip unless the layer's input plus output exceed ``buffer_bytes``, in which
  case the input is read from DRAM once and the output written once. The image's own read is not
  counted unless the first layer spills.
* Every word moved is ``b`` bits: int8 layers move 1-byte words (activations, weights and, as a
  simplification, partial sums); memory costs scale with the bits moved (``e * b/32``).
* BatchNorm (folded into the conv at inference), activations, pooling and residual additions
  are not counted, as in ``macs``. Dense hardware by default: zero weights (magnitude pruning)
  cost as much as others unless ``skip_zero_weights`` (zero-weight MACs gated and weights stored
  compressed, as Yang et al. assume; index overhead not counted).

**Default costs** (45 nm, 0.9 V; M. Horowitz, "Computing's energy problem", ISSCC 2014, as
tabulated by Han et al., NIPS 2015, Fig./Table 1): 32-bit float MAC 3.7 (mult) + 0.9 (add) = 4.6 pJ,
16-bit float 1.1 + 0.4 = 1.5 pJ, 8-bit int 0.2 + 0.03 = 0.23 pJ; 32-bit register file 1 pJ; SRAM
by size, 64-bit reads of 10 / 20 / 100 pJ for 8 KB / 32 KB / 1 MB, i.e. 5 / 10 / 50 pJ per 32-bit
word, interpolated log-linearly in size (:func:`sram_pj_per_word`; 26 pJ for the default 128 KiB
buffer, about Eyeriss's 108 KB global buffer); DRAM 640 pJ per 32-bit word. For comparison, the
Eyeriss normalised costs (Chen et al., ISCA 2016; Sze et al., Proc. IEEE 2017) are RF 1x, PE array
2x, buffer 6x, DRAM 200x of a 16-bit MAC; :meth:`EnergyModel.eyeriss` builds that preset (its 2x
inter-PE level is not modelled separately). ``array_reuse = 64`` is an assumption, not a
published figure.

Absolute joules of such a model are indicative; what the search needs is the *ranking* of
plans, which the structure determines. Where measured energies exist, :func:`calibrate` fits a
compute and a data-movement scale factor to them (non-negative least squares).

**Counters**: :func:`counters` reports which measured energy counters this machine has (Intel
RAPL under ``/sys/class/powercap``, NVIDIA NVML through ``pynvml``, the Zeus library if
installed), each with the reason when it is unavailable; :func:`measure_energy` measures a
function's energy with them, or returns None and the reason - never 0.0 for "unknown".

The registered cost ``energy_mj`` (millijoules per image, analytic) makes ``energy`` a budget
(``energy<5mJ``, ``energy<50%``) and an objective (``--objectives accuracy,energy``).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rsc.cost import register_cost
from rsc.errors import ConfigError

if TYPE_CHECKING:  # torch loads on first use, so that CLIs answer --help at once
    from torch import nn

    from rsc.cost import CostSettings

__all__ = [
    "ENERGY_UNITS", "EnergyModel", "LayerEnergy", "sram_pj_per_word", "energy_breakdown", "estimate_energy",
    "summarize", "calibrate", "Counter", "counters", "measure_energy", "POWERCAP",
]

#: Budget unit grammar of ``energy`` (base unit: millijoule per image).
ENERGY_UNITS: Mapping[str, float] = {"": 1.0, "mj": 1.0, "j": 1e3, "uj": 1e-3, "nj": 1e-6}

#: Horowitz ISSCC 2014 (45 nm): SRAM read energy per 32-bit word by array size (bytes -> pJ),
#: half of the published 64-bit figures (8 KB 10 pJ, 32 KB 20 pJ, 1 MB 100 pJ).
SRAM_PJ_PER_WORD: tuple[tuple[int, float], ...] = ((8 * 2**10, 5.0), (32 * 2**10, 10.0), (2**20, 50.0))


def sram_pj_per_word(size_bytes: float) -> float:
    """Energy of one 32-bit read from an SRAM of ``size_bytes`` (Horowitz 2014, 45 nm).

    Log-linear in size through 8 KiB 5 pJ, 32 KiB 10 pJ and 1 MiB 50 pJ; held at 5 pJ below
    8 KiB (smaller arrays are register-file-like: use ``rf_pj``), extrapolated above 1 MiB
    along the last segment.
    """
    if not math.isfinite(size_bytes) or size_bytes <= 0:
        raise ConfigError(f"energy model: SRAM size must be a positive number of bytes, got {size_bytes!r}")
    points = SRAM_PJ_PER_WORD
    if size_bytes <= points[0][0]:
        return points[0][1]
    for (s0, e0), (s1, e1) in zip(points, points[1:]):
        if size_bytes <= s1:
            break
    t = math.log2(size_bytes / s0) / math.log2(s1 / s0)
    return e0 + t * (e1 - e0)


_COSTS = ("mac_fp32_pj", "mac_fp16_pj", "mac_int8_pj", "rf_pj", "buffer_pj", "dram_pj")


@dataclass(frozen=True, kw_only=True)
class EnergyModel:
    """Per-operation energies (picojoules) and the memory hierarchy of the analytical model.

    Defaults: Horowitz, ISSCC 2014, 45 nm (see the module docstring). Memory costs are per
    ``reference_bits``-bit word and scale with the bits a layer moves.

    Attributes:
        mac_fp32_pj: one 32-bit float multiply-accumulate (3.7 pJ mult + 0.9 pJ add).
        mac_fp16_pj: one 16-bit float MAC (1.1 + 0.4), for half-precision layers.
        mac_int8_pj: one 8-bit integer MAC (0.2 + 0.03), for int8 layers.
        rf_pj: one register-file access (32-bit register file: 1 pJ).
        buffer_pj: one on-chip buffer access; None: :func:`sram_pj_per_word` of ``buffer_bytes``.
        dram_pj: one DRAM access (640 pJ per 32-bit word).
        buffer_bytes: on-chip buffer capacity; a layer whose input + output exceed it spills to DRAM.
        reference_bits: the word width the memory costs are quoted for.
        array_reuse: uses each word fetched from the buffer serves inside the PE array (>= 1).
        rf_accesses_per_mac: register-file accesses per MAC (3 operand reads + 1 partial-sum write).
        skip_zero_weights: zero weights cost nothing (gated MACs, compressed weight storage).
        source: where the numbers come from (a calibrated model says how it was fitted).
    """

    mac_fp32_pj: float = 3.7 + 0.9
    mac_fp16_pj: float = 1.1 + 0.4
    mac_int8_pj: float = 0.2 + 0.03
    rf_pj: float = 1.0
    buffer_pj: float | None = None
    dram_pj: float = 640.0
    buffer_bytes: int = 128 * 2**10
    reference_bits: int = 32
    array_reuse: float = 64.0
    rf_accesses_per_mac: float = 4.0
    skip_zero_weights: bool = False
    source: str = "Horowitz ISSCC 2014, 45 nm"

    def __post_init__(self) -> None:
        if not isinstance(self.buffer_bytes, int) or isinstance(self.buffer_bytes, bool) or self.buffer_bytes < 1:
            raise ConfigError(f"energy model: buffer_bytes must be a positive integer, got {self.buffer_bytes!r}")
        if self.buffer_pj is None:
            object.__setattr__(self, "buffer_pj", sram_pj_per_word(self.buffer_bytes))
        for name in (*_COSTS, "rf_accesses_per_mac"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"energy model: {name} must be a finite number >= 0 (picojoules), got {value!r}")
            object.__setattr__(self, name, float(value))
        if (isinstance(self.array_reuse, bool) or not isinstance(self.array_reuse, (int, float))
                or not math.isfinite(self.array_reuse) or self.array_reuse < 1):
            raise ConfigError(f"energy model: array_reuse must be a finite number >= 1, got {self.array_reuse!r}")
        if not isinstance(self.reference_bits, int) or self.reference_bits < 1:
            raise ConfigError(f"energy model: reference_bits must be a positive integer, got {self.reference_bits!r}")

    @classmethod
    def eyeriss(cls, mac_pj: float = 1.0, **kw: Any) -> EnergyModel:
        """Eyeriss's normalised costs (Chen et al. 2016): RF 1x, buffer 6x, DRAM 200x of ``mac_pj``,
        the energy of one 16-bit MAC, taken for every width here (normalised units when 1.0)."""
        costs = dict(mac_fp32_pj=mac_pj, mac_fp16_pj=mac_pj, mac_int8_pj=mac_pj, rf_pj=mac_pj,
                     buffer_pj=6 * mac_pj, dram_pj=200 * mac_pj, reference_bits=16,
                     source="Eyeriss normalised costs (RF 1x, buffer 6x, DRAM 200x a MAC)")
        return cls(**{**costs, **kw})

    def mac_pj(self, bits: int) -> float:
        """Energy of one MAC at ``bits`` (8: int8, 16: half, 32: float)."""
        table = {8: self.mac_int8_pj, 16: self.mac_fp16_pj, 32: self.mac_fp32_pj}
        if bits not in table:
            raise ConfigError(f"energy model: no MAC cost for {bits}-bit layers (known: 8, 16, 32)")
        return table[bits]

    def scaled(self, compute: float = 1.0, data: float = 1.0, *, source: str | None = None) -> EnergyModel:
        """The same model with MAC costs times ``compute`` and memory costs times ``data``."""
        return replace(self, mac_fp32_pj=self.mac_fp32_pj * compute, mac_fp16_pj=self.mac_fp16_pj * compute,
                       mac_int8_pj=self.mac_int8_pj * compute, rf_pj=self.rf_pj * data,
                       buffer_pj=float(self.buffer_pj) * data, dram_pj=self.dram_pj * data,
                       source=source or self.source)

    def calibrated(self, measurements: Iterable[tuple[nn.Module, float]], image_size: int, *,
                   in_channels: int = 3, split: bool = True) -> EnergyModel:
        """This model fitted to measured joules per image: see :func:`calibrate`."""
        return calibrate(measurements, image_size, in_channels=in_channels, base=self, split=split)


@dataclass(frozen=True)
class LayerEnergy:
    """One layer's energy for one image, in picojoules, and the counts it comes from."""

    name: str
    kind: str  # "conv", "conv dw", "conv g4", "linear"
    bits: int
    macs: int
    weights: int
    inputs: int
    outputs: int
    spills: bool
    compute_pj: float
    rf_pj: float
    buffer_pj: float
    dram_pj: float

    @property
    def data_pj(self) -> float:
        """Data movement: DRAM + buffer + register file."""
        return self.dram_pj + self.buffer_pj + self.rf_pj

    @property
    def total_pj(self) -> float:
        return self.compute_pj + self.data_pj

    def to_dict(self) -> dict[str, Any]:
        return {**{f.name: getattr(self, f.name) for f in fields(self)}, "data_pj": self.data_pj,
                "total_pj": self.total_pj}


def _is_int8(m: nn.Module, out: Any) -> bool:
    mod = type(m).__module__
    return bool(getattr(out, "is_quantized", False)) or mod.startswith(
        ("torch.ao.nn.quantized", "torch.ao.nn.intrinsic.quantized", "torch.nn.quantized"))


def _tensor(value: Any) -> Any:
    """A module's weight/bias: a tensor (float modules) or the result of a getter (quantised ones)."""
    import torch

    if callable(value) and not isinstance(value, torch.Tensor):
        try:
            value = value()
        except Exception:  # noqa: BLE001 - a method that is not a getter
            return None
    return value if isinstance(value, torch.Tensor) else None


def _density(weight: Any) -> float:
    import torch

    if weight is None or weight.numel() == 0:
        return 1.0
    w = weight.dequantize() if weight.is_quantized else weight
    return float(torch.count_nonzero(w)) / w.numel()


def _layer(em: EnergyModel, name: str, kind: str, bits: int, macs: int, weights: int, inputs: int,
           outputs: int, density: float = 1.0) -> LayerEnergy:
    r = bits / em.reference_bits
    eff_macs, eff_weights = macs * density, weights * density
    per = eff_macs / em.array_reuse
    spills = (inputs + outputs) * bits / 8 > em.buffer_bytes
    dram_words = eff_weights + ((inputs + outputs) if spills else 0)
    return LayerEnergy(
        name=name, kind=kind, bits=bits, macs=macs, weights=weights, inputs=inputs, outputs=outputs, spills=spills,
        compute_pj=eff_macs * em.mac_pj(bits),
        rf_pj=em.rf_accesses_per_mac * eff_macs * em.rf_pj * r,
        buffer_pj=(max(eff_weights, per) + max(inputs, per) + max(outputs, per)) * float(em.buffer_pj) * r,
        dram_pj=dram_words * em.dram_pj * r)


def energy_breakdown(model: nn.Module, image_size: int, in_channels: int = 3,
                     energy_model: EnergyModel | None = None) -> list[LayerEnergy]:
    """Per-layer energy of one image (batch 1) through ``model``, in execution order.

    Innermost Conv/Linear modules only (float or ``torch.ao.nn.quantized``), counted with forward
    hooks on one forward pass of zeros on the model's device and in its float dtype, in eval mode
    (restored after).
    A module called twice appears twice.
    """
    import torch

    from rsc.cost import hooked_forward

    em = energy_model or EnergyModel()
    if not isinstance(image_size, int) or image_size < 1 or not isinstance(in_channels, int) or in_channels < 1:
        raise ConfigError(f"energy: image_size and in_channels must be positive integers, "
                          f"got {image_size!r}, {in_channels!r}")
    layers: list[LayerEnergy] = []

    def hook_for(name: str, kind: str) -> Callable[..., None]:
        def hook(m: nn.Module, inp: Any, out: Any) -> None:
            x = inp[0] if isinstance(inp, tuple) and inp else inp
            bits = 8 if _is_int8(m, out) else out.element_size() * 8
            weight, bias = _tensor(getattr(m, "weight", None)), _tensor(getattr(m, "bias", None))
            n_bias = bias.numel() if bias is not None else 0
            if kind == "conv":
                ks = m.kernel_size if isinstance(m.kernel_size, tuple) else (m.kernel_size,)
                k = math.prod(int(s) for s in ks)
                per_out = (m.in_channels // m.groups) * k
                macs = out.numel() * per_out
                weights = m.out_channels * per_out + n_bias
                label = ("conv dw" if m.groups == m.in_channels and m.groups > 1
                         else f"conv g{m.groups}" if m.groups > 1 else "conv")
                label += " " + "x".join(str(int(s)) for s in ks)
            else:
                macs = out.numel() * m.in_features
                weights = m.in_features * m.out_features + n_bias
                label = "linear"
            density = _density(weight) if em.skip_zero_weights else 1.0
            layers.append(_layer(em, name, label, bits, int(macs), int(weights), int(x.numel()),
                                 int(out.numel()), density))
        return hook

    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    hooked_forward(model, hook_for, image_size=image_size, in_channels=in_channels, dtype=dtype)
    return layers


def summarize(layers: Sequence[LayerEnergy]) -> dict[str, float]:
    """Totals of a breakdown in picojoules: ``compute``, ``rf``, ``buffer``, ``dram``, ``data``, ``total``
    and ``macs``."""
    out = {k: float(sum(getattr(layer, f"{k}_pj") for layer in layers))
           for k in ("compute", "rf", "buffer", "dram", "data", "total")}
    out["macs"] = float(sum(layer.macs for layer in layers))
    return out


def estimate_energy(model: nn.Module, image_size: int, in_channels: int = 3,
                    energy_model: EnergyModel | None = None) -> float:
    """Joules per image (batch 1) of ``model`` under ``energy_model`` (default: :class:`EnergyModel`())."""
    return summarize(energy_breakdown(model, image_size, in_channels, energy_model))["total"] * 1e-12


# -- calibration -------------------------------------------------------------------------------


def calibrate(measurements: Iterable[tuple[nn.Module, float]], image_size: int, *, in_channels: int = 3,
              base: EnergyModel | None = None, split: bool = True) -> EnergyModel:
    """Fit ``base`` to measured energies: a new EnergyModel whose estimates best match them.

    Model: ``measured_j ~ a * compute_j + b * data_j`` over the measured models (each
    ``(model, joules per image)``, measured at ``image_size``, batch 1), solved for ``a, b >= 0``
    by non-negative least squares (``scipy.optimize.nnls``) on relative errors (each row divided
    by its measurement, so small and large models weigh alike). ``split=False`` fits one factor
    for the whole estimate. The MAC costs are multiplied by ``a``, the memory costs by ``b``;
    ratios within each group (int8 vs float, DRAM vs buffer) are kept. Fit the MAC/DRAM split
    with models that differ in it (e.g. a base, a pruned and an int8 model): one measurement
    cannot separate two factors.

    Raises:
        ConfigError: no measurements, a measurement that is not a positive finite number of
            joules, fewer distinct measurements than factors, or a fit that gives no positive scale.
    """
    import numpy as np
    from scipy.optimize import nnls

    base = base or EnergyModel()
    pairs = list(measurements)
    if not pairs:
        raise ConfigError("energy calibration: no measurements given (need (model, measured joules) pairs)")
    rows, target = [], []
    for i, pair in enumerate(pairs):
        try:
            model, joules = pair
            joules = float(joules)
        except (TypeError, ValueError):
            raise ConfigError(f"energy calibration: measurement {i} must be a (model, joules) pair, got {pair!r}") from None
        if not math.isfinite(joules) or joules <= 0:
            raise ConfigError(f"energy calibration: measurement {i} must be a positive finite number of joules, "
                              f"got {joules!r}")
        s = summarize(energy_breakdown(model, image_size, in_channels, base))
        terms = [s["compute"] * 1e-12, s["data"] * 1e-12] if split else [s["total"] * 1e-12]
        rows.append([t / joules for t in terms])
        target.append(1.0)
    a = np.asarray(rows, dtype=float)
    rank = np.linalg.matrix_rank(a)
    if rank < a.shape[1]:
        raise ConfigError(f"energy calibration: {len(pairs)} measurement(s) of rank {rank} cannot fit "
                          f"{a.shape[1]} scale factors; measure models that differ in their compute/data-movement "
                          "split (e.g. float and int8, base and pruned), or pass split=False")
    coef, residual = nnls(a, np.asarray(target))
    if not np.any(coef > 0):
        raise ConfigError("energy calibration: the fit gives no positive scale factor")
    if split:
        compute, data = (float(c) for c in coef)
        how = f"compute x{compute:.4g}, data movement x{data:.4g}"
    else:
        compute = data = float(coef[0])
        how = f"x{compute:.4g}"
    return base.scaled(compute, data, source=f"{base.source}, calibrated ({how}) on {len(pairs)} measurement(s), "
                                             f"relative residual {float(residual):.3g}")


# -- measured counters ---------------------------------------------------------------------------

#: Where Linux exposes Intel RAPL (also on recent AMD CPUs); a module attribute so tests can point it elsewhere.
POWERCAP = Path("/sys/class/powercap")


@dataclass(frozen=True)
class Counter:
    """A measured energy counter: whether this machine has it, and what it measures or why not."""

    name: str
    available: bool
    detail: str

    def __str__(self) -> str:
        return f"{self.name}: {'available' if self.available else 'unavailable'}: {self.detail}"


@dataclass
class _Domain:
    label: str
    read: Callable[[], float]  # joules since some origin
    wrap: float = math.inf  # joules at which the counter wraps


def _rapl() -> tuple[list[_Domain], str]:
    root = POWERCAP
    if not root.is_dir():
        return [], f"no {root}"
    tops = sorted(p for p in root.glob("intel-rapl:*") if p.name.count(":") == 1)
    if not tops:
        return [], f"no intel-rapl domains under {root}"

    def name_of(p: Path) -> str:
        try:
            return (p / "name").read_text().strip()
        except OSError:
            return p.name

    packages = [p for p in tops if name_of(p).startswith("package")]
    chosen = packages or tops  # psys (platform) includes the packages: never summed with them
    domains, problems = [], []
    for p in chosen:
        f = p / "energy_uj"
        try:
            int(f.read_text())
        except PermissionError:
            problems.append(f"{f} is not readable (root-only since Linux 5.10, the PLATYPUS fix)")
            continue
        except (OSError, ValueError) as exc:
            problems.append(f"cannot read {f}: {exc}")
            continue
        try:
            wrap = int((p / "max_energy_range_uj").read_text()) * 1e-6
        except (OSError, ValueError):
            wrap = math.inf
        domains.append(_Domain(f"rapl {name_of(p)}", (lambda f=f: int(f.read_text()) * 1e-6), wrap))
    if not domains:
        return [], "; ".join(problems)
    return domains, ", ".join(d.label for d in domains)


def _nvml() -> tuple[list[_Domain], str, Any]:
    """NVML energy domains, their description or the reason, and the module (to shut down)."""
    try:
        import pynvml
    except ImportError:
        return [], "pynvml is not importable (pip install nvidia-ml-py)", None
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # noqa: BLE001 - NVMLError_LibraryNotFound, DriverNotLoaded...
        return [], f"nvmlInit failed: {exc}", None
    domains, problems = [], []
    try:
        n = pynvml.nvmlDeviceGetCount()
        for i in range(n):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            try:
                pynvml.nvmlDeviceGetTotalEnergyConsumption(h)
            except Exception as exc:  # noqa: BLE001 - NVMLError_NotSupported before Volta
                problems.append(f"GPU {i}: total energy counter not supported ({exc})")
                continue
            domains.append(_Domain(f"nvml GPU {i}",
                                   (lambda h=h: pynvml.nvmlDeviceGetTotalEnergyConsumption(h) * 1e-3)))
    except Exception as exc:  # noqa: BLE001
        problems.append(f"NVML query failed: {exc}")
    if not domains:
        _nvml_shutdown(pynvml)
        return [], "; ".join(problems) or "NVML sees no NVIDIA GPU", None
    return domains, ", ".join(d.label for d in domains), pynvml


def _nvml_shutdown(pynvml: Any) -> None:
    if pynvml is not None:
        try:
            pynvml.nvmlShutdown()
        except Exception:  # noqa: BLE001
            pass


def _zeus_monitor() -> tuple[Any, str]:
    """A ZeusMonitor over every GPU and CPU it finds, or None and the reason."""
    try:
        from zeus.monitor import ZeusMonitor
    except ImportError:
        return None, "zeus is not installed (optional: pip install zeus)"
    except Exception as exc:  # noqa: BLE001 - a broken install
        return None, f"zeus cannot be imported: {type(exc).__name__}: {exc}"
    try:
        monitor = ZeusMonitor()
    except Exception as exc:  # noqa: BLE001 - no GPU/CPU backend, permissions
        return None, f"ZeusMonitor cannot start: {type(exc).__name__}: {exc}"
    gpus, cpus = list(getattr(monitor, "gpu_indices", []) or []), list(getattr(monitor, "cpu_indices", []) or [])
    if not gpus and not cpus:
        return None, "ZeusMonitor finds no GPU or CPU energy counter"
    return monitor, f"ZeusMonitor over GPUs {gpus or 'none'}, CPUs {cpus or 'none'}"


def counters() -> dict[str, Counter]:
    """The measured energy counters of this machine: ``rapl``, ``nvml`` and ``zeus``, each
    available (with what it measures) or not (with the reason)."""
    rapl, rapl_detail = _rapl()
    nvml, nvml_detail, handle = _nvml()
    _nvml_shutdown(handle)
    monitor, zeus_detail = _zeus_monitor()
    return {"rapl": Counter("rapl", bool(rapl), rapl_detail),
            "nvml": Counter("nvml", bool(nvml), nvml_detail),
            "zeus": Counter("zeus", monitor is not None, zeus_detail)}


def _sync() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


SOURCES = ("auto", "zeus", "rapl", "nvml")


def measure_energy(fn: Callable[[], Any], repeats: int = 10, *, warmup: int = 1,
                   source: str = "auto") -> tuple[float | None, str]:
    """Measured joules per call of ``fn``, or ``(None, why not)``; never 0.0 for "unknown".

    ``source``: ``"zeus"`` (ZeusMonitor), ``"rapl"`` (CPU packages), ``"nvml"`` (GPUs), or
    ``"auto"``: Zeus if it is installed and finds a counter, else RAPL and NVML together (their
    domains summed: CPU packages plus GPUs). ``fn`` runs ``warmup`` times untimed, then
    ``repeats`` times inside the window; CUDA work is synchronised at both ends. A counter that
    does not advance over the window (too short for its update interval) gives None, not 0.

    Returns:
        ``(joules per call, what measured it)`` or ``(None, the reason no counter could)``.
    """
    if not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 1:
        raise ConfigError(f"measure_energy: repeats must be a positive integer, got {repeats!r}")
    if not isinstance(warmup, int) or isinstance(warmup, bool) or warmup < 0:
        raise ConfigError(f"measure_energy: warmup must be an integer >= 0, got {warmup!r}")
    if source not in SOURCES:
        raise ConfigError(f"measure_energy: source must be one of {', '.join(SOURCES)}, got {source!r}")
    reasons = []
    if source in ("auto", "zeus"):
        monitor, detail = _zeus_monitor()
        if monitor is not None:
            return _measure_zeus(monitor, detail, fn, repeats, warmup)
        reasons.append(f"zeus: {detail}")
        if source == "zeus":
            return None, "; ".join(reasons)
    domains, handle = [], None
    if source in ("auto", "rapl"):
        found, detail = _rapl()
        domains += found
        if not found:
            reasons.append(f"rapl: {detail}")
    if source in ("auto", "nvml"):
        found, detail, handle = _nvml()
        domains += found
        if not found:
            reasons.append(f"nvml: {detail}")
    if not domains:
        return None, "no energy counter: " + "; ".join(reasons)
    try:
        for _ in range(warmup):
            fn()
        _sync()
        start = [d.read() for d in domains]
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        _sync()
        seconds = time.perf_counter() - t0
        end = [d.read() for d in domains]
    finally:
        _nvml_shutdown(handle)
    total = 0.0
    for d, a, b in zip(domains, start, end):
        delta = b - a
        if delta < 0 and math.isfinite(d.wrap):
            delta += d.wrap  # the counter wrapped once during the window
        total += max(delta, 0.0)
    labels = " + ".join(d.label for d in domains)
    if total <= 0:
        return None, (f"{labels}: the counter did not advance over {seconds:.3g} s of {repeats} call(s); "
                      "raise repeats so the window spans its update interval")
    return total / repeats, f"{labels}: {total:.4g} J over {repeats} call(s) in {seconds:.3g} s"


def _measure_zeus(monitor: Any, detail: str, fn: Callable[[], Any], repeats: int,
                  warmup: int) -> tuple[float | None, str]:
    for _ in range(warmup):
        fn()
    key = f"rsc.energy.{id(fn)}"
    monitor.begin_window(key)
    for _ in range(repeats):
        fn()
    m = monitor.end_window(key)
    # Measurement.total_energy is the GPUs' alone (zeus 0.16); the CPU packages are added, as with raw RAPL
    parts = [*(getattr(m, "gpu_energy", None) or {}).values(), *(getattr(m, "cpu_energy", None) or {}).values()]
    total = float(sum(parts)) if parts else math.nan
    if not math.isfinite(total) or total <= 0:
        return None, f"zeus: {detail} measured no energy ({total!r} J) over {repeats} call(s)"
    return total / repeats, f"zeus: {detail}: {total:.4g} J over {repeats} call(s) in {float(m.time):.3g} s"


# -- the registered cost -------------------------------------------------------------------------


def _energy_mj(model: nn.Module, settings: CostSettings) -> float:
    return estimate_energy(model, settings.image_size, settings.in_channels) * 1e3


if __name__ != "__main__":  # under python -m rsc.energy, rsc.cost has imported (and registered) rsc.energy itself
    register_cost("energy_mj", unit="mJ", budget="energy", units=ENERGY_UNITS)(_energy_mj)


# -- command line --------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from rsc.cli import parser, positive_int

    p = parser("python -m rsc.energy", __doc__)
    p.add_argument("--model", default="resnet18", help="torchvision model name")
    p.add_argument("--image-size", type=positive_int, help="input side in pixels (default: 64, or the file's)")
    p.add_argument("--num-classes", type=positive_int, default=21)
    p.add_argument("--in-channels", type=positive_int, default=3)
    p.add_argument("--top", type=positive_int, help="show only the N most expensive layers")
    p.add_argument("--sparse", action="store_true", help="zero weights cost nothing (skip_zero_weights)")
    return p


def _table(layers: Sequence[LayerEnergy], top: int | None) -> str:
    total = sum(layer.total_pj for layer in layers) or 1.0
    shown = sorted(layers, key=lambda r: -r.total_pj)[:top] if top else list(layers)
    rows = [["layer", "kind", "bits", "MACs", "compute uJ", "data uJ", "of it DRAM uJ", "share"]]
    for r in shown:
        rows.append([r.name, r.kind, str(r.bits), f"{r.macs:,}", f"{r.compute_pj * 1e-6:.3f}",
                     f"{r.data_pj * 1e-6:.3f}", f"{r.dram_pj * 1e-6:.3f}" + (" *" if r.spills else ""),
                     f"{100 * r.total_pj / total:.1f}%"])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from rsc.cli import run_cli

    args = build_parser().parse_args(argv)

    def body() -> int:
        em = EnergyModel(skip_zero_weights=args.sparse)
        from rsc.models import create_model

        image_size = args.image_size or 64
        model = create_model(args.model, args.num_classes, image_size=image_size)
        what = f"{args.model} ({args.num_classes} classes)"
        layers = energy_breakdown(model, image_size, args.in_channels, em)
        s = summarize(layers)
        print(f"{what} at {image_size} px, batch 1; {em.source}; buffer {em.buffer_bytes / 2**10:g} KiB "
              f"({float(em.buffer_pj):.3g} pJ/word), array reuse {em.array_reuse:g}")
        print(_table(layers, args.top))
        if any(r.spills for r in layers):
            print("* activations spill to DRAM (input + output exceed the buffer)")
        tot = s["total"] or 1.0
        print(f"total {s['total'] * 1e-9:.4g} mJ per image ({s['macs'] / 1e6:.1f} M MACs): "
              f"compute {s['compute'] * 1e-9:.4g} mJ ({100 * s['compute'] / tot:.0f}%), "
              f"data movement {s['data'] * 1e-9:.4g} mJ ({100 * s['data'] / tot:.0f}%: "
              f"DRAM {s['dram'] * 1e-9:.4g}, buffer {s['buffer'] * 1e-9:.4g}, RF {s['rf'] * 1e-9:.4g})")
        print("measured energy counters:")
        for c in counters().values():
            print(f"  {c}")
        return 0

    return run_cli(body)


if __name__ == "__main__":
    from rsc import energy as _registered  # the module rsc.cost registered, not this __main__ copy

    sys.exit(_registered.main())
