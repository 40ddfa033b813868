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
"""

from __future__ import annotations

import json
import math
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from tracking.errors import TrackingError

__all__ = ["TrackingError", "check_tracking_uri", "default_tracking_uri", "flatten_params", "Tracker"]

PARENT_TAG = "mlflow.parentRunId"
_MAX_PARAM_LEN = 6000


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
        path = Path(uri[len("sqlite:///"):])
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TrackingError(f"cannot create the MLflow database folder for {uri}: {exc}") from None
    elif uri.startswith("file:"):
        pass
    elif "://" not in uri:
        raise TrackingError(f"tracking URI {uri!r} has no scheme; use sqlite:///PATH or http://HOST:PORT")


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
            a server decides its own).
    """

    def __init__(self, *, uri: str, experiment: str, artifact_location: str | None = None) -> None:
        from mlflow import MlflowClient

        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        try:
            exp = self.client.get_experiment_by_name(experiment)
            if exp is None:
                exp_id = self.client.create_experiment(experiment, artifact_location=artifact_location)
            else:
                exp_id = exp.experiment_id
        except Exception as exc:  # noqa: BLE001 - any backend failure here is the URI's fault
            raise TrackingError(f"cannot use MLflow tracking URI {uri}: {type(exc).__name__}: {exc}") from None
        self.experiment_id = exp_id
        self.experiment = experiment
        self._pareto: dict[str, bool] = {}

    # -- parent ----------------------------------------------------------------------------

    def start_parent(self, name: str, *, params: Mapping[str, Any], tags: Mapping[str, str] | None = None) -> str:
        run = self.client.create_run(self.experiment_id, run_name=name, tags=dict(tags or {}))
        self._log(run.info.run_id, params=params)
        return run.info.run_id

    def resume_parent(self, run_id: str) -> str:
        """Reopen a parent run after an interruption; its pareto flags are read back."""
        self.client.update_run(run_id, status="RUNNING")
        for child in self.children(run_id):
            self._pareto[child.info.run_id] = child.data.tags.get("pareto") == "true"
        return run_id

    def children(self, parent_id: str) -> list[Any]:
        return self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_id}'", max_results=50000
        )

    def end_parent(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    # -- children --------------------------------------------------------------------------

    def start_trial(self, parent_id: str, number: int, *, tags: Mapping[str, str] | None = None) -> str:
        """Create the child run ``trial-<number>`` under ``parent_id`` (status RUNNING)."""
        all_tags = {PARENT_TAG: parent_id, "trial_number": str(number), "pareto": "false", "state": "RUNNING"}
        all_tags.update(tags or {})
        run = self.client.create_run(self.experiment_id, run_name=f"trial-{number}", tags=all_tags)
        self._pareto[run.info.run_id] = False
        return run.info.run_id

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

    def log_metrics(self, run_id: str, metrics: Mapping[str, Any], *, step: int = 0) -> None:
        self._log(run_id, metrics=_finite(metrics), step=step)

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        self._log(run_id, tags=tags)

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

    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path)

    def log_artifacts(self, run_id: str, folder: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(run_id, str(folder), artifact_path)

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self.client.log_text(run_id, text, artifact_file)

    def artifact_uri(self, run_id: str) -> str:
        return self.client.get_run(run_id).info.artifact_uri

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
        previous = mlflow.get_tracking_uri()
        mlflow.set_tracking_uri(self.uri)
        try:
            with mlflow.start_run(run_id=run_id, nested=True):
                info = mlflow.pytorch.log_model(
                    model, name=name, input_example=input_example, metadata=dict(metadata or {}),
                    pip_requirements=["torch", "torchvision"],
                )
        finally:
            mlflow.set_tracking_uri(previous)
        return info.model_uri

    def log_compressed_model(self, run_id: str, path: str | Path, name: str, *, input_example: Any = None,
                             metadata: Mapping[str, Any] | None = None) -> str:
        """Log a compressed-model file (plan + state dict) as a pyfunc MLflow model; returns its URI.

        For models ``mlflow.pytorch`` cannot serialise (int8): see :mod:`tracking.compressed_model`.
        The model is logged as code (a script that builds :class:`CompressedModel`), not pickled.
        """
        import tempfile

        import mlflow

        from tracking.compressed_model import CODE_PATHS, MODEL_CODE

        previous = mlflow.get_tracking_uri()
        mlflow.set_tracking_uri(self.uri)
        try:
            with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(run_id=run_id, nested=True):
                code = Path(tmp) / "compressed_model_code.py"
                code.write_text(MODEL_CODE)
                info = mlflow.pyfunc.log_model(
                    name=name, python_model=code, artifacts={"model": str(path)},
                    code_paths=CODE_PATHS, input_example=input_example, metadata=dict(metadata or {}),
                    pip_requirements=["torch", "torchvision", "torch-pruning", "tensorly", "numpy"],
                )
        finally:
            mlflow.set_tracking_uri(previous)
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
