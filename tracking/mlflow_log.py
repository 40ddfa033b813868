"""MLflow bookkeeping of a search: one parent run per study, one nested child run per trial.

Everything goes through :class:`mlflow.MlflowClient` with explicit run ids rather than the fluent
``mlflow.start_run`` stack, which is per process: a trial evaluated in a worker process or on
another machine can log into its child run given only the tracking URI and the run id.

Layout (what the README's "find the front" recipe relies on):

* parent run ``<study>``: params ``budget``, ``space``, ``dataset``, ``split_hash``, ``sampler``...;
  metric ``hypervolume`` (step = trials finished); artifacts ``pareto/front.csv``,
  ``pareto/front.json``, ``pareto/front.html``, ``pareto/front.png``, ``models/trial-<n>``.
* child run ``trial-<n>``: params = the plan flattened as ``space/param``; artifact ``plan.json``;
  metrics ``val_oa``, ``params``, ``macs``, ``size``, ``latency_ms``, ``compression_rate``,
  ``speedup``; tags ``method``, ``feasible``, ``pareto`` (``"true"``/``"false"``, kept current),
  ``state``, ``trial_number``, ``study``.

Several drivers may start together on one new sqlite database (the default URI): MLflow's schema
migration is not safe across processes, so opening a sqlite store holds a file lock beside the
database (:func:`sqlite_init_lock`) and retries briefly on the errors of a concurrent migration
(:func:`retry_schema_race`). Any backend failure - server gone, store unwritable, database
broken - surfaces as one :class:`TrackingError` naming the URI and the operation.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import random
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence, TypeVar

from tracking.errors import TrackingError

__all__ = ["TrackingError", "check_tracking_uri", "default_tracking_uri", "flatten_params", "Tracker",
           "open_store", "sqlite_init_lock", "retry_schema_race"]

PARENT_TAG = "mlflow.parentRunId"
_MAX_PARAM_LEN = 6000
T = TypeVar("T")

# What a store being created or migrated by another process looks like from this one (MLflow's
# alembic migrations, Optuna's create_all): retried a few times, then reported.
# ("out-of-date database schema" is not: under the lock it means a database to upgrade, not a race.)
_SCHEMA_RACE = ("duplicate column", "already exists", "database is locked", "online migration expected",
                "unique constraint failed: alembic_version")


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///PATH`` URI (SQLAlchemy's reading: three slashes then a
    relative path, four an absolute one), or None for other URIs and in-memory databases."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].split("?", 1)[0]
    return None if path in ("", ":memory:") else Path(urllib.parse.unquote(path))


@contextlib.contextmanager
def sqlite_init_lock(uri: str, *, timeout: float = 120.0) -> Iterator[None]:
    """Hold an exclusive inter-process lock on ``<db>.lock`` for a ``sqlite:///`` URI; no-op otherwise.

    Wraps the first use of a store (schema creation and migration), which neither MLflow nor
    Optuna serialise across processes. Waits up to ``timeout`` seconds, then raises TimeoutError.
    Without ``fcntl`` (Windows), or where the lock file cannot be created (the store then reports
    the unwritable folder itself), nothing is locked.
    """
    path = sqlite_path(uri)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        fcntl = None  # type: ignore[assignment]
    if path is None or fcntl is None:
        yield
        return
    lock = path.with_name(path.name + ".lock")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(lock, "a")  # noqa: SIM115 - closed below
    except OSError:
        yield
        return
    with fh:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"waited {timeout:.0f} s for {lock} (held by another process)") from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def retry_schema_race(fn: Callable[[], T], *, attempts: int = 5, delay: float = 0.25,
                      patterns: Sequence[str] = _SCHEMA_RACE) -> T:
    """``fn()``, retried with a short exponential backoff (about 4 s in all) while it fails the way a
    store that another process is creating or migrating fails (its message holds one of
    ``patterns``, lower case); other errors propagate at once."""
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - matched on the message: the types vary by layer
            if attempt == attempts - 1 or not any(s in str(exc).lower() for s in patterns):
                raise
        time.sleep(delay * 2 ** attempt * (0.5 + random.random()))
    raise AssertionError("unreachable")


def open_store(uri: str, fn: Callable[[], T], *, patterns: Sequence[str] = _SCHEMA_RACE) -> T:
    """``fn()``: the first use of the store at ``uri``. For a sqlite file it runs under
    :func:`sqlite_init_lock` and :func:`retry_schema_race` (with ``patterns``); otherwise as is."""
    if sqlite_path(uri) is None:
        return fn()
    with sqlite_init_lock(uri):
        return retry_schema_race(fn, patterns=patterns)


def _reason(exc: BaseException) -> str:
    """One line on why a backend call failed, with a hint for the sqlite failures users can fix."""
    text = str(exc)
    low = text.lower()
    if "not a database" in low or "malformed" in low:
        return "the database file is corrupt (not an SQLite database); move it away or use another tracking URI"
    if "unable to open database" in low or "readonly database" in low or "read-only" in low:
        return "the database cannot be opened for writing"
    if "database is locked" in low:
        return "the database is locked by another process"
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if len(first) > 400:
        first = first[:400] + "..."
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _is_backend_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a failure of the tracking backend (MLflow, its database, its server, the
    artifact store) rather than a bug of the caller, which keeps its traceback."""
    kinds: list[type] = [OSError]
    for module, name in (("mlflow.exceptions", "MlflowException"), ("sqlalchemy.exc", "SQLAlchemyError"),
                         ("requests.exceptions", "RequestException"), ("alembic.util.exc", "CommandError"),
                         ("sqlite3", "Error")):
        kind = getattr(sys.modules.get(module), name, None)
        if isinstance(kind, type):
            kinds.append(kind)
    return isinstance(exc, tuple(kinds))


