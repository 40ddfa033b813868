"""Measuring on another machine: a Ray task on the node that offers a target's custom resource.

A ``ray:RESOURCE`` target (:mod:`costs.hardware`) is measured by a task with
``resources={RESOURCE: 1}, num_cpus=0``: one unit of the resource means one measurement at a time on
that node. The models travel through Ray's object store; the caller must be connected to Ray.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from costs.errors import TargetUnsupported
from costs.machine import first_line
from rsc.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

__all__ = ["REMOTE_CHECK_TIMEOUT", "custom_resources", "remote_call"]

#: seconds to wait for a ray: target's node to answer a check (its worker may have to start first).
REMOTE_CHECK_TIMEOUT = 120.0
RAY_BUILTIN = ("CPU", "GPU", "memory", "object_store_memory")


def custom_resources(resources: Mapping[str, float]) -> list[str]:
    """The custom resources of a Ray cluster (not CPU, GPU, memory, node or accelerator entries)."""
    return sorted(k for k in resources if k not in RAY_BUILTIN and not k.startswith(("node:", "accelerator_type:")))


def remote_call(target: Any, action: str, task: Callable[..., Any], *, models: Mapping[str, nn.Module] | None = None,
                image_size: int = 0, in_channels: int = 3, shapes: Mapping[str, Any] | None = None,
                repeats: int | None = None) -> Any:
    """Run ``task(action, target.local.spec, model refs, ...)`` as a Ray task on the node offering
    ``target.remote`` and return its answer (the node side is :func:`costs.hardware.remote_task`)."""
    try:
        import ray
    except ImportError:
        raise ConfigError(f"target {target.spec} needs Ray: pip install 'ray[default]'") from None
    if not ray.is_initialized():
        raise ConfigError(f"target {target.spec} needs a Ray cluster with a node that offers {target.remote!r}: "
                          "join it with --ray-address (or ray.init)")
    offered = ray.cluster_resources()
    if not offered.get(target.remote):
        custom = custom_resources(offered)
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
                                        f"{first_line(exc)}") from None
    task = ray.remote(num_cpus=0, resources={target.remote: 1}, max_retries=0)(task)
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
