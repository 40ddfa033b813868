"""A tracking failure anywhere is one TrackingError naming the URI and the operation - on the command
line one ``error:`` line and exit code 2, never an MLflow traceback."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tracking.errors import TrackingError
from tracking.mlflow_log import Tracker, check_tracking_uri

ROOT = Path(__file__).resolve().parents[2]
GARBAGE = b"this is not a database at all" * 100


class _FakeMlflow(BaseHTTPRequestHandler):
    """Just enough of an MLflow server for a Tracker to open an existing experiment."""

    def do_GET(self):  # noqa: N802 - http.server's name
        if self.path.startswith("/api/2.0/mlflow/experiments/get-by-name"):
            body = json.dumps({"experiment": {"experiment_id": "7", "name": "t", "artifact_location": "/nowhere",
                                              "lifecycle_stage": "active"}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            self.send_error(404)

    def log_message(self, *args):  # quiet
        pass


def test_server_gone_mid_use_names_the_uri(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail now, not after MLflow's backoff
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeMlflow)
    uri = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        tracker = Tracker(uri=uri, experiment="t")
        assert tracker.experiment_id == "7"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    with pytest.raises(TrackingError) as info:
        tracker.start_parent("study", params={"a": 1})
    message = str(info.value)
    assert uri in message and "start_parent" in message and "\n" not in message
    with pytest.raises(TrackingError, match="log_metrics"):
        tracker.log_metrics("some-run", {"x": 1.0})


def test_unused_port_at_open(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        uri = f"http://127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(TrackingError, match=uri.replace(".", r"\.")):
        Tracker(uri=uri, experiment="t")


def test_interrupts_and_bugs_are_not_tracking_errors(tmp_path):
    tracker = Tracker(uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="t")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    def buggy(*args, **kwargs):
        raise TypeError("a bug of ours")

    tracker.client.create_run = interrupted
    with pytest.raises(KeyboardInterrupt):
        tracker.start_trial("parent", 0)
    tracker.client.create_run = buggy
    with pytest.raises(TypeError, match="a bug of ours"):
        tracker.start_trial("parent", 0)


def test_corrupt_sqlite_database(tmp_path):
    db = tmp_path / "mlflow.db"
    db.write_bytes(GARBAGE)
    uri = f"sqlite:///{db}"
    with pytest.raises(TrackingError, match="corrupt") as info:
        check_tracking_uri(uri)
    assert uri in str(info.value)
    with pytest.raises(TrackingError, match="corrupt") as info:
        Tracker(uri=uri, experiment="t")
    assert uri in str(info.value)


def test_database_broken_mid_use(tmp_path):
    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    tracker = Tracker(uri=uri, experiment="t", artifact_location=(tmp_path / "art").as_uri())
    parent = tracker.start_parent("study", params={"a": 1})
    db.write_bytes(GARBAGE)
    with pytest.raises(TrackingError, match="start_trial") as info:
        tracker.start_trial(parent, 0)
    assert uri in str(info.value)


def test_unwritable_store(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    uri = f"sqlite:///{blocker / 'mlflow.db'}"
    with pytest.raises(TrackingError, match="a-file"):
        Tracker(uri=uri, experiment="t")


def test_cli_corrupt_tracking_database_is_one_line(tmp_path):
    from tests.search.conftest import child_env

    db = tmp_path / "track" / "mlflow.db"
    db.parent.mkdir()
    db.write_bytes(GARBAGE)
    uri = f"sqlite:///{db}"
    args = [sys.executable, "-m", "search.run", "--out", str(tmp_path / "out"), "--budget", "nonzero_params<60%",
            "--tracking-uri", uri, "--image-size", "32", "--methods", "sparse", "--objectives",
            "accuracy,nonzero_params", "--trials", "2", "--fidelity-epochs", "1", "--final-epochs", "0",
            "--base-epochs", "1", "--no-progress", "--sampler", "random"]
    res = subprocess.run(args, cwd=ROOT, env=child_env(tmp_path / "cache"), capture_output=True, text=True,
                         timeout=120)
    err = res.stderr.strip().splitlines()
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr and "Traceback" not in res.stdout
    assert len(err) == 1 and err[0].startswith("error: ") and uri in err[0] and "corrupt" in err[0], res.stderr
    assert not (tmp_path / "cache" / "base-models").exists()  # failed before any training
