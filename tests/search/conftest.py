from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UCM = ROOT.parent / "shared" / "datasets" / "UCMerced_LandUse"


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One rsc cache for the whole session, so the tiny base model is trained once."""
    path = tmp_path_factory.mktemp("rsc-cache")
    return path


@pytest.fixture(autouse=True)
def _isolated_cache(cache_dir, monkeypatch):
    monkeypatch.setenv("RSC_CACHE_DIR", str(cache_dir))
    monkeypatch.setenv("MLFLOW_ENABLE_ASYNC_LOGGING", "false")


def tiny_config(tmp_path: Path, **changes):
    """A search that finishes in seconds: synthetic 32 px, ResNet-18, magnitude pruning, 3 trials of 1 epoch.

    Magnitude pruning because its build is instant; the structural methods are exercised by the
    spaces' own tests and by the UC Merced test.
    """
    from search.config import SearchConfig

    kw = dict(image_size=32, model="resnet18", methods=("sparse",), budgets=("nonzero_params<60%",),
              objectives=("accuracy", "nonzero_params"), trials=3,
              fidelity_epochs=1, final_epochs=1, final_max=1, base_epochs=1, out=str(tmp_path / "runs"),
              study="tiny", progress=False, early_stop_margin=None, sampler="random", log_models=False,
              baseline=False)  # the uniform baseline is tests/search/test_baseline.py's subject, off elsewhere
    kw.update(changes)
    return SearchConfig(**kw)


def child_env(cache_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["RSC_CACHE_DIR"] = str(cache_dir)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env
