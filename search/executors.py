"""Where trials run: in the driver's process, or on a Ray cluster, several at a time.

The driver (``search.run``) keeps the Optuna study, MLflow and the progress bar; an executor only
turns JSON trial requests into JSON results. A request carries everything a trial needs (data
by path, the base checkpoint by path, the plan), so a Ray worker needs this package and the files
at the same paths (a shared volume; ``docker-compose.yml`` mounts one), not the driver's memory.

    executor.submit(key, request)      # start a trial
    key, result, error = executor.next()   # the first trial to finish (blocks)

``capacity`` says how many trials may be in flight; the serial executor runs one, in ``next``.
"""

from __future__ import annotations

import collections
import socket
import time
from typing import Any, Callable, Mapping

from rsc.errors import ConfigError, UserError
from search.config import BACKENDS

__all__ = ["SerialExecutor", "RayExecutor", "RayUnavailable", "make_executor", "check_ray_address", "BACKENDS"]

TrialFn = Callable[[Mapping[str, Any]], dict]


class RayUnavailable(UserError):
    """The Ray cluster named by ``--ray-address`` cannot be reached, or Ray is not installed."""


class SerialExecutor:
    """One trial at a time, in this process (the default)."""

    capacity = 1

    def __init__(self, trial_fn: TrialFn) -> None:
        self.trial_fn = trial_fn
        self._queue: collections.deque = collections.deque()

    def submit(self, key: Any, request: Mapping[str, Any]) -> None:
        self._queue.append((key, request))

    def next(self) -> tuple[Any, dict | None, BaseException | None]:
        key, request = self._queue.popleft()
        try:
            return key, self.trial_fn(request), None
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # noqa: BLE001 - a broken trial is recorded, the search goes on
            return key, None, exc

    def cancel(self) -> None:
        self._queue.clear()

    close = cancel

    def describe(self) -> str:
        return "local, one trial at a time"


def check_ray_address(address: str, timeout: float = 3.0) -> None:
    """Fail fast, with the address in the message, when nothing listens at ``host:port``."""
    if address in ("auto", "local"):
        return
    hostport = address.removeprefix("ray://")
    host, _, port = hostport.rpartition(":")
    try:
        port_n = int(port)
    except ValueError:
        raise ConfigError(f"--ray-address {address!r}: expected host:port, ray://host:port or auto") from None
    try:
        with socket.create_connection((host or "127.0.0.1", port_n), timeout=timeout):
            pass
    except OSError as exc:
        raise RayUnavailable(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}") from None


class RayExecutor:
    """Up to ``workers`` trials at once as Ray tasks, each with ``cpus``/``gpus`` reserved.

    Args:
        trial_fn: the trial function; it is shipped to the workers by reference to its module,
            so it must be importable there (``search.objective.evaluate_trial`` is).
        address: ``None`` starts a private local Ray instance; ``auto`` joins the cluster this
            machine belongs to; ``host:port`` or ``ray://host:10001`` joins a remote one.
        workers: trials in flight (default: what the cluster's CPUs allow at ``cpus`` each).
        cpus, gpus: resources reserved per trial; each trial sets torch's threads to ``cpus``.
        init_kwargs: extra ``ray.init`` arguments for a private instance (``num_cpus``,
            ``_node_ip_address``...).
    """

    def __init__(self, trial_fn: TrialFn, *, address: str | None = None, workers: int | None = None,
                 cpus: float = 1.0, gpus: float = 0.0, init_kwargs: Mapping[str, Any] | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise RayUnavailable("the ray backend needs Ray: pip install 'ray[tune]'") from None
        self.address = address
        self._pending: dict[Any, Any] = {}  # ObjectRef -> key
        if address:
            check_ray_address(address)
        self._ray = ray
        self._started = False
        if not ray.is_initialized():
            import os

            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": "ERROR", "log_to_driver": False}
            if not address:  # a private instance: trial requests and results are small JSON
                kwargs["object_store_memory"] = 256 * 1024**2
            kwargs.update(init_kwargs or {})
            if address:
                kwargs["address"] = address
            try:
                ray.init(**kwargs)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise RayUnavailable(f"cannot start or join Ray at {address or 'a local instance'}: "
                                     f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
            self._started = True
        total_cpus = float(ray.cluster_resources().get("CPU", 1.0))
        total_gpus = float(ray.cluster_resources().get("GPU", 0.0))
        if gpus > total_gpus:
            self.close()
            raise ConfigError(f"--trial-gpus {gpus:g}: the Ray cluster has {total_gpus:g} GPU(s)")
        if cpus > total_cpus:
            self.close()
            raise ConfigError(f"--trial-cpus {cpus:g}: the Ray cluster has {total_cpus:g} CPU(s)")
        self.capacity = int(workers or max(1, total_cpus // cpus))
        self.cpus, self.gpus = cpus, gpus
        self._remote = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=0)(_run_trial)
        self._fn_ref = trial_fn
        self._resources = (total_cpus, total_gpus)

    def submit(self, key: Any, request: Mapping[str, Any]) -> None:
        request = {**request, "threads": request.get("threads") or max(1, int(self.cpus))}
        ref = self._remote.remote(self._fn_ref, dict(request))
        self._pending[ref] = key

    def next(self) -> tuple[Any, dict | None, BaseException | None]:
        ray = self._ray
        done, _ = ray.wait(list(self._pending), num_returns=1)
        ref = done[0]
        key = self._pending.pop(ref)
        try:
            return key, ray.get(ref), None
        except ray.exceptions.RayTaskError as exc:
            cause = exc.cause if getattr(exc, "cause", None) is not None else exc
            return key, None, cause
        except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
                ray.exceptions.RayError) as exc:
            return key, None, exc

    def cancel(self) -> None:
        for ref in list(self._pending):
            try:
                self._ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 - best effort on the way out
                pass
        self._pending.clear()

    def close(self) -> None:
        self.cancel()
        if self._started:
            self._ray.shutdown()
            self._started = False

    def describe(self) -> str:
        cpus, gpus = self._resources
        where = self.address or "a local Ray instance"
        return (f"ray at {where} ({cpus:g} CPUs, {gpus:g} GPUs): up to {self.capacity} trials at once, "
                f"{self.cpus:g} CPU / {self.gpus:g} GPU each")


def _run_trial(fn: TrialFn, request: Mapping[str, Any]) -> dict:
    """The Ray task: one trial, with where and when it ran."""
    import os

    start, t = time.time(), time.perf_counter()
    result = fn(request)
    result.setdefault("seconds", {})["worker"] = time.perf_counter() - t
    result["worker"] = {"host": socket.gethostname(), "pid": os.getpid(), "start": start, "end": time.time()}
    return result


def make_executor(backend: str, trial_fn: TrialFn, **kwargs: Any) -> SerialExecutor | RayExecutor:
    if backend == "local":
        return SerialExecutor(trial_fn)
    if backend == "ray":
        return RayExecutor(trial_fn, **kwargs)
    raise ConfigError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
