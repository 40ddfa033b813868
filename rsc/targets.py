"""Where and how latency is measured: a :class:`Target` (device, runtime, layout, batch, Ray node).

A target is one string on the command line (``--target``)::

    SPEC    = DEVICE [ (":" | ",") OPTION { "," OPTION } ]
    DEVICE  = "cpu" | "cuda" | "cuda:" INDEX | "ray:" RESOURCE | "lut:" FILE (no options)
    OPTION  = KEY "=" VALUE
    KEY     = threads (int >= 1, default 1)        torch / onnxruntime intra-op threads
            | runtime (eager | torchscript | onnxruntime, default eager)
            | provider (an onnxruntime execution provider; runtime=onnxruntime only;
                        default CPUExecutionProvider, CUDAExecutionProvider on cuda)
            | format (channels_last | contiguous, default channels_last; not for onnxruntime,
                      whose graph takes NCHW input and picks its own layouts)
            | batch (int >= 1, default 1)               images per timed forward
            | device (cpu | cuda | cuda:N; ray: targets only, default cpu)  the device on that node

``cpu`` (the default) is what the search always measured: this machine's CPU, one thread,
channels-last, eager PyTorch, batch 1 (:class:`rsc.cost.CostSettings` and
:func:`rsc.cost.compare_latency`, unchanged). Examples: ``cpu:threads=4,runtime=onnxruntime``,
``cuda:0,runtime=torchscript,batch=16``, ``ray:target-jetson,runtime=onnxruntime``.

Runtimes: ``eager`` times the module itself; ``torchscript`` times ``torch.jit.freeze(torch.jit.trace(...))``;
``onnxruntime`` exports each model with ``torch.onnx.export`` (opset 18, the target's batch) and
times ``InferenceSession.run`` with ``intra_op_num_threads = threads``. Every runtime measures the
models interleaved (A, B, A, B...: load from other processes hits all alike), after warm-up, and
reports the median. A model a runtime cannot take (int8 ``torch.ao`` models: no ONNX export, no
CUDA kernels) raises :class:`TargetUnsupported` naming the model and the target.

``lut:FILE`` predicts instead of measuring: latency is read from a per-kernel latency table
(:mod:`rsc.latency_table`, built by ``python -m search.profile``) measured on the target the
table names, which must be this one (:meth:`Target.check` refuses a table measured elsewhere,
naming what differs). Kernels the table lacks are measured on the fly on that target.
:attr:`Target.measured` is the target the table was measured on: where final models are timed.

``ray:RESOURCE`` measures on the Ray node that offers the custom resource ``RESOURCE`` (an edge
device joined with ``ray start --address HEAD --num-cpus 0 --resources '{"RESOURCE": 1}'``): the
models are put into Ray's object store and a task with ``resources={RESOURCE: 1}, num_cpus=0``
runs :func:`compare_latency_on` there with the target's local part (``device``, ``runtime``...).
One unit of the resource means one measurement at a time on that node. The caller must be
connected to Ray (``ray.init``) already; this module imports torch, onnxruntime and ray lazily.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import platform
import re
import socket
import statistics
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rsc.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

__all__ = ["Target", "TargetUnsupported", "parse_target", "compare_latency_on", "RUNTIMES", "GRAMMAR",
           "DEFAULT_SPEC"]

RUNTIMES = ("eager", "torchscript", "onnxruntime")
MEMORY_FORMATS = ("channels_last", "contiguous")
KEYS = ("threads", "runtime", "provider", "format", "batch", "device")
DEFAULT_SPEC = "cpu"
GRAMMAR = ("DEVICE[:N][,KEY=VALUE...] with DEVICE cpu, cuda, cuda:N or ray:RESOURCE and keys threads, "
           "runtime (eager, torchscript, onnxruntime), provider, format (channels_last, contiguous), batch, "
           "device (ray: only); or lut:FILE, a latency table from python -m search.profile")
#: The lowest opset torch 2.14's ONNX exporter implements: asked for 17 it exports 18 and converts down,
#: which fails on ResNet-18 (onnx's version converter: "No initializer or constant input to node").
ONNX_OPSET = 18
#: onnxruntime providers that run on a CUDA device (the others run on the host).
GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider", "ROCMExecutionProvider",
                 "MIGraphXExecutionProvider")
#: seconds to wait for a ray: target's node to answer a check (its worker may have to start first).
REMOTE_CHECK_TIMEOUT = 120.0
_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")
_RESOURCE = re.compile(r"^[A-Za-z0-9_.\-]+$")
_RAY_BUILTIN = ("CPU", "GPU", "memory", "object_store_memory")


class TargetUnsupported(ConfigError):
    """A model the target's runtime or device cannot run (int8 on ONNX or CUDA, a failed trace...)."""


