"""``python -m rsc.train`` / ``rsc.evaluate``: outputs, exit codes, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import pytest

from rsc import evaluate as evaluate_cli
from rsc import train as train_cli
from tests.conftest import REPO, write_image


def _fail(main, argv, capsys) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in err, err
    return errors[0]


def test_train_then_evaluate_on_a_folder(image_folder, tmp_path, capsys):
    out = tmp_path / "run"
    assert train_cli.main(["--data", str(image_folder), "--model", "mobilenet_v3_small", "--image-size", "32",
                           "--epochs", "1", "--train-ratio", "0.6", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "OA" in printed and str(out) in printed
    for name in ("checkpoint.pt", "metrics.json", "confusion.png", "split.json", "history.json", "summary.json"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["per_class"]) == {"beach", "forest", "harbor"} and len(metrics["confusion"]) == 3
    assert evaluate_cli.main([str(out / "checkpoint.pt"), "--data", str(image_folder), "--no-progress"]) == 0
    assert f"test OA {metrics['oa']:.4f}" in capsys.readouterr().out


def test_training_ends_on_batchnorm_statistics_of_its_final_weights(tmp_path):
    """--bn-batches re-estimates the running statistics after the last epoch; 0 keeps training's averages.
    Same seed, same weights: only the BatchNorm buffers differ, and the report has both validation OAs."""
    import torch

    runs = {}
    for n in (0, 4):
        out = tmp_path / f"bn{n}"
        assert train_cli.main(["--model", "resnet18", "--image-size", "16", "--epochs", "1", "--bn-batches", str(n),
                               "--out", str(out), "--no-progress"]) == 0
        runs[n] = (torch.load(out / "checkpoint.pt", weights_only=False)["state_dict"],
                   json.loads((out / "metrics.json").read_text()))
    (sd0, m0), (sd4, m4) = runs[0], runs[4]
    for k in sd0:
        if k.endswith(("running_mean", "running_var", "num_batches_tracked")):
            continue
        assert torch.equal(sd0[k], sd4[k]), k
    assert not torch.allclose(sd0["bn1.running_mean"], sd4["bn1.running_mean"])
    assert m4["bn_batches"] == 4 and m0["val_oa"] == m0["val_oa_as_trained"]
    assert m4["val_oa_as_trained"] == m0["val_oa_as_trained"] and 0 <= m4["val_oa"] <= 1


def test_repeats_report_mean_and_std(tmp_path, capsys):
    out = tmp_path / "rep"
    assert train_cli.main(["--model", "mobilenet_v3_small", "--image-size", "16", "--epochs", "1",
                           "--repeats", "2", "--out", str(out), "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [r["seed"] for r in summary["runs"]] == [0, 1] and summary["oa_std"] >= 0
    assert (out / "seed0" / "checkpoint.pt").is_file() and (out / "seed1" / "checkpoint.pt").is_file()
    assert "+- " in capsys.readouterr().out
    # the saved split can be reused
    assert train_cli.main(["--model", "mobilenet_v3_small", "--image-size", "16", "--epochs", "1",
                           "--split", str(out / "seed1" / "split.json"), "--out", str(tmp_path / "again"),
                           "--no-progress"]) == 0
    again = json.loads((tmp_path / "again" / "summary.json").read_text())
    assert again["runs"][0]["split_digest"] == summary["runs"][1]["split_digest"]


def test_corrupt_image_is_named_in_the_report(image_folder, tmp_path, capsys):
    (image_folder / "forest" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    assert train_cli.main(["--data", str(image_folder), "--model", "mobilenet_v3_small", "--image-size", "16",
                           "--epochs", "1", "--out", str(tmp_path / "o"), "--no-progress"]) == 0
    assert "skipped 1 unreadable image(s): forest/broken.jpg" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--data", "/no/such/folder"], "does not exist"),
    (["--model", "resnet19"], "unknown model 'resnet19'"),
    (["--train-ratio", "0.005", "--image-size", "16"], "no training image"),
    (["--dataset", "imagenet", "--data", "."], "unknown dataset"),
    (["--image-size", "8"], "at least 16"),
    (["--jitter", "2"], "jitter"),
    (["--bn-batches", "-1", "--image-size", "16"], "--bn-batches must be >= 0"),
    (["--device", "gpu", "--image-size", "16"], "unknown device 'gpu'"),
    (["--device", "cuda:99", "--image-size", "16"], "device 'cuda:99'"),
])
def test_train_bad_input_is_one_line_exit_2(argv, message, capsys, tmp_path):
    err = _fail(train_cli.main, argv + ["--epochs", "1", "--no-progress", "--out", str(tmp_path)], capsys)
    assert message in err


def test_train_empty_folder_and_class_without_images(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert "empty" in _fail(train_cli.main, ["--data", str(tmp_path / "empty")], capsys)
    write_image(tmp_path / "d" / "beach" / "a.jpg")
    (tmp_path / "d" / "forest").mkdir()
    assert "hold no images: forest" in _fail(train_cli.main, ["--data", str(tmp_path / "d")], capsys)


def test_evaluate_refuses_mismatched_classes_and_bad_checkpoints(image_folder, tmp_path, capsys):
    out = tmp_path / "run"
    assert train_cli.main(["--data", str(image_folder), "--model", "mobilenet_v3_small", "--image-size", "16",
                           "--epochs", "1", "--out", str(out), "--no-progress"]) == 0
    other = tmp_path / "other"
    for name in ("beach", "desert", "harbor"):
        write_image(other / name / "a.jpg")
        write_image(other / name / "b.jpg", seed=3)
    err = _fail(evaluate_cli.main, [str(out / "checkpoint.pt"), "--data", str(other)], capsys)
    assert "do not match" in err and "only in checkpoint: forest" in err and "only in dataset: desert" in err
    assert "not found" in _fail(evaluate_cli.main, [str(tmp_path / "none.pt")], capsys)
    (tmp_path / "junk.pt").write_bytes(b"junk")
    assert "cannot read checkpoint" in _fail(evaluate_cli.main, [str(tmp_path / "junk.pt")], capsys)
    write_image(image_folder / "beach" / "extra.jpg", seed=4242)  # the split can no longer be rebuilt
    err = _fail(evaluate_cli.main, [str(out / "checkpoint.pt"), "--data", str(image_folder)], capsys)
    assert "split digest" in err
    assert evaluate_cli.main([str(out / "checkpoint.pt"), "--data", str(image_folder), "--subset", "all",
                              "--no-progress"]) == 0


def test_help_is_fast_and_lists_flags():
    for module in ("rsc.train", "rsc.evaluate"):
        result = subprocess.run([sys.executable, "-X", "importtime", "-m", module, "--help"], cwd=REPO,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0 and "--data" in result.stdout
        assert "torch " not in result.stderr.replace("|", " ").split()  # torch is not imported for --help
        assert not any(line.rstrip().endswith(" torch") for line in result.stderr.splitlines())


# What the final stage of a search shows without quiet_third_party: torch rebuilding int8 weights,
# MLflow creating its database and downloading artifacts (it reloads a logged model) - and ours.
_NOISY_MAIN = """
import sys
import warnings
from pathlib import Path


