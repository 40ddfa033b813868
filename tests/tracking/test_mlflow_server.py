"""A search against a real ``mlflow server``: read the runs back through REST, render the UI headless."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = next((p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if Path(p).exists()), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return json.loads(resp.read())


@pytest.fixture
def mlflow_server(tmp_path):
    port = _free_port()
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    log = open(tmp_path / "server.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", (tmp_path / "server-artifacts").as_uri(), "--workers", "1"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                with urllib.request.urlopen(uri + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                log.flush()
                pytest.fail(f"mlflow server did not start: {(tmp_path / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield uri
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)  # our own process group only
            proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def test_search_against_server_rest_and_ui(tmp_path, mlflow_server):
    from search.run import run
    from tests.search.conftest import tiny_config

    cfg = tiny_config(tmp_path, trials=2, tracking_uri=mlflow_server, study="served", latency=False, final_max=0)
    result = run(cfg)
    api = f"{mlflow_server}/api/2.0/mlflow"

    exp = _get(f"{api}/experiments/get-by-name?experiment_name={cfg.experiment}")["experiment"]
    runs = _post(f"{api}/runs/search", {"experiment_ids": [exp["experiment_id"]], "max_results": 100}).get("runs", [])
    by_name = {r["info"]["run_name"]: r for r in runs}
    assert "served" in by_name and {"trial-0", "trial-1"} <= set(by_name)
    parent = by_name["served"]
    params = {p["key"]: p["value"] for p in parent["data"]["params"]}
    assert params["budget"] == "nonzero_params<60%" and params["sampler"] == "random" and "split_hash" in params
    front = _post(f"{api}/runs/search", {"experiment_ids": [exp["experiment_id"]],
                                          "filter": "tags.pareto = 'true'"}).get("runs", [])
    assert {r["info"]["run_id"] for r in front} == {r["mlflow_run_id"] for r in result.front}
    arts = _get(f"{api}/artifacts/list?run_id={result.parent_run_id}&path=pareto")
    assert {"pareto/front.csv", "pareto/front.html", "pareto/front.png"} <= {f["path"] for f in arts.get("files", [])}

    if CHROMIUM is None:
        pytest.skip("chromium not installed (/usr/bin/chromium); .ci/run installs it")
    url = f"{mlflow_server}/#/experiments/{exp['experiment_id']}/runs/{result.parent_run_id}"
    profile = tmp_path / "chromium-profile"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--virtual-time-budget=20000",
           "--window-size=1400,1000", "--dump-dom", url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    dom = out.stdout
    assert "<html" in dom.lower() and "mlflow" in dom.lower()
    assert "served" in dom, "the parent run's name did not render"
    shot = tmp_path / "runs.png"
    subprocess.run(cmd[:-2] + [f"--screenshot={shot}", url], capture_output=True, timeout=120)
    assert shot.exists() and shot.stat().st_size > 10_000
    shutil.rmtree(profile, ignore_errors=True)