@dataclass(frozen=True)
class Target:
    """Where and how a model is timed (see the module docstring).

    Attributes:
        device: ``cpu``, ``cuda`` or ``cuda:N`` (on the remote node for a ``ray:`` target).
        threads: intra-op threads of the timed runs.
        runtime: ``eager``, ``torchscript`` or ``onnxruntime``.
        provider: the onnxruntime execution provider (None for the torch runtimes).
        memory_format: ``channels_last`` or ``contiguous`` (always ``contiguous`` on onnxruntime).
        batch: images per timed forward.
        remote: the Ray custom resource of the node that measures, or None (this process).
        table: a latency table file (``lut:FILE``): latency is predicted from it; the other fields are
            those of the target it was measured on.
    """

    device: str = "cpu"
    threads: int = 1
    runtime: str = "eager"
    provider: str | None = None
    memory_format: str = "channels_last"
    batch: int = 1
    remote: str | None = None
    table: str | None = None

    def __post_init__(self) -> None:
        if not _DEVICE.match(str(self.device)):
            raise ConfigError(f"target device {self.device!r}: allowed cpu, cuda, cuda:N")
        if self.runtime not in RUNTIMES:
            raise ConfigError(f"target runtime {self.runtime!r}: allowed {', '.join(RUNTIMES)}")
        if self.memory_format not in MEMORY_FORMATS:
            raise ConfigError(f"target format {self.memory_format!r}: allowed {', '.join(MEMORY_FORMATS)}")
        for name in ("threads", "batch"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"target {name} must be an integer >= 1, got {value!r}")
        if self.remote is not None and not _RESOURCE.match(str(self.remote)):
            raise ConfigError(f"target ray resource {self.remote!r}: letters, digits, '-', '_' and '.' only")
        if self.runtime == "onnxruntime":
            if self.provider is None:
                default = "CUDAExecutionProvider" if self.device.startswith("cuda") else "CPUExecutionProvider"
                object.__setattr__(self, "provider", default)
            object.__setattr__(self, "memory_format", "contiguous")  # the exported graph takes NCHW
            if not str(self.provider).endswith("ExecutionProvider"):
                raise ConfigError(f"target provider {self.provider!r}: an onnxruntime execution provider name "
                                  "such as CPUExecutionProvider or CUDAExecutionProvider")
            if (self.provider in GPU_PROVIDERS) != self.device.startswith("cuda"):
                raise ConfigError(f"target provider {self.provider} runs on "
                                  f"{'cuda' if self.provider in GPU_PROVIDERS else 'the cpu'}, not on {self.device}")
        elif self.provider is not None:
            raise ConfigError(f"target provider {self.provider!r}: only runtime=onnxruntime takes a provider")

    # -- names -------------------------------------------------------------------------------

    @property
    def spec(self) -> str:
        """The canonical one-string form (``parse_target(t.spec) == t``); ``cpu`` for the default."""
        if self.table is not None:
            return f"lut:{self.table}"
        opts = []
        if self.remote is not None and self.device != "cpu":
            opts.append(f"device={self.device}")
        if self.threads != 1:
            opts.append(f"threads={self.threads}")
        if self.runtime != "eager":
            opts.append(f"runtime={self.runtime}")
        if self.runtime == "onnxruntime" and self.provider != Target(device=self.device, runtime="onnxruntime").provider:
            opts.append(f"provider={self.provider}")
        if self.runtime != "onnxruntime" and self.memory_format != "channels_last":
            opts.append(f"format={self.memory_format}")
        if self.batch != 1:
            opts.append(f"batch={self.batch}")
        head = f"ray:{self.remote}" if self.remote is not None else self.device
        if not opts:
            return head
        return head + ("," if ":" in head else ":") + ",".join(opts)

    def __str__(self) -> str:
        return self.spec

    @property
    def local(self) -> Target:
        """The part the measuring node applies (this target without ``remote``)."""
        return replace(self, remote=None, table=None)

    @property
    def measured(self) -> Target:
        """Where latency is timed: a ``lut:`` target's table was measured there; any other is itself."""
        return replace(self, table=None)

    def load_table(self) -> Any:
        """The :class:`rsc.latency_table.LatencyTable` of a ``lut:`` target (ConfigError if unreadable)."""
        from rsc.latency_table import load_table

        if self.table is None:
            raise ConfigError(f"target {self.spec} has no latency table")
        return load_table(self.table)

    @property
    def is_default(self) -> bool:
        return self == Target()

    @property
    def runs_int8(self) -> bool:
        """Whether int8 ``torch.ao`` models run here: CPU kernels only, and no ONNX export."""
        return self.device == "cpu" and self.runtime != "onnxruntime"

    def describe(self) -> str:
        """A human one-liner, e.g. ``this machine's CPU (Intel Xeon ...), 1 thread, eager PyTorch, ...``."""
        runtime = {"eager": "eager PyTorch", "torchscript": "TorchScript (trace + freeze)",
                   "onnxruntime": f"onnxruntime ({self.provider})"}[self.runtime]
        if self.remote is not None:
            where = f"the Ray node offering {self.remote!r}, {self.device}"
        elif self.device == "cpu":
            where = f"this machine's CPU ({_cpu_name()})"
        else:
            where = f"this machine's {self.device}"
        layout = "NCHW input" if self.runtime == "onnxruntime" else self.memory_format.replace("_", "-")
        if self.table is not None:
            return f"latency table {self.table} (predicted; measured on {self.measured.describe()})"
        return (f"{where}, {self.threads} thread{'s' if self.threads != 1 else ''}, {runtime}, {layout}, "
                f"batch {self.batch}")

    def cost_settings(self, image_size: int, in_channels: int = 3) -> Any:
        """The :class:`rsc.cost.CostSettings` of the torch runtimes (the default's are today's)."""
        from rsc.cost import CostSettings

        return CostSettings(image_size=image_size, in_channels=in_channels, device=self.device, threads=self.threads,
                            memory_format=self.memory_format)

    # -- where it runs -----------------------------------------------------------------------

    def check(self) -> Target:
        """Make sure the target exists where it is measured; returns itself.

        Raises:
            ConfigError: no CUDA or no such CUDA device, onnxruntime missing or without the provider,
                more threads than CPUs, no Ray connection, or a Ray cluster without the resource
                (the message says what this machine, or the cluster, has); a ``lut:`` table measured on
                another target (:class:`rsc.latency_table.TableMismatch`, naming what differs).
        """
        if self.table is not None:
            from rsc.latency_table import check_table

            table = self.load_table()
            self.measured.check()
            check_table(table, fingerprint=self.measured.fingerprint())
            return self
        if self.remote is not None:
            _remote_call(self, "check")
            return self
        import torch

        cores = _cpu_count()
        if self.threads > cores:
            raise ConfigError(f"target {self.spec}: threads={self.threads}, but {_here()}")
        if self.device.startswith("cuda"):
            if not torch.cuda.is_available():
                raise ConfigError(f"target {self.spec}: CUDA is not available here; {_here()}")
            index = int(self.device.split(":")[1]) if ":" in self.device else 0
            if index >= torch.cuda.device_count():
                raise ConfigError(f"target {self.spec}: no CUDA device {index}; {_here()}")
        if self.runtime == "onnxruntime":
            ort = _onnxruntime(self)
            available = ort.get_available_providers()
            if self.provider not in available:
                raise ConfigError(f"target {self.spec}: onnxruntime {ort.__version__} here has no {self.provider}; "
                                  f"available: {', '.join(available)}")
        return self

    def fingerprint(self) -> dict[str, Any]:
        """What the numbers were measured on: device name, runtime and library versions, settings.

        For a ``ray:`` target the measuring node answers (its host, CPU or GPU, versions); a ``lut:``
        target gives its table's, with the table's path.
        """
        if self.table is not None:
            table = self.load_table()
            return {**table.fingerprint, "spec": self.spec, "table": self.table, "measured_on": table.target}
        if self.remote is not None:
            return {**_remote_call(self, "fingerprint"), "spec": self.spec, "remote": self.remote}
        import torch

        if self.device.startswith("cuda") and torch.cuda.is_available():
            name = torch.cuda.get_device_name(torch.device(self.device))
        else:
            name = _cpu_name()
        out: dict[str, Any] = {"spec": self.spec, "device": self.device, "device_name": name,
                               "host": socket.gethostname(), "machine": platform.machine(),
                               "runtime": self.runtime, "torch": torch.__version__, "threads": self.threads,
                               "memory_format": self.memory_format, "batch": self.batch}
        if self.runtime == "onnxruntime":
            try:
                import onnxruntime as ort

                out.update(onnxruntime=ort.__version__, provider=self.provider, opset=ONNX_OPSET)
            except ImportError:
                out.update(onnxruntime=None, provider=self.provider)
        return out


