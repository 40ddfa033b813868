"""A real two-node Ray cluster on loopback: trials on both nodes, a killed worker, a lost node, no shared disk,
and joins that fail fast (a silent address, a node on other code).

Every node is started by this test (``ray.cluster_utils.Cluster``, one CPU each, at 127.0.0.2: Ray
rewrites 127.0.0.1 to the host's interface address) and stopped by it; nothing else is touched.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from search.request import trial_seed
from tests.conftest import write_image
from tests.search.conftest import ROOT, child_env, tiny_config

ray = pytest.importorskip("ray")

LOOPBACK = "127.0.0.2"
HEALTH = {"health_check_period_ms": 500, "health_check_timeout_ms": 500, "health_check_failure_threshold": 4}


def _scenes(root: Path) -> Path:
    """3 classes x 20 generated 40 px images: a folder the nodes never read (the data is shipped)."""
    for c, name in enumerate(("beach", "forest", "harbor")):
        for i in range(20):
            write_image(root / name / f"{name}{i:02d}.png", seed=1000 * c + i)
    return root


@pytest.fixture
def cluster(tmp_path, monkeypatch, cache_dir):
    """Head + one more node, 1 CPU each, with their own rsc cache (nothing the driver wrote)."""
    from ray.cluster_utils import Cluster

    node_cache = tmp_path / "node-cache"
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    monkeypatch.setenv("RSC_TEST_MARKERS", str(tmp_path / "markers"))
    monkeypatch.setenv("RSC_TEST_TRIAL_SLEEP", "2")
    monkeypatch.setenv("RSC_CACHE_DIR", str(node_cache))  # what the nodes inherit...
    temp_dir = tempfile.mkdtemp(prefix="rsc-ray-", dir="/tmp")  # short: Ray's socket paths have a length limit
    common = dict(num_cpus=1, node_ip_address=LOOPBACK, object_store_memory=100 * 1024**2)
    c = Cluster(initialize_head=True, connect=False, head_node_args=dict(
        **common, include_dashboard=False, temp_dir=temp_dir, _system_config=HEALTH))
    try:
        second = c.add_node(**common)
        c.wait_for_nodes()
        monkeypatch.setenv("RSC_CACHE_DIR", str(cache_dir))  # ...and the driver's own
        yield c, c.head_node, second, node_cache
    finally:
        if ray.is_initialized():
            ray.shutdown()
        c.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _marks(folder: Path) -> list[dict]:
    out = []
    for f in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            out.append(json.loads(f.read_text()))
        except ValueError:  # half written
            pass
    return out


def _when(folder: Path, predicate, action) -> threading.Thread:
    """Run ``action(mark)`` once, for the first trial mark that satisfies ``predicate``."""
    def watch():
        deadline = time.time() + 300
        while time.time() < deadline:
            for mark in _marks(folder):
                if predicate(mark):
                    action(mark)
                    return
            time.sleep(0.1)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def _search(tmp_path, c, **changes):
    from search.run import run
    from tests.search.cluster_trials import marked_trial

    config = tiny_config(tmp_path, data=str(_scenes(tmp_path / "scenes")), trials=4, backend="ray",
                         ray_address=c.address, workers=2, trial_cpus=1, final_epochs=0, ray_timeout=60, **changes)
    return config, run(config, trial_fn=marked_trial)


@pytest.mark.timeout(600)
def test_trials_run_on_both_nodes_and_a_killed_worker_is_retried(tmp_path, cluster):
    import optuna
    from mlflow import MlflowClient

    c, head, second, node_cache = cluster
    markers = tmp_path / "markers"
    killed = {}

    def kill(mark):
        killed.update(mark)
        os.kill(mark["pid"], signal.SIGKILL)

    watcher = _when(markers, lambda m: True, kill)
    config, result = _search(tmp_path, c)
    watcher.join(timeout=1)
    assert killed, "no trial started"
    assert not ray.is_initialized()
    assert result.counts["finished"] == 4 and result.counts["complete"] == 4 and not result.counts.get("lost")

    study = optuna.load_study(study_name=config.study_name, storage=config.storage_url)
    assert len(study.trials) == 4 and all(t.state.name == "COMPLETE" for t in study.trials)  # counted once
    assert {t.user_attrs["worker"]["node_id"] for t in study.trials} == {head.node_id, second.node_id}
    victim = next(t for t in study.trials if trial_seed(config.seed, t.number) == killed["seed"])
    assert victim.user_attrs["worker"]["pid"] != killed["pid"]  # finished by another worker process

    client = MlflowClient(tracking_uri=result.tracking_uri)
    run = client.get_run(victim.user_attrs["mlflow_run_id"])
    assert run.data.tags["attempts"] == "2" and "WorkerCrashedError" in run.data.tags["lost_1"]
    assert run.data.tags["state"] == "COMPLETE" and run.info.status == "FINISHED"

    # no shared disk: every trial read the data set and the base model from its node's own cache
    marks = _marks(markers)
    assert len(marks) == 5  # 4 trials + the retried one
    for mark in marks:
        for key in ("data_file", "base_checkpoint"):
            assert Path(mark[key]).parent == node_cache / "shipped", mark


@pytest.mark.timeout(600)
def test_search_finishes_when_a_node_is_removed_mid_search(tmp_path, cluster):
    import optuna

    c, head, second, _ = cluster
    removed = {}

    def remove(mark):
        removed.update(mark)
        c.remove_node(second, allow_graceful=False)

    watcher = _when(tmp_path / "markers", lambda m: m["node_id"] == second.node_id, remove)
    config, result = _search(tmp_path, c)
    watcher.join(timeout=1)
    assert removed, "no trial ran on the second node"
    assert result.counts["finished"] == 4 and result.counts["complete"] == 4

    study = optuna.load_study(study_name=config.study_name, storage=config.storage_url)
    assert len(study.trials) == 4 and all(t.state.name == "COMPLETE" for t in study.trials)
    victim = next(t for t in study.trials if trial_seed(config.seed, t.number) == removed["seed"])
    assert victim.user_attrs["worker"]["node_id"] == head.node_id  # rerun on the node that was left


@pytest.mark.timeout(120)
def test_an_address_that_answers_but_is_no_cluster_fails_fast(tmp_path, cache_dir):
    """A port that accepts connections and never speaks Ray: one line, exit 2, within --ray-timeout."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held = []
    stop = threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "search.run", "--backend", "ray", "--ray-address",
                               f"127.0.0.1:{server.getsockname()[1]}", "--ray-timeout", "8", "--trials", "1",
                               "--out", str(tmp_path / "runs"), "--no-progress"],
                              capture_output=True, text=True, env=child_env(cache_dir), cwd=ROOT, timeout=100)
        elapsed = time.perf_counter() - t0
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        server.close()
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot join the Ray cluster at 127.0.0.1:"), lines
    assert "Traceback" not in proc.stderr and elapsed < 60


@pytest.mark.timeout(300)
def test_a_node_running_other_code_is_refused_before_any_training(tmp_path, monkeypatch):
    from ray.cluster_utils import Cluster

    from search.executors import RayUnavailable, code_version, probe_cluster

    other = tmp_path / "other"
    for package in ("rsc", "costs", "spaces", "search", "tracking"):
        shutil.copytree(ROOT / package, other / package, ignore=shutil.ignore_patterns("__pycache__"))
    with open(other / "spaces" / "base.py", "a") as f:
        f.write("\n# an edit the driver does not have\n")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    monkeypatch.setenv("PYTHONPATH", str(other))
    monkeypatch.chdir(tmp_path)  # Ray puts a driver's working directory on its workers' path
    temp_dir = tempfile.mkdtemp(prefix="rsc-ray-", dir="/tmp")
    c = Cluster(initialize_head=True, connect=False, head_node_args=dict(
        num_cpus=1, node_ip_address=LOOPBACK, object_store_memory=80 * 1024**2, include_dashboard=False,
        temp_dir=temp_dir))
    try:
        with pytest.raises(RayUnavailable, match=rf"runs rscompress .*, this driver {re.escape(code_version())}: install"):
            probe_cluster(c.address, timeout=90)
    finally:
        c.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