def main():
    import mlflow
    import torch
    from mlflow import MlflowClient

    tmp = Path(sys.argv[1])
    torch.load(tmp.parent / "int8.pt", weights_only=True)
    client = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    run = client.create_run(client.create_experiment("e", artifact_location=(tmp / "art").as_uri()))
    client.log_text(run.info.run_id, "x", "d/a.txt")
    mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="d", dst_path=str(tmp / "dl"),
                                        tracking_uri=client.tracking_uri)
    warnings.warn("our own warning", UserWarning)
    warnings.warn_explicit("an unknown torch warning", UserWarning, "torch/_utils.py", 1, module="torch._utils")
    return 0


if sys.argv[2] == "cli":
    from rsc.cli import run_cli

    sys.exit(run_cli(main))
sys.exit(main())
"""
_KNOWN_NOISE = ("TypedStorage is deprecated", "other quantized tensor creation functions",
                "INFO mlflow", "Creating initial MLflow database tables", "Downloading artifacts")


def test_run_cli_silences_known_third_party_noise_only(tmp_path):
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation, here where the int8 tensor is made
        q = torch.quantize_per_channel(torch.randn(4, 2), torch.ones(4), torch.zeros(4, dtype=torch.long), 0,
                                       torch.qint8)
    torch.save({"w": q}, tmp_path / "int8.pt")
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_LOGGING_LEVEL", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "PYTHONWARNINGS")}
    err = {}
    for mode in ("plain", "cli"):
        (tmp_path / mode).mkdir()
        result = subprocess.run([sys.executable, "-c", _NOISY_MAIN, str(tmp_path / mode), mode], cwd=REPO, env=env,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        err[mode] = result.stderr.replace("\n", " ")  # long warnings may wrap
    for noise in _KNOWN_NOISE:
        assert noise in err["plain"], noise  # else the check below proves nothing
        assert noise not in err["cli"], err["cli"]
    for real in ("UserWarning: our own warning", "UserWarning: an unknown torch warning"):
        assert real in err["plain"] and real in err["cli"], err["cli"]


def test_quiet_third_party_is_idempotent_and_a_user_setting_wins(monkeypatch):
    import logging

    import mlflow  # noqa: F401 - already imported: its logger level is set directly

    from rsc.cli import quiet_third_party

    monkeypatch.setenv("MLFLOW_LOGGING_LEVEL", "ERROR")
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "unset")
    monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")  # recorded, so undone after the test
    logger = logging.getLogger("mlflow")
    level = logger.level
    try:
        with warnings.catch_warnings():
            quiet_third_party()
            once = list(warnings.filters)
            quiet_third_party()
            assert warnings.filters == once
        assert logger.level == logging.ERROR
        assert os.environ["MLFLOW_LOGGING_LEVEL"] == "ERROR"
        assert os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "false"
    finally:
        logger.setLevel(level)