def parse_target(spec: str | Target | None) -> Target:
    """Parse a ``--target`` string (module docstring); a :class:`Target` passes through, None is ``cpu``.

    Raises:
        ConfigError: one line naming the bad part and what is allowed.
    """
    if isinstance(spec, Target):
        return spec
    text = DEFAULT_SPEC if spec is None else str(spec).strip()

    def bad(why: str) -> ConfigError:
        return ConfigError(f"target {text!r}: {why} (grammar: {GRAMMAR})")

    if not text:
        raise bad("empty")
    if text[:4].lower() == "lut:":  # the rest is a path (commas and colons included)
        from rsc.latency_table import load_table

        path = text[4:].strip()
        if not path:
            raise bad("lut: takes a latency table file, e.g. lut:lut.json (build one with python -m search.profile)")
        try:
            inner = parse_target(load_table(path).target)
        except ConfigError as exc:
            raise ConfigError(f"target {text!r}: {exc}") from None
        return replace(inner, table=path)
    first, *rest = [p.strip() for p in text.split(",")]
    head, _, tail = first.partition(":")
    head = head.strip().lower()
    options = list(rest)
    arg = None
    if tail:
        if "=" in tail:  # cpu:threads=4 - the first option after ':'
            options.insert(0, tail.strip())
        else:
            arg = tail.strip()
    kw: dict[str, Any] = {}
    if head == "cpu":
        if arg is not None:
            raise bad(f"cpu takes no index, got 'cpu:{arg}'")
        kw["device"] = "cpu"
    elif head == "cuda":
        if arg is not None and not arg.isdigit():
            raise bad(f"cuda index must be a number, got 'cuda:{arg}'")
        kw["device"] = "cuda" if arg is None else f"cuda:{int(arg)}"
    elif head == "ray":
        if not arg or not _RESOURCE.match(arg):
            raise bad("ray: needs the custom resource of the measuring node, e.g. ray:target-jetson")
        kw["remote"] = arg
    else:
        raise bad(f"unknown device {head!r}; allowed: cpu, cuda, cuda:N, ray:RESOURCE, lut:FILE")
    seen: set[str] = set()
    for option in options:
        key, eq, value = (s.strip() for s in option.partition("="))
        key = key.lower()
        if not eq or not value:
            raise bad(f"option {option!r} is not KEY=VALUE")
        if key not in KEYS:
            raise bad(f"unknown key {key!r}; allowed keys: {', '.join(KEYS)}")
        if key in seen:
            raise bad(f"key {key!r} given twice")
        seen.add(key)
        if key in ("threads", "batch"):
            if not value.isdigit() or int(value) < 1:
                raise bad(f"{key} must be an integer >= 1, got {value!r}")
            kw[key] = int(value)
        elif key == "runtime":
            if value.lower() not in RUNTIMES:
                raise bad(f"unknown runtime {value!r}; allowed: {', '.join(RUNTIMES)}")
            kw["runtime"] = value.lower()
        elif key == "format":
            if value.lower() not in MEMORY_FORMATS:
                raise bad(f"unknown format {value!r}; allowed: {', '.join(MEMORY_FORMATS)}")
            kw["memory_format"] = value.lower()
        elif key == "provider":
            kw["provider"] = value
        else:  # device: where a ray: target's node measures
            if head != "ray":
                raise bad("device= is for ray: targets (give the device first: cpu, cuda, cuda:N)")
            if not _DEVICE.match(value.lower()):
                raise bad(f"unknown device {value!r}; allowed: cpu, cuda, cuda:N")
            kw["device"] = value.lower()
    if "provider" in kw and kw.get("runtime") != "onnxruntime":
        raise bad("provider= needs runtime=onnxruntime")
    if "memory_format" in kw and kw.get("runtime") == "onnxruntime":
        raise bad("format= is for the torch runtimes; onnxruntime takes NCHW input and picks its own layouts")
    try:
        return Target(**kw)
    except ConfigError as exc:
        raise bad(str(exc).removeprefix("target ")) from None


