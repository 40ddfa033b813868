"""A search killed with SIGKILL resumes with --resume and loses no completed trial."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time

from tests.search.conftest import ROOT, child_env


def _states(db) -> dict[int, str]:
    if not db.exists():
        return {}
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            return dict(con.execute("SELECT number, state FROM trials").fetchall())
    except sqlite3.OperationalError:
        return {}


def test_resume_after_kill(tmp_path, cache_dir):
    out = tmp_path / "runs"
    args = [sys.executable, "-m", "search.run", "--image-size", "32", "--methods", "sparse", "--objectives", "accuracy,nonzero_params", "--budget", "nonzero_params<60%",
            "--trials", "4", "--fidelity-epochs", "1", "--final-epochs", "0", "--final-max", "0", "--base-epochs", "1",
            "--sampler", "random", "--out", str(out), "--study", "killme", "--no-progress", "--no-latency"]
    db = out / "killme" / "optuna.db"
    proc = subprocess.Popen(args, cwd=ROOT, env=child_env(cache_dir), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            if sum(s == "COMPLETE" for s in _states(db).values()) >= 2:
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    before = _states(db)
    completed_before = {n for n, s in before.items() if s == "COMPLETE"}
    assert len(completed_before) >= 2 and len(completed_before) < 4

    res = subprocess.run(args + ["--resume"], cwd=ROOT, env=child_env(cache_dir), capture_output=True, text=True,
                         timeout=400)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resuming study killme" in res.stderr
    after = _states(db)
    assert completed_before <= {n for n, s in after.items() if s == "COMPLETE"}  # nothing lost
    finished = [n for n, s in after.items() if s in ("COMPLETE", "PRUNED")]
    interrupted = [n for n, s in after.items() if s == "FAIL"]
    assert len(finished) == 4  # exactly --trials finished; the killed one does not count
    assert len(interrupted) <= 1 and "RUNNING" not in after.values()
    assert "MLflow:" in res.stdout and "parent run" in res.stdout
