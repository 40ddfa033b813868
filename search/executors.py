"""Where trials run: in the driver's process, or on a Ray cluster, several at a time.

The driver (``search.run``) keeps the engine, MLflow and the progress bar; an executor only
turns JSON trial requests (:meth:`search.request.TrialRequest.to_dict`) into JSON results.

    executor.submit(key, request)          # start a trial
    key, result, error = executor.next()   # the first trial to finish (blocks)

``capacity`` says how many trials may be in flight; the serial executor runs one, in ``next``.

On Ray (:class:`RayExecutor`):

* **Joining** a cluster is bounded in time (:func:`probe_cluster`, in a child process: a head whose
  GCS advertises an address this machine cannot reach makes ``ray.init`` retry for ever), and
  every node must run the same code as the driver (:func:`code_version`), or the search stops
  before any training with one line naming the node.
* **Lost workers** are retried: a trial whose worker process or node dies (not one whose own code
  raised) is submitted again, up to ``retries`` times, and lands wherever the cluster has room
  (another node when its own is gone). Its Optuna trial stays open meanwhile, so it is counted
  once; after the last attempt the driver gets a :class:`TrialLost`.
* **No shared disk**: :meth:`RayExecutor.ship` puts files (the decoded data set, the base
  checkpoint) into Ray's object store once; each node writes them to its own cache the first
  time a trial there needs them and the request is rewritten to those node-local paths.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from rsc.errors import ConfigError
from search.cluster import RayUnavailable, check_ray_address, code_version, probe_cluster
from search.config import BACKENDS
from search.request import TrialRequest

__all__ = ["SerialExecutor", "RayExecutor", "RayUnavailable", "TrialLost", "make_executor", "check_ray_address",
           "probe_cluster", "code_version", "ship_inputs", "BACKENDS"]

TrialFn = Callable[[Mapping[str, Any]], dict]


class TrialLost(Exception):
    """A trial whose worker or node was lost on every attempt (not an error of the trial itself)."""

    def __init__(self, attempts: int, reasons: Sequence[str]) -> None:
        self.attempts, self.reasons = attempts, list(reasons)
        super().__init__(f"lost {attempts} time(s): " + "; ".join(self.reasons))


class SerialExecutor:
    """One trial at a time, in this process (the default)."""

    capacity = 1
    ships = False

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


@dataclass
class _Job:
    """A trial in flight on Ray: its request, and the attempts lost so far."""

    key: Any
    request: dict[str, Any]
    lost: list[str] = field(default_factory=list)


class RayExecutor:
    """Up to ``workers`` trials at once as Ray tasks, each with ``cpus``/``gpus`` reserved.

    Args:
        trial_fn: the trial function; it is shipped to the workers by reference to its module,
            so it must be importable there (``search.objective.evaluate_trial`` is).
        address: ``None`` starts a private local Ray instance; ``auto`` joins the cluster this
            machine belongs to; ``host:port`` or ``ray://host:10001`` joins a remote one (first
            checked by :func:`probe_cluster` within ``timeout`` seconds).
        workers: trials in flight (default: what the cluster's CPUs allow at ``cpus`` each).
        cpus, gpus: resources reserved per trial; each trial sets torch's threads to ``cpus``.
        retries: attempts after the first for a trial whose worker or node is lost.
        on_retry: called as ``on_retry(key, attempt, reason)`` before a lost trial is resubmitted.
        nodes: what :func:`probe_cluster` answered for ``address`` already (not probed again).
        init_kwargs: extra ``ray.init`` arguments for a private instance (``num_cpus``,
            ``_node_ip_address``...).
    """

    def __init__(self, trial_fn: TrialFn, *, address: str | None = None, workers: int | None = None,
                 cpus: float = 1.0, gpus: float = 0.0, retries: int = 2, timeout: float = 60.0,
                 on_retry: Callable[[Any, int, str], None] | None = None, nodes: Mapping[str, Any] | None = None,
                 init_kwargs: Mapping[str, Any] | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise RayUnavailable("the ray backend needs Ray: pip install 'ray[default]'") from None
        self.address = address
        self.retries, self.on_retry = int(retries), on_retry
        self._pending: dict[Any, _Job] = {}  # ObjectRef -> job
        self._shipped: dict[str, tuple[str, str, Any]] = {}  # request key path -> (sha256, name, ObjectRef)
        self._ray = ray
        self._started = False
        self.nodes: dict[str, Any] = dict(nodes or {})
        if not ray.is_initialized():
            if address and not self.nodes:
                self.nodes = probe_cluster(address, timeout)
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": "ERROR", "log_to_driver": False}
            if not address:  # a private instance: trial requests and results are small JSON
                kwargs["object_store_memory"] = 256 * 1024**2
            kwargs.update(init_kwargs or {})
            if address:
                kwargs["address"] = address
                kwargs.pop("include_dashboard")
            else:  # a new instance even when another one runs on this machine (ray.init() would join it)
                kwargs["address"] = "local"
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
        # retries are the driver's (counted, reported, bounded), never Ray's behind its back
        self._remote = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=0)(_run_trial)
        self._fn_ref = trial_fn
        self._code = code_version()
        self._resources = (total_cpus, total_gpus)
        ex = ray.exceptions
        self._lost_errors = tuple(getattr(ex, n) for n in (
            "WorkerCrashedError", "NodeDiedError", "ObjectLostError", "OutOfMemoryError", "RaySystemError",
            "LocalRayletDiedError") if hasattr(ex, n))

    @property
    def ships(self) -> bool:
        """Whether trials should get files through the object store (a cluster joined by address)."""
        return bool(self.address)

    def ship(self, request: Mapping[str, Any], files: Mapping[tuple[str, ...], tuple[str, bytes | str | Path]]
             ) -> dict[str, Any]:
        """Put files into the object store; each trial finds them at node-local paths.

        ``files`` maps a key path of the request (``("data", "file")``) to ``(name, content)``,
        content being bytes or a local path. Returns the request with those keys set to a
        placeholder, which :func:`_run_trial` replaces by the node-local file.
        """
        out = json.loads(json.dumps(request))
        for keys, (name, content) in files.items():
            blob = content if isinstance(content, bytes) else Path(content).read_bytes()
            sha = hashlib.sha256(blob).hexdigest()
            self._shipped["/".join(keys)] = (sha, name, self._ray.put(blob))
            _set_path(out, keys, f"shipped:{sha[:16]}-{name}")
        return out

    def submit(self, key: Any, request: Mapping[str, Any]) -> None:
        request = {**request, "threads": request.get("threads") or max(1, int(self.cpus))}
        self._submit(_Job(key, dict(request)))

    def _submit(self, job: _Job) -> None:
        ref = self._remote.remote(self._fn_ref, job.request, self._shipped, self._code)
        self._pending[ref] = job

    def next(self) -> tuple[Any, dict | None, BaseException | None]:
        ray = self._ray
        while True:
            done, _ = ray.wait(list(self._pending), num_returns=1)
            ref = done[0]
            job = self._pending.pop(ref)
            try:
                return job.key, ray.get(ref), None
            except ray.exceptions.RayTaskError as exc:
                cause = exc.cause if getattr(exc, "cause", None) is not None else exc
                return job.key, None, cause
            except self._lost_errors as exc:
                job.lost.append(f"{type(exc).__name__}: {_first_line(exc)}")
                if len(job.lost) > self.retries:
                    return job.key, None, TrialLost(len(job.lost), job.lost)
                if self.on_retry is not None:
                    self.on_retry(job.key, len(job.lost), job.lost[-1])
                self._submit(job)
            except ray.exceptions.RayError as exc:
                return job.key, None, exc

    def cancel(self) -> None:
        for ref in list(self._pending):
            try:
                self._ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 - best effort on the way out
                pass
        self._pending.clear()

    def close(self) -> None:
        self.cancel()
        self._shipped.clear()
        if self._started:
            self._ray.shutdown()
            self._started = False

    def describe(self) -> str:
        cpus, gpus = self._resources
        where = self.address or "a local Ray instance"
        nodes = f", {len(self.nodes['nodes'])} node(s)" if self.nodes.get("nodes") else ""
        return (f"ray at {where} ({cpus:g} CPUs, {gpus:g} GPUs{nodes}): up to {self.capacity} trials at once, "
                f"{self.cpus:g} CPU / {self.gpus:g} GPU each, {self.retries} retries for a lost worker")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _set_path(obj: dict[str, Any], keys: Sequence[str], value: Any) -> None:
    for k in keys[:-1]:
        obj = obj.setdefault(k, {})
    obj[keys[-1]] = value


def _materialise(shipped: Mapping[str, tuple[str, str, Any]], request: dict[str, Any]) -> dict[str, Any]:
    """On a worker: write shipped files to this node's cache once, and point the request at them."""
    import ray

    from rsc.scenes import cache_dir

    folder = cache_dir() / "shipped"
    for keypath, (sha, name, ref) in shipped.items():
        path = folder / f"{sha[:16]}-{name}"
        if not path.is_file():
            blob = ray.get(ref)
            folder.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_bytes(blob)
            os.replace(tmp, path)  # atomic: trials of the same node may race to write it
        _set_path(request, keypath.split("/"), str(path))
    return request


def _run_trial(fn: TrialFn, request: Mapping[str, Any], shipped: Mapping[str, Any] | None = None,
               code: str | None = None) -> dict:
    """The Ray task: one trial, with where and when it ran."""
    import ray

    if code is not None and code_version() != code:
        raise RayUnavailable(f"node {socket.gethostname()} runs rscompress {code_version()}, the driver {code}")
    start, t = time.time(), time.perf_counter()
    request = _materialise(shipped or {}, json.loads(json.dumps(request)))
    fetched = time.perf_counter() - t
    result = fn(request)
    result.setdefault("seconds", {})["worker"] = time.perf_counter() - t
    result["seconds"]["ship"] = fetched
    ctx = ray.get_runtime_context()
    result["worker"] = {"host": socket.gethostname(), "pid": os.getpid(), "node_id": ctx.get_node_id(),
                        "start": start, "end": time.time()}
    return result


def make_executor(backend: str, trial_fn: TrialFn, **kwargs: Any) -> SerialExecutor | RayExecutor:
    if backend == "local":
        return SerialExecutor(trial_fn)
    if backend == "ray":
        return RayExecutor(trial_fn, **kwargs)
    raise ConfigError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")


def ship_inputs(executor: Any, s: Any) -> TrialRequest:
    """The search's request template (``s.request``) with the data set and the base checkpoint sent through the
    executor's object store instead of by path (the synthetic set is rebuilt from its seed on the worker)."""
    from rsc.scenes import save_scene_file

    files: dict[tuple[str, ...], tuple[str, Any]] = {("base_checkpoint",): ("base.pt", s.ckpt)}
    if s.data.root is not None:
        files[("data", "file")] = (f"{s.data.name}-{s.data.image_size}px.pt", save_scene_file(s.data))
    return TrialRequest.from_dict(executor.ship(s.request.to_dict(), files))