# -- measuring -----------------------------------------------------------------------------------


def compare_latency_on(target: Target | str, models: Mapping[str, nn.Module], image_size: int,
                       in_channels: int = 3, *, shapes: Mapping[str, Sequence[int]] | None = None,
                       repeats: int | None = None) -> dict[str, float]:
    """Median latency (ms per forward of ``target.batch`` images) of each model on ``target``.

    The models run interleaved, after warm-up; they are not changed. ``eager`` is
    :func:`rsc.cost.compare_latency` with :meth:`Target.cost_settings` (the default target is
    exactly what the search measured before targets existed); ``torchscript`` traces and freezes
    each model, then the same; ``onnxruntime`` exports each model to a temporary file and times
    its inference session. ``shapes`` gives a model its own input shape (without the batch; the
    layers of a latency table), ``repeats`` overrides the timed runs per model.

    Raises:
        TargetUnsupported: a model the runtime or device cannot take.
        ConfigError: a ``ray:`` target without Ray, or whose resource the cluster lacks.
    """
    target = parse_target(target)
    if target.table is not None:  # predicted from the table (its misses measured on target.measured)
        table = target.load_table()
        return {name: table.predict(model) for name, model in models.items()}
    if target.remote is not None:
        return _remote_call(target, "latency", models=models, image_size=image_size, in_channels=in_channels,
                            shapes=shapes, repeats=repeats)
    from rsc.cost import compare_latency

    settings = target.cost_settings(image_size, in_channels)
    if repeats is not None:
        settings = replace(settings, repeats=int(repeats))
    shapes = {k: tuple(int(d) for d in v) for k, v in (shapes or {}).items()}
    if target.runtime == "onnxruntime":
        return _onnxruntime_latency(target, models, settings, shapes)
    models = {name: _on_device(target, name, m) for name, m in models.items()}
    if target.runtime == "torchscript":
        models = {name: _traced(target, name, m, settings, shapes.get(name)) for name, m in models.items()}
    return compare_latency(models, settings=settings, batch_size=target.batch, **({"shapes": shapes} if shapes else {}))


