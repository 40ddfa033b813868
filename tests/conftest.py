"""Shared fixtures: a private tensor cache, the real UC Merced folder, small generated image folders."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
UCMERCED = (REPO / ".." / "shared" / "datasets" / "UCMerced_LandUse").resolve()


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    os.environ["RSC_CACHE_DIR"] = str(tmp_path_factory.mktemp("rsc-cache"))
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "false")
    import torch

    # OMP_NUM_THREADS, when set, is honoured: a run at 1 thread (another reduction order) is the
    # cheapest stand-in for another CPU's float kernels; otherwise at most 2 threads
    threads = os.environ.get("OMP_NUM_THREADS", "")
    torch.set_num_threads(int(threads) if threads.isdigit() and int(threads) > 0
                          else max(1, min(2, os.cpu_count() or 1)))
    yield


@contextlib.contextmanager
def registered_space(name: str, cls: type):
    """``cls`` registered as space ``name`` for the ``with`` block only (contract tests run over the registry)."""
    from spaces import registry

    registry.register_space(name)(cls)
    try:
        yield cls
    finally:
        registry._SPACES.pop(name, None)


@pytest.fixture(scope="session")
def ucmerced() -> Path:
    """The real UC Merced folder; CI must have it, a developer checkout may not."""
    if not UCMERCED.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"UC Merced not found at {UCMERCED} (CI expects ../shared/datasets)")
        pytest.skip(f"UC Merced not found at {UCMERCED}")
    return UCMERCED


def write_image(path: Path, *, size: int = 40, mode: str = "RGB", seed: int = 0, fmt: str | None = None) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65535, (size, size), dtype=np.uint16))
    elif mode in ("L", "P"):
        img = Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8), mode="L")
        if mode == "P":
            img = img.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE)
    else:
        channels = 4 if mode == "RGBA" else 3
        img = Image.fromarray(rng.integers(0, 255, (size, size, channels), dtype=np.uint8),
                              mode="RGBA" if channels == 4 else "RGB")
    img.save(path, format=fmt)
    return path


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """A small class-folder dataset: 3 classes x 10 jpgs of 40 px, distinct bytes."""
    root = tmp_path / "scenes"
    for c, name in enumerate(("beach", "forest", "harbor")):
        for i in range(10):
            write_image(root / name / f"{name}{i:02d}.jpg", seed=100 * c + i)
    return root


@pytest.fixture
def private_ray():
    """A private one-CPU Ray instance on loopback (127.0.0.2: Ray rewrites 127.0.0.1 to the host's address)
    offering the custom resource ``target-test``; shut down after the test."""
    import shutil
    import tempfile

    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        pytest.skip("Ray is initialised in this process already")
    mp = pytest.MonkeyPatch()
    mp.setenv("RAY_USAGE_STATS_ENABLED", "0")
    temp_dir = tempfile.mkdtemp(prefix="rsc-ray-", dir="/tmp")  # short: Ray's socket paths have a length limit
    ray.init(address="local", num_cpus=1, resources={"target-test": 1}, include_dashboard=False,
             _node_ip_address="127.0.0.2", _temp_dir=temp_dir, object_store_memory=100 * 1024**2,
             logging_level="ERROR", log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()
        mp.undo()
        shutil.rmtree(temp_dir, ignore_errors=True)
