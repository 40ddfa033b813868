"""`ray job submit` against a local head: a search submitted with the Jobs SDK runs its trials on the job's
cluster (``--ray-address auto``) from an uploaded copy of the repository, and bad input fails as one line.

The head (with its dashboard, which serves the Jobs API) is started by this test at 127.0.0.2 (Ray rewrites
127.0.0.1 to the host's interface address), on free ports and a private temp dir, and stopped by it.
"""

from __future__ import annotations

import shlex
import shutil
import socket
import sys
import tempfile
import time
import urllib.request

import pytest

from tests.search.conftest import ROOT

ray = pytest.importorskip("ray")
pytest.importorskip("ray.dashboard")  # ray[default]: the dashboard serves the Jobs API

LOOPBACK = "127.0.0.2"
# what the upload must not carry (Ray also skips what .gitignore names); the repository itself is small
EXCLUDES = [".venv", ".git", "runs", "mlruns", "benchmarks/results", "**/__pycache__", "*.egg-info",
            ".pytest_cache", ".ruff_cache"]
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def _wait_for_jobs_api(url: str, timeout: float = 90.0) -> None:
    deadline, error = time.time() + timeout, None
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/api/jobs/", timeout=3) as answer:
                if answer.status == 200:
                    return
        except OSError as exc:
            error = exc
        time.sleep(0.5)
    raise AssertionError(f"the dashboard's Jobs API at {url} did not answer within {timeout:g} s: {error}")


@pytest.fixture(scope="module")
def head():
    """A one-node Ray head (2 CPUs) with its dashboard, shared by this module's tests; yields the Jobs API's URL."""
    from ray.cluster_utils import Cluster

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_AUTH_MODE", "disabled")  # the same for the head and this client
        mp.setenv("RAY_USAGE_STATS_ENABLED", "0")
        yield from _start_head(Cluster)


def _start_head(Cluster):
    temp_dir = tempfile.mkdtemp(prefix="rsc-rj-", dir="/tmp")  # short: Ray's socket paths have a length limit
    port = _free_port()
    c = None
    try:
        c = Cluster(initialize_head=True, connect=False, head_node_args={
            "num_cpus": 2, "node_ip_address": LOOPBACK, "object_store_memory": 100 * 1024**2, "temp_dir": temp_dir,
            "include_dashboard": True, "dashboard_host": LOOPBACK, "dashboard_port": port,
            "dashboard_agent_listen_port": _free_port()})
        url = f"http://{LOOPBACK}:{port}"
        _wait_for_jobs_api(url)
        yield url
    finally:
        if c is not None:
            c.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _search_argv(tmp_path, budget: str) -> list[str]:
    return [sys.executable, "-m", "search.run", "--backend", "ray", "--ray-address", "auto", "--workers", "2",
            "--trial-cpus", "1", "--image-size", "32", "--methods", "sparse", "--budget", budget,
            "--objectives", "accuracy,nonzero_params", "--trials", "3", "--fidelity-epochs", "1",
            "--final-epochs", "1", "--final-max", "1", "--base-epochs", "1", "--sampler", "random",
            "--no-progress", "--study", "job", "--out", str(tmp_path / "runs"),
            "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--no-log-models"]


def _submit_and_wait(url: str, argv: list[str], cache, timeout: float = 400.0):
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(url)
    job = client.submit_job(
        entrypoint=shlex.join(argv),
        runtime_env={"working_dir": str(ROOT), "excludes": EXCLUDES,
                     "env_vars": {"RSC_CACHE_DIR": str(cache), "MLFLOW_ENABLE_ASYNC_LOGGING": "false",
                                  "RAY_USAGE_STATS_ENABLED": "0"}})
    deadline = time.time() + timeout
    while True:
        status = str(client.get_job_status(job).value)
        if status in TERMINAL:
            break
        if time.time() > deadline:
            client.stop_job(job)
            raise AssertionError(f"job {job} still {status} after {timeout:g} s:\n{client.get_job_logs(job)[-6000:]}")
        time.sleep(2)
    return status, client.get_job_info(job), client.get_job_logs(job)


@pytest.mark.timeout(600)
def test_a_search_submitted_as_a_ray_job_runs_its_trials_on_the_cluster(tmp_path, head, cache_dir):
    from mlflow import MlflowClient

    status, info, logs = _submit_and_wait(head, _search_argv(tmp_path, "nonzero_params<60%"), cache_dir)
    assert status == "SUCCEEDED", f"job {status} ({info.message}):\n{logs[-6000:]}"
    # the probe joined the job's cluster and found the uploaded code on its node; the trials ran there
    assert "ray cluster at auto: 1 node(s), 2 CPUs" in logs and "every node on this code" in logs, logs[-6000:]
    assert "trials run on ray at auto (2 CPUs" in logs, logs[-6000:]
    assert "Traceback" not in logs, logs[-6000:]

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("rsc-search")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("kind") == "search"]
    assert len(parents) == 1 and parents[0].info.run_name == "job", [(r.info.run_name, r.data.tags) for r in runs]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(children) == 3, [(r.info.run_name, r.data.tags.get("kind")) for r in runs]
    assert all(r.info.status == "FINISHED" for r in children), [r.info.status for r in children]


@pytest.mark.timeout(300)
def test_a_job_with_an_impossible_budget_fails_with_one_line(tmp_path, head, cache_dir):
    status, info, logs = _submit_and_wait(head, _search_argv(tmp_path, "params<1"), cache_dir, timeout=200)
    assert status == "FAILED", f"job {status}:\n{logs[-6000:]}"
    if getattr(info, "driver_exit_code", None) is not None:
        assert info.driver_exit_code == 2, (info, logs[-6000:])
    errors = [ln for ln in logs.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "budget params<1 is below what methods sparse can reach" in errors[0], logs[-6000:]
    assert "Traceback" not in logs, logs[-6000:]