def _is_int8(model: nn.Module) -> bool:
    return any(".quantized" in type(m).__module__ for m in model.modules())


def _on_device(target: Target, name: str, model: nn.Module) -> nn.Module:
    """``model`` itself on the CPU; a copy on CUDA (int8 models refused: their kernels are CPU-only)."""
    if target.device == "cpu":
        return model
    if _is_int8(model):
        raise TargetUnsupported(f"model {name!r} is int8 (torch.ao kernels run on the CPU only): target "
                                f"{target.spec} cannot time it")
    return copy.deepcopy(model).to(target.device)


def _traced(target: Target, name: str, model: nn.Module, settings: Any, shape: Sequence[int] | None = None) -> Any:
    """``torch.jit.freeze(torch.jit.trace(model))`` in the target's memory format and batch."""
    import torch

    from rsc.cost import _in_format

    model = _in_format(model, target.memory_format)
    x = settings.example_input(target.batch, shape)
    modes = {m: m.training for m in model.modules()}
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            model.eval()
            return _Frozen(torch.jit.freeze(torch.jit.trace(model, x, check_trace=False)))
    except Exception as exc:  # noqa: BLE001 - tracing fails in many ways
        raise TargetUnsupported(f"model {name!r} does not run on target {target.spec}: torch.jit.trace/freeze "
                                f"failed: {_first_line(exc)}") from None
    finally:
        for m, mode in modes.items():
            m.training = mode


