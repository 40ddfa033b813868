"""Energy per image: an analytical model counted from the structure (the ``energy_mj`` cost).

    python -m costs.energy_report --model resnet18 --image-size 64 --num-classes 21   # per layer

**The model** (in the spirit of energy-aware pruning, Yang, Chen & Sze, CVPR 2017): the energy of
one image (batch 1) is the sum over the Conv and Linear layers - the same innermost layers
:func:`costs.counting.count_macs` counts, float or int8, grouped, depthwise, 1x1, the Tucker/SVD chains
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

Measured counters (RAPL, NVML, Zeus) are in :mod:`costs.energy_counters`.

The registered cost ``energy_mj`` (millijoules per image, analytic) makes ``energy`` a budget
(``energy<5mJ``, ``energy<50%``) and an objective (``--objectives accuracy,energy``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any

from costs.counting import hooked_forward
from costs.registry import register_cost
from rsc.errors import ConfigError

if TYPE_CHECKING:  # torch loads on first use, so that CLIs answer --help at once
    from torch import nn

    from costs.registry import CostSettings

__all__ = ["ENERGY_UNITS", "EnergyModel", "LayerEnergy", "sram_pj_per_word", "energy_breakdown", "estimate_energy",
           "summarize", "calibrate"]

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


# -- the registered cost -------------------------------------------------------------------------


def _energy_mj(model: nn.Module, settings: CostSettings) -> float:
    return estimate_energy(model, settings.image_size, settings.in_channels) * 1e3


register_cost("energy_mj", unit="mJ", budget="energy", units=ENERGY_UNITS)(_energy_mj)
