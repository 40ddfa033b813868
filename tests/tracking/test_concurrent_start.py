"""Several drivers starting at the same moment on one NEW sqlite store (MLflow's or Optuna's).

Both create their schema on first use without serialising it across processes: before the file
lock, three processes released together on a fresh ``mlflow.db`` failed 5 times in 5 (``duplicate
column name``, ``table _alembic_tmp_... already exists``, alembic ``Online migration expected to
match one row``), four on a fresh ``optuna.db`` 2 times in 3 (``table ... already exists``,
``UNIQUE constraint failed: alembic_version``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
N = 3

# Imports first, then wait for the "go" file, so that every process opens the store at once.
WORKER = r"""
import json, os, sys, time
kind, uri, folder, me = sys.argv[1:5]
if kind == "mlflow":
    import mlflow
    from tracking.mlflow_log import Tracker
else:
    import optuna
    from search.engines.optuna_engine import OptunaEngine
open(os.path.join(folder, f"ready-{me}"), "w").close()
while not os.path.exists(os.path.join(folder, "go")):
    time.sleep(0.002)
if kind == "mlflow":
    tracker = Tracker(uri=uri, experiment="together")
    run_id = tracker.start_parent(f"driver-{me}", params={"me": me})
    tracker.end_parent(run_id)
    print(json.dumps({"run_id": run_id, "experiment_id": tracker.experiment_id}))
else:
    engine = OptunaEngine(storage=uri, study_name=f"study-{me}", directions=["maximize", "minimize"],
                          sampler="random", seed=0)
    print(json.dumps({"study": engine.study.study_name}))
"""


def _start_together(kind: str, uri: str, folder: Path) -> list[dict]:
    env = {**__import__("os").environ, "PYTHONPATH": str(ROOT), "MLFLOW_LOGGING_LEVEL": "WARNING"}
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, kind, uri, str(folder), str(i)], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(N)]
    try:
        deadline = time.monotonic() + 60
        while len(list(folder.glob("ready-*"))) < N:
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                pytest.fail("workers did not get ready: " + " | ".join(p.communicate(timeout=30)[1][-800:]
                                                                        for p in procs if p.poll() is not None))
            time.sleep(0.05)
        (folder / "go").touch()
        outs = [p.communicate(timeout=60) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    failed = [f"worker {i} (rc {p.returncode}): {err.strip()[-1500:]}" for i, (p, (_, err)) in enumerate(zip(procs, outs))
              if p.returncode != 0]
    assert not failed, "\n".join(failed)
    return [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]


def test_trackers_start_together_on_a_new_sqlite_store(tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    results = _start_together("mlflow", uri, tmp_path)
    assert len({r["experiment_id"] for r in results}) == 1  # one experiment, not one per driver
    runs = MlflowClient(tracking_uri=uri).search_runs([results[0]["experiment_id"]])
    assert {r.info.run_id for r in runs} == {r["run_id"] for r in results}


def test_optuna_engines_start_together_on_a_new_sqlite_storage(tmp_path):
    import optuna

    uri = f"sqlite:///{tmp_path / 'optuna.db'}"
    results = _start_together("optuna", uri, tmp_path)
    assert {s.study_name for s in optuna.get_all_study_summaries(uri)} == {r["study"] for r in results}