class _Frozen:
    """A frozen TorchScript module as :func:`rsc.cost.compare_latency` times modules: callable, with
    ``modules()``/``parameters()``/``to()``/``eval()`` (a frozen module has no ``training`` flag and no parameters
    left), and shared rather than copied (it is never changed)."""

    def __init__(self, scripted: Any) -> None:
        self.scripted = scripted
        self.training = False

    def __call__(self, x: Any) -> Any:
        return self.scripted(x)

    def modules(self) -> Any:
        return iter((self,))

    def parameters(self) -> Any:
        return iter(())

    def to(self, *args: Any, **kwargs: Any) -> _Frozen:
        return self

    def eval(self) -> _Frozen:
        return self

    def __deepcopy__(self, memo: dict) -> _Frozen:
        return self


def _onnxruntime(target: Target) -> Any:
    try:
        import onnx  # noqa: F401 - the exporter's dependencies
        import onnxruntime as ort
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise ConfigError(f"target {target.spec}: runtime onnxruntime needs the {exc.name} package "
                          "(pip install 'rscompress[export]')") from None
    return ort


def _export_onnx(target: Target, name: str, model: nn.Module, x: Any, path: Path) -> None:
    import torch

    if _is_int8(model):
        raise TargetUnsupported(f"model {name!r} is int8: torch.ao's packed weights do not export to ONNX, so "
                                f"target {target.spec} cannot time it (use runtime=eager or torchscript on the cpu)")
    if any(p.device.type != "cpu" for p in model.parameters()):
        model = copy.deepcopy(model).cpu()
    from rsc.cost import eval_mode

    try:
        with (warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad(),
              eval_mode(model)):
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (x,), str(path), opset_version=ONNX_OPSET, input_names=["image"],
                              output_names=["logits"], external_data=False, verbose=False)
    except Exception as exc:  # noqa: BLE001 - the exporter fails in many ways
        raise TargetUnsupported(f"model {name!r} does not export to ONNX for target {target.spec}: "
                                f"{_first_line(exc)}") from None


def _onnxruntime_latency(target: Target, models: Mapping[str, nn.Module], settings: Any,
                         shapes: Mapping[str, Sequence[int]] | None = None) -> dict[str, float]:
    ort = _onnxruntime(target)
    feeds = {}
    sessions = {}
    with tempfile.TemporaryDirectory(prefix="rsc-target-") as tmp:
        for i, (name, model) in enumerate(models.items()):
            path = Path(tmp) / f"model-{i}.onnx"
            x = settings.example_input(target.batch, (shapes or {}).get(name)).cpu().contiguous()
            feeds[name] = x.numpy()
            _export_onnx(target, name, model, x, path)
            options = ort.SessionOptions()
            options.intra_op_num_threads = target.threads
            options.inter_op_num_threads = 1
            options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            options.log_severity_level = 3
            session = ort.InferenceSession(str(path), sess_options=options, providers=[target.provider])
            sessions[name] = (session, session.get_inputs()[0].name)
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(settings.warmup):
        for name, (session, inp) in sessions.items():
            session.run(None, {inp: feeds[name]})
    for _ in range(settings.repeats):
        for name, (session, inp) in sessions.items():
            t0 = time.perf_counter()
            session.run(None, {inp: feeds[name]})  # outputs come back as host arrays: synchronised
            times[name].append((time.perf_counter() - t0) * 1000.0)
    return {name: statistics.median(v) for name, v in times.items()}


