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
channels-last, eager PyTorch, batch 1 (:class:`costs.registry.CostSettings` and
:func:`costs.timing.compare_latency`). Examples: ``cpu:threads=4,runtime=onnxruntime``,
``cuda:0,runtime=torchscript,batch=16``, ``ray:target-jetson,runtime=onnxruntime``.

Runtimes: ``eager`` times the module itself; ``torchscript`` times ``torch.jit.freeze(torch.jit.trace(...))``;
``onnxruntime`` exports each model with ``torch.onnx.export`` (opset 18, the target's batch) and
times ``InferenceSession.run`` with ``intra_op_num_threads = threads``. Every runtime measures the
models interleaved (A, B, A, B...: load from other processes hits all alike), after warm-up, and
reports the median. A model a runtime cannot take (int8 ``torch.ao`` models: no ONNX export, no
CUDA kernels) raises :class:`costs.errors.TargetUnsupported` naming the model and the target.

``lut:FILE`` predicts instead of measuring, from a latency table measured on a target of this
grammar: :mod:`costs.targets` parses it into a :class:`costs.targets.TableTarget` (a Target whose
``table`` is set); :attr:`Target.measured` is where such a table was measured, and where final models
are timed. This module knows no table: it asks a target for one (:meth:`Target.load_table`).

``ray:RESOURCE`` measures on the Ray node that offers the custom resource ``RESOURCE`` (an edge
device joined with ``ray start --address HEAD --num-cpus 0 --resources '{"RESOURCE": 1}'``): the
models are put into Ray's object store and a task with ``resources={RESOURCE: 1}, num_cpus=0``
runs :func:`compare_latency_on` there with the target's local part (``device``, ``runtime``...,
:mod:`costs.remote`). The caller must be connected to Ray (``ray.init``) already; torch, onnxruntime
and ray load lazily. The runtimes themselves are in :mod:`costs.runtimes`.
"""

from __future__ import annotations

import platform
import re
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any

from costs.errors import TargetUnsupported
from costs.machine import cpu_count, cpu_name, machine_summary
from costs.registry import MEMORY_FORMATS
from costs.remote import remote_call
from costs.runtimes import ONNX_OPSET, on_device, onnxruntime_latency, require_onnxruntime, traced
from costs.timing import compare_latency
from rsc.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

__all__ = ["Target", "TargetUnsupported", "parse_hardware", "compare_latency_on", "remote_task", "RUNTIMES",
           "GRAMMAR", "DEFAULT_SPEC", "KEYS", "GPU_PROVIDERS"]

RUNTIMES = ("eager", "torchscript", "onnxruntime")
KEYS = ("threads", "runtime", "provider", "format", "batch", "device")
DEFAULT_SPEC = "cpu"
GRAMMAR = ("DEVICE[:N][,KEY=VALUE...] with DEVICE cpu, cuda, cuda:N or ray:RESOURCE and keys threads, "
           "runtime (eager, torchscript, onnxruntime), provider, format (channels_last, contiguous), batch, "
           "device (ray: only); or lut:FILE, a latency table from python -m search.profile")
#: onnxruntime providers that run on a CUDA device (the others run on the host).
GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider", "ROCMExecutionProvider",
                 "MIGraphXExecutionProvider")
_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")
_RESOURCE = re.compile(r"^[A-Za-z0-9_.\-]+$")


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
        table: a latency table file (``lut:FILE``, set by :class:`costs.targets.TableTarget` only):
            latency is predicted from it; the other fields are those of the target it was measured on.
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
        return replace(self.measured, remote=None)

    @property
    def measured(self) -> Target:
        """Where latency is timed: a ``lut:`` target's table was measured there; any other is itself."""
        if self.table is None and type(self) is Target:
            return self
        return Target(**{f.name: getattr(self, f.name) for f in fields(Target) if f.name != "table"})

    def load_table(self) -> Any:
        """The latency table of a ``lut:`` target (:class:`costs.targets.TableTarget` overrides this)."""
        raise ConfigError(f"target {self.spec} has no latency table")

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
            where = f"this machine's CPU ({cpu_name()})"
        else:
            where = f"this machine's {self.device}"
        layout = "NCHW input" if self.runtime == "onnxruntime" else self.memory_format.replace("_", "-")
        if self.table is not None:
            return f"latency table {self.table} (predicted; measured on {self.measured.describe()})"
        return (f"{where}, {self.threads} thread{'s' if self.threads != 1 else ''}, {runtime}, {layout}, "
                f"batch {self.batch}")

    def cost_settings(self, image_size: int, in_channels: int = 3) -> Any:
        """The :class:`costs.registry.CostSettings` of the torch runtimes."""
        from costs.registry import CostSettings

        return CostSettings(image_size=image_size, in_channels=in_channels, device=self.device, threads=self.threads,
                            memory_format=self.memory_format)

    # -- where it runs -----------------------------------------------------------------------

    def check(self) -> Target:
        """Make sure the target exists where it is measured; returns itself.

        Raises:
            ConfigError: no CUDA or no such CUDA device, onnxruntime missing or without the provider,
                more threads than CPUs, no Ray connection, or a Ray cluster without the resource
                (the message says what this machine, or the cluster, has).
        """
        if self.remote is not None:
            remote_call(self, "check", remote_task)
            return self
        import torch

        cores = cpu_count()
        if self.threads > cores:
            raise ConfigError(f"target {self.spec}: threads={self.threads}, but {machine_summary()}")
        if self.device.startswith("cuda"):
            if not torch.cuda.is_available():
                raise ConfigError(f"target {self.spec}: CUDA is not available here; {machine_summary()}")
            index = int(self.device.split(":")[1]) if ":" in self.device else 0
            if index >= torch.cuda.device_count():
                raise ConfigError(f"target {self.spec}: no CUDA device {index}; {machine_summary()}")
        if self.runtime == "onnxruntime":
            ort = require_onnxruntime(self)
            available = ort.get_available_providers()
            if self.provider not in available:
                raise ConfigError(f"target {self.spec}: onnxruntime {ort.__version__} here has no {self.provider}; "
                                  f"available: {', '.join(available)}")
        return self

    def fingerprint(self) -> dict[str, Any]:
        """What the numbers were measured on: device name, runtime and library versions, settings.

        For a ``ray:`` target the measuring node answers (its host, CPU or GPU, versions).
        """
        if self.remote is not None:
            return {**remote_call(self, "fingerprint", remote_task), "spec": self.spec, "remote": self.remote}
        import torch

        if self.device.startswith("cuda") and torch.cuda.is_available():
            name = torch.cuda.get_device_name(torch.device(self.device))
        else:
            name = cpu_name()
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