def _tracking_error(uri: str, operation: str, exc: BaseException) -> TrackingError:
    return TrackingError(f"MLflow tracking URI {uri}: {operation} failed: {_reason(exc)}")


def _tracked(method: Callable[..., T]) -> Callable[..., T]:
    """A :class:`Tracker` method whose backend failures become one TrackingError (URI + operation).

    KeyboardInterrupt and errors that are not the backend's (bugs) pass through unchanged.
    """
    @functools.wraps(method)
    def wrapper(self: Tracker, *args: Any, **kwargs: Any) -> T:
        try:
            return method(self, *args, **kwargs)
        except TrackingError:
            raise
        except Exception as exc:
            if not _is_backend_error(exc):
                raise
            raise _tracking_error(self.uri, method.__name__, exc) from exc
    return wrapper


@contextlib.contextmanager
def _fluent_uri(uri: str):
    """MLflow's fluent API pointed at ``uri`` for a block, then exactly as it was.

    ``mlflow.set_tracking_uri`` also exports ``$MLFLOW_TRACKING_URI``; setting back the value
    ``get_tracking_uri`` returned would leave MLflow's own default (``sqlite:///mlflow.db``, relative
    to the working directory) in the environment, where every later search or study of the process
    (and its subprocesses) would take it for the user's choice."""
    import mlflow
    from mlflow.tracking._tracking_service import utils

    previous, env = getattr(utils, "_tracking_uri", None), os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)
        if env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = env


def default_tracking_uri(root: str | Path) -> str:
    """The embedded default: a sqlite database ``<root>/mlflow.db``."""
    return f"sqlite:///{Path(root).resolve() / 'mlflow.db'}"