# -- this machine --------------------------------------------------------------------------------


def _first_line(exc: BaseException) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:300]}" if text else type(exc).__name__


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (``model name``, or an ARM board's ``Model``/``Hardware``)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        text = ""
    for key in ("model name", "Model", "Hardware", "cpu model"):
        m = re.search(rf"^{key}\s*:\s*(.+)$", text, re.MULTILINE)
        if m and m.group(1).strip():
            return m.group(1).strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def _here() -> str:
    """What this machine has, for error messages."""
    import torch

    parts = [f"cpu ({_cpu_count()} cores)"]
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    parts.append(", ".join(f"cuda:{i}" for i in range(n)) if n else "no CUDA device")
    with contextlib.suppress(ImportError):
        import onnxruntime as ort

        parts.append(f"onnxruntime providers {', '.join(ort.get_available_providers())}")
    return "this machine has " + "; ".join(parts)


# -- ray: targets --------------------------------------------------------------------------------


def _remote_task(action: str, spec: str, refs: Mapping[str, Any] | None = None, image_size: int = 0,
                 in_channels: int = 3, shapes: Mapping[str, Any] | None = None, repeats: int | None = None) -> Any:
    """Runs on the node that offers the resource: check, fingerprint or measure the local part."""
    target = parse_target(spec)
    if action == "check":
        target.check()
        return None
    if action == "fingerprint":
        return target.fingerprint()
    import ray

    names = list(refs or {})
    models = dict(zip(names, ray.get([refs[n] for n in names])))
    return compare_latency_on(target, models, image_size, in_channels, shapes=shapes, repeats=repeats)


def _custom_resources(resources: Mapping[str, float]) -> list[str]:
    return sorted(k for k in resources if k not in _RAY_BUILTIN and not k.startswith(("node:", "accelerator_type:")))


def _remote_call(target: Target, action: str, *, models: Mapping[str, nn.Module] | None = None,
                 image_size: int = 0, in_channels: int = 3, shapes: Mapping[str, Any] | None = None,
                 repeats: int | None = None) -> Any:
    """Run ``action`` of ``target.local`` as a Ray task on the node offering ``target.remote``."""
    try:
        import ray
    except ImportError:
        raise ConfigError(f"target {target.spec} needs Ray: pip install 'ray[default]'") from None
    if not ray.is_initialized():
        raise ConfigError(f"target {target.spec} needs a Ray cluster with a node that offers {target.remote!r}: "
                          "join it with --ray-address (or ray.init)")
    offered = ray.cluster_resources()
    if not offered.get(target.remote):
        custom = _custom_resources(offered)
        raise ConfigError(f"target {target.spec}: the Ray cluster offers no resource {target.remote!r}; its custom "
                          f"resources: {', '.join(custom) if custom else 'none'} (start the measuring node with "
                          f"ray start --resources '{{\"{target.remote}\": 1}}')")
    refs = None
    if models is not None:
        refs = {}
        for name, model in models.items():
            if any(p.device.type != "cpu" for p in model.parameters()):
                model = copy.deepcopy(model).cpu()
            try:
                refs[name] = ray.put(model)
            except Exception as exc:  # noqa: BLE001 - what cannot be pickled cannot be sent
                raise TargetUnsupported(f"model {name!r} cannot be sent to target {target.spec}: "
                                        f"{_first_line(exc)}") from None
    task = ray.remote(num_cpus=0, resources={target.remote: 1}, max_retries=0)(_remote_task)
    ref = task.remote(action, target.local.spec, refs, image_size, in_channels, shapes, repeats)
    try:
        return ray.get(ref, timeout=REMOTE_CHECK_TIMEOUT if models is None else None)
    except ray.exceptions.GetTimeoutError:
        ray.cancel(ref, force=True)
        raise ConfigError(f"target {target.spec}: the node offering {target.remote!r} did not answer within "
                          f"{REMOTE_CHECK_TIMEOUT:g} s") from None
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, ConfigError):
            raise type(cause)(f"on the Ray node offering {target.remote!r}: {cause}") from None
        raise
