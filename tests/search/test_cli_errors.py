"""Bad input fails fast, on one line, with exit code 2 - before any training where possible."""

from __future__ import annotations

import socket
import sqlite3
import time

import pytest

from tests.search.conftest import tiny_config

TINY = ["--image-size", "32", "--methods", "sparse", "--objectives", "accuracy,nonzero_params", "--trials", "2", "--fidelity-epochs", "1", "--final-epochs", "0",
        "--base-epochs", "1", "--no-progress", "--sampler", "random"]


def _main(argv, capsys):
    from search.run import main

    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err[-1] if err else ""


def test_help_is_fast():
    import subprocess
    import sys

    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "search.run", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--budget" in out.stdout and "budget grammar" in out.stdout
    assert time.perf_counter() - t < 10


@pytest.mark.parametrize(
    "extra, pattern",
    [
        (["--budget", "params<<5"], "budget grammar"),
        (["--budget", "flops<5M"], "unknown budget metric 'flops'"),
        (["--budget", "params<1M", "--budget", "params>2M"], "conflict"),
        (["--budget", "params<5M", "--methods", "tucker,teleport"], "unknown method 'teleport'"),
        (["--budget", "params<5M", "--objectives", "accuracy,flops"], "unknown objective 'flops'"),
        (["--budget", "params<5M", "--trials", "0"], "trials must be >= 1"),
        (["--budget", "params<5M", "--depth-bins", "-1"], "depth_bins must be >= 0"),
        (["--budget", "params<5M", "--bn-batches", "-2"], "bn_batches must be >= 0"),
        (["--budget", "params<5M", "--min-accuracy", "1.5"], "min_accuracy must lie in [0, 1)"),
        (["--budget", "params<5M", "--min-target", "0"], "min_target must lie in (0, 1]"),
        (["--budget", "params<5M", "--device", "gpu"], "unknown device 'gpu'"),
        (["--budget", "params<5M", "--device", "cuda:99"], "device 'cuda:99'"),
        (["--budget", "params<5M", "--workers", "2"], "need --backend ray"),
        (["--budget", "params<5M", "--backend", "ray", "--ray-address", "nowhere"], "expected host:port"),
        (["--budget", "params<5M", "--backend", "ray", "--trial-cpus", "0"], "trial_cpus must be > 0"),
        (["--budget", "params<5M", "--target", "tpu"], "target 'tpu': unknown device 'tpu'"),
        (["--budget", "params<5M", "--target", "cpu:speed=9"], "unknown key 'speed'; allowed keys: threads"),
        (["--budget", "params<5M", "--target", "cuda:99"], "target cuda:99: "),
        (["--budget", "params<5M", "--target", "cpu:threads=4096"], "threads=4096, but this machine has"),
        (["--budget", "params<5M", "--methods", "sparse,quant", "--target", "cpu:runtime=onnxruntime"],
         "cannot time int8 models"),
        (["--budget", "params<5M", "--target", "ray:target-jetson"], "pass --ray-address"),
        (["--budget", "params<5M", "--allocate", "latency"], "--allocate latency needs a latency table"),
        (["--budget", "params<5M", "--allocate-damage", "sensitivity"], "--allocate-damage needs --allocate COST"),
    ],
)
def test_bad_input_one_line(extra, pattern, tmp_path, capsys):
    code, line = _main(TINY + ["--out", str(tmp_path)] + extra, capsys)
    assert code == 2
    assert line.startswith("error: ") and pattern in line


@pytest.mark.parametrize("argv, pattern", [(["--targets", "everywhere"], "invalid choice: 'everywhere'"),
                                            (["--allocate", "joules"], "invalid choice: 'joules'"),
                                            (["--allocate-damage", "pain"], "invalid choice: 'pain'"),
                                            (["--trials", "many"], "invalid int value: 'many'"),
                                            (["--no-such-flag"], "unrecognized arguments: --no-such-flag")])
def test_bad_flags_are_one_line_too(argv, pattern, capsys):
    """argparse's own errors: one line and exit code 2, not the usage block."""
    from search.run import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1
    assert err[0].startswith("error: ") and pattern in err[0]


def test_unreachable_tracking_server_fails_before_training(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RSC_CACHE_DIR", str(tmp_path / "cache"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    code, line = _main(TINY + ["--out", str(tmp_path), "--budget", "nonzero_params<60%", "--tracking-uri", uri], capsys)
    assert code == 2 and uri in line
    assert not (tmp_path / "cache" / "base-models").exists()


def test_unreachable_ray_cluster_fails_before_training(tmp_path, capsys, monkeypatch):
    import search.base_model

    monkeypatch.setattr(search.base_model, "obtain_base_checkpoint", lambda **kw: pytest.fail("trained anyway"))
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, line = _main(TINY + ["--budget", "nonzero_params<50%", "--out", str(tmp_path), "--backend", "ray",
                               "--ray-address", f"127.0.0.1:{port}"], capsys)
    assert code == 2 and f"cannot reach the Ray cluster at 127.0.0.1:{port}" in line


def test_budget_below_reach_fails_before_training(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RSC_CACHE_DIR", str(tmp_path / "cache"))
    code, line = _main(TINY + ["--out", str(tmp_path), "--budget", "nonzero_params<0.01%"], capsys)
    assert code == 2 and "below what methods sparse can reach" in line
    assert not (tmp_path / "cache" / "base-models").exists()


def test_corrupt_storage(tmp_path):
    from rsc.errors import UserError
    from search.run import run

    cfg = tiny_config(tmp_path)
    cfg.study_dir.mkdir(parents=True)
    (cfg.study_dir / "optuna.db").write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(UserError, match="corrupt"):
        run(cfg)


def test_locked_storage(tmp_path):
    import optuna

    from rsc.errors import UserError
    from search.run import run

    cfg = tiny_config(tmp_path, storage_timeout=0.5)
    cfg.study_dir.mkdir(parents=True)
    optuna.create_study(storage=cfg.storage_url, study_name="other")
    lock = sqlite3.connect(cfg.study_dir / "optuna.db")
    lock.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(UserError, match="locked"):
            run(cfg)
    finally:
        lock.rollback()
        lock.close()


def test_existing_study_needs_resume(tmp_path):
    import optuna

    from search.engines.optuna_engine import StudyExists
    from search.run import run

    cfg = tiny_config(tmp_path)
    cfg.study_dir.mkdir(parents=True)
    study = optuna.create_study(storage=cfg.storage_url, study_name=cfg.study_name, directions=["maximize", "minimize"])
    study.enqueue_trial({})
    study.ask()
    with pytest.raises(StudyExists, match="--resume"):
        run(cfg)