def parse_hardware(spec: str | Target | None) -> Target:
    """Parse a measured ``--target`` string (module docstring); a :class:`Target` passes through, None is
    ``cpu``. ``lut:FILE`` is :func:`costs.targets.parse_target`'s.

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
    :func:`costs.timing.compare_latency` with :meth:`Target.cost_settings` (the default target is
    exactly what the search measured before targets existed); ``torchscript`` traces and freezes
    each model, then the same; ``onnxruntime`` exports each model to a temporary file and times
    its inference session. ``shapes`` gives a model its own input shape (without the batch; the
    layers of a latency table), ``repeats`` overrides the timed runs per model.

    Raises:
        TargetUnsupported: a model the runtime or device cannot take.
        ConfigError: a ``ray:`` target without Ray, or whose resource the cluster lacks.
    """
    target = parse_hardware(target)
    if target.table is not None:  # predicted from the table (its misses measured on target.measured)
        table = target.load_table()
        return {name: table.predict(model) for name, model in models.items()}
    if target.remote is not None:
        return remote_call(target, "latency", remote_task, models=models, image_size=image_size,
                           in_channels=in_channels, shapes=shapes, repeats=repeats)
    settings = target.cost_settings(image_size, in_channels)
    if repeats is not None:
        settings = replace(settings, repeats=int(repeats))
    shapes = {k: tuple(int(d) for d in v) for k, v in (shapes or {}).items()}
    if target.runtime == "onnxruntime":
        return onnxruntime_latency(target, models, settings, shapes)
    models = {name: on_device(target, name, m) for name, m in models.items()}
    if target.runtime == "torchscript":
        models = {name: traced(target, name, m, settings, shapes.get(name)) for name, m in models.items()}
    return compare_latency(models, settings=settings, batch_size=target.batch, **({"shapes": shapes} if shapes else {}))


def remote_task(action: str, spec: str, refs: Mapping[str, Any] | None = None, image_size: int = 0,
                in_channels: int = 3, shapes: Mapping[str, Any] | None = None, repeats: int | None = None) -> Any:
    """Runs on the node that offers the resource: check, fingerprint or measure the local part."""
    target = parse_hardware(spec)
    if action == "check":
        target.check()
        return None
    if action == "fingerprint":
        return target.fingerprint()
    import ray

    names = list(refs or {})
    models = dict(zip(names, ray.get([refs[n] for n in names])))
    return compare_latency_on(target, models, image_size, in_channels, shapes=shapes, repeats=repeats)