def check_tracking_uri(uri: str, *, timeout: float = 5.0) -> None:
    """Fail fast, naming ``uri``, when a tracking server cannot be reached (or a sqlite file not created).

    Called before the search starts so that an hour of training never ends in a logging error.
    """
    if uri.startswith(("http://", "https://")):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - user-given URI
                if resp.status != 200:
                    raise TrackingError(f"MLflow tracking server {uri} answered {resp.status} on /health")
        except TrackingError:
            raise
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TrackingError(f"cannot reach MLflow tracking server {uri}: {reason}") from None
    elif uri.startswith("sqlite:///"):
        path = sqlite_path(uri)
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TrackingError(f"cannot create the MLflow database folder for {uri}: {exc}") from None
        if path.is_file() and path.stat().st_size:
            _check_sqlite_file(uri, path)
    elif uri.startswith("file:"):
        pass
    elif "://" not in uri:
        raise TrackingError(f"tracking URI {uri!r} has no scheme; use sqlite:///PATH or http://HOST:PORT")


def _check_sqlite_file(uri: str, path: Path) -> None:
    """An existing database file that SQLite cannot read fails here, before any data is loaded
    (read-only and without MLflow: the schema itself is created or migrated by :class:`Tracker`)."""
    import sqlite3

    try:
        con = sqlite3.connect(f"file:{urllib.parse.quote(str(path))}?mode=ro", uri=True, timeout=10)
    except sqlite3.Error:
        return  # unreadable in other ways: the Tracker reports it with MLflow's own words
    try:
        con.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as exc:
        if "not a database" in str(exc).lower() or "malformed" in str(exc).lower():
            raise _tracking_error(uri, "opening the database", exc) from None
    finally:
        con.close()


def flatten_params(plan: Mapping[str, Any]) -> dict[str, str]:
    """A plan as MLflow params: ``step<i>.<space>/<param>`` -> value (long values truncated)."""
    out: dict[str, str] = {}
    for key, value in (plan.get("base") or {}).items():
        out[f"base/{key}"] = str(value)
    for i, step in enumerate(plan.get("steps") or []):
        space = step.get("space", "?")
        out[f"step{i}"] = space
        for key, value in _flatten(step.get("params") or {}, f"{space}"):
            out[key] = value
    return out


def _flatten(obj: Any, prefix: str) -> Iterable[tuple[str, str]]:
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            yield from _flatten(v, f"{prefix}/{k}")
    else:
        text = json.dumps(obj) if isinstance(obj, (list, tuple)) else str(obj)
        yield prefix, text[:_MAX_PARAM_LEN]


def _as_finite(value: Any) -> float | None:
    """``value`` as a float, or None when it is not a finite number (MLflow rejects those)."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _finite(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {k: f for k, v in metrics.items() if (f := _as_finite(v)) is not None}


class Tracker:
    """Writes a study's runs to one MLflow experiment.

    Args:
        uri: tracking URI (``sqlite:///...`` or ``http://host:port``).
        experiment: experiment name (created on first use).
        artifact_location: where a *new* experiment stores artifacts (local backends only;
            a server decides its own). Default for a ``sqlite:///`` store: ``mlartifacts/``
            beside the database file, whichever command creates the experiment first (a study's
            search cell, a search of its own), so one experiment never keeps its artifacts inside
            another command's output folder.
    """

    def __init__(self, *, uri: str, experiment: str, artifact_location: str | None = None) -> None:
        self.uri = uri
        self.experiment = experiment
        self._pareto: dict[str, bool] = {}
        if artifact_location is None and (db := sqlite_path(uri)) is not None:
            artifact_location = (db.resolve().parent / "mlartifacts").as_uri()
        try:  # the first client on a sqlite file creates or migrates its schema: one process at a time
            self.client, self.experiment_id = open_store(uri, functools.partial(self._open, experiment,
                                                                                artifact_location))
        except TrackingError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure to open the store is the URI's fault
            raise _tracking_error(uri, f"opening experiment {experiment!r}", exc) from exc

    def _open(self, experiment: str, artifact_location: str | None) -> tuple[Any, str]:
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        client = MlflowClient(tracking_uri=self.uri)
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            try:
                return client, client.create_experiment(experiment, artifact_location=artifact_location)
            except MlflowException as exc:  # created meanwhile by another driver (a server has no lock)
                exp = client.get_experiment_by_name(experiment) if exc.error_code == "RESOURCE_ALREADY_EXISTS" else None
                if exp is None:
                    raise
        if exp.lifecycle_stage == "deleted":
            raise TrackingError(f"MLflow experiment {experiment!r} at {self.uri} is deleted; restore it "
                                "(mlflow experiments restore) or choose another experiment name")
        return client, exp.experiment_id

    # -- parent ----------------------------------------------------------------------------

    @_tracked
    def start_parent(self, name: str, *, params: Mapping[str, Any], tags: Mapping[str, str] | None = None) -> str:
        run = self.client.create_run(self.experiment_id, run_name=name, tags=dict(tags or {}))
        self._log(run.info.run_id, params=params)
        return run.info.run_id

    @_tracked
    def resume_parent(self, run_id: str) -> str:
        """Reopen a parent run after an interruption; its pareto flags are read back."""
        self.client.update_run(run_id, status="RUNNING")
        for child in self.children(run_id):
            self._pareto[child.info.run_id] = child.data.tags.get("pareto") == "true"
        return run_id

    @_tracked
    def children(self, parent_id: str) -> list[Any]:
        return self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_id}'", max_results=50000
        )

    @_tracked
    def end_parent(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    # -- children --------------------------------------------------------------------------

    @_tracked
    def start_trial(self, parent_id: str, number: int, *, tags: Mapping[str, str] | None = None) -> str:
        """Create the child run ``trial-<number>`` under ``parent_id`` (status RUNNING)."""
        return self._create_child(parent_id, f"trial-{number}", {"trial_number": str(number), **(tags or {})})

    @_tracked
    def start_child(self, parent_id: str, name: str, *, tags: Mapping[str, str] | None = None) -> str:
        """Create a child run ``name`` under ``parent_id`` (status RUNNING; a study's cell, a search's trial)."""
        return self._create_child(parent_id, name, tags)

    def _create_child(self, parent_id: str, name: str, tags: Mapping[str, str] | None) -> str:
        all_tags = {PARENT_TAG: parent_id, "pareto": "false", "state": "RUNNING"}
        all_tags.update(tags or {})
        run = self.client.create_run(self.experiment_id, run_name=name, tags=all_tags)
        self._pareto[run.info.run_id] = False
        return run.info.run_id

    @_tracked
    def finish_trial(self, run_id: str, *, plan: Mapping[str, Any] | None = None, metrics: Mapping[str, Any] | None = None,
                     tags: Mapping[str, str] | None = None, status: str = "FINISHED",
                     series: Mapping[str, Sequence[Any]] | None = None) -> None:
        """Log a trial's plan (params + ``plan.json``), metrics and tags, and close its run.

        The plan is the one actually trained - after projection onto the budget - with the
        records that replay it; failed trials log the sampled plan. ``series``: per-epoch values
        (e.g. ``val_oa_epoch``), logged at steps 1, 2, ... so the UI draws them as curves.
        """
        steps = [(str(k), f, i + 1) for k, values in (series or {}).items() for i, v in enumerate(values)
                 if (f := _as_finite(v)) is not None]
        self._log(run_id, params=flatten_params(plan) if plan else None, metrics=_finite(metrics or {}), tags=tags,
                  stepped=steps)
        if plan:
            self.client.log_text(run_id, json.dumps(plan, indent=1, sort_keys=True), "plan.json")
        self.client.set_terminated(run_id, status=status)

    @_tracked
    def log_metrics(self, run_id: str, metrics: Mapping[str, Any], *, step: int = 0) -> None:
        self._log(run_id, metrics=_finite(metrics), step=step)

    @_tracked
    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        self._log(run_id, tags=tags)

    @_tracked
    def update_pareto(self, flags: Mapping[str, bool]) -> int:
        """Set ``pareto`` tags to the current front; only runs whose flag changed are written."""
        changed = 0
        for run_id, flag in flags.items():
            if self._pareto.get(run_id) != bool(flag):
                self.client.set_tag(run_id, "pareto", "true" if flag else "false")
                self._pareto[run_id] = bool(flag)
                changed += 1
        return changed

    # -- artifacts -------------------------------------------------------------------------

    @_tracked
    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path)

    @_tracked
    def log_artifacts(self, run_id: str, folder: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(run_id, str(folder), artifact_path)

    @_tracked
    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self.client.log_text(run_id, text, artifact_file)

    @_tracked
    def artifact_uri(self, run_id: str) -> str:
        return self.client.get_run(run_id).info.artifact_uri

    @_tracked
    def log_model(self, run_id: str, model: Any, name: str, *, input_example: Any = None,
                  metadata: Mapping[str, Any] | None = None) -> str:
        """Log a torch model as an MLflow model attached to ``run_id``; returns its model URI.

        MLflow's ``log_model`` only knows the fluent active run, so the run is entered briefly
        with the tracking URI of this tracker (and the global URI restored afterwards).

        MLflow saves the model with ``torch.export``, traced on ``input_example``; a batch of one
        would fix the batch size of the saved graph to 1 (torch specialises size-1 dimensions),
        so such an example is logged repeated to a batch of two.
        """
        import mlflow
        import mlflow.pytorch

        if getattr(input_example, "ndim", 0) >= 1 and input_example.shape[0] == 1:
            input_example = input_example[[0, 0]]  # numpy array or tensor alike
        with _fluent_uri(self.uri), mlflow.start_run(run_id=run_id, nested=True):
            info = mlflow.pytorch.log_model(
                model, name=name, input_example=input_example, metadata=dict(metadata or {}),
                pip_requirements=["torch", "torchvision"],
            )
        return info.model_uri

    @_tracked
    def log_compressed_model(self, run_id: str, path: str | Path, name: str, *, input_example: Any = None,
                             metadata: Mapping[str, Any] | None = None) -> str:
        """Log a compressed-model file (plan + state dict) as a pyfunc MLflow model; returns its URI.

        For models ``mlflow.pytorch`` cannot serialise (int8): see :mod:`tracking.compressed_model`.
        The model is logged as code (a script that builds :class:`CompressedModel`), not pickled.
        """
        import tempfile

        import mlflow

        from tracking.compressed_model import CODE_PATHS, MODEL_CODE

        with _fluent_uri(self.uri), tempfile.TemporaryDirectory() as tmp, mlflow.start_run(run_id=run_id, nested=True):
            code = Path(tmp) / "compressed_model_code.py"
            code.write_text(MODEL_CODE)
            info = mlflow.pyfunc.log_model(
                name=name, python_model=code, artifacts={"model": str(path)},
                code_paths=CODE_PATHS, input_example=input_example, metadata=dict(metadata or {}),
                pip_requirements=["torch", "torchvision", "torch-pruning", "tensorly", "numpy"],
            )
        return info.model_uri

    # -- low level -------------------------------------------------------------------------

    def _log(self, run_id: str, *, params: Mapping[str, Any] | None = None, metrics: Mapping[str, float] | None = None,
             tags: Mapping[str, str] | None = None, step: int = 0,
             stepped: Sequence[tuple[str, float, int]] = ()) -> None:
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        p = [Param(str(k), str(v)[:_MAX_PARAM_LEN]) for k, v in (params or {}).items()]
        m = [Metric(str(k), float(v), now, step) for k, v in (metrics or {}).items()]
        m += [Metric(k, v, now, s) for k, v, s in stepped]
        t = [RunTag(str(k), str(v)) for k, v in (tags or {}).items()]
        for i in range(0, max(len(p), len(m), len(t), 1), 100):  # MLflow caps a batch at 100 params
            if p[i:i + 100] or m[i:i + 100] or t[i:i + 100]:
                self.client.log_batch(run_id, metrics=m[i:i + 100], params=p[i:i + 100], tags=t[i:i + 100])
