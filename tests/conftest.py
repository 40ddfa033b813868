"""Shared fixtures: a private tensor cache, the real UC Merced folder, small generated image folders."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def _share_the_cores() -> None:
    """Under xdist, each worker's OpenMP/BLAS pools get its share of the cores (2 workers on 2 cores: 1
    thread each), unless OMP_NUM_THREADS is set. Set before numpy and torch load, so their pools and the
    processes the tests start (searches, Ray workers) inherit it: two workers with 2 spinning threads
    each on 2 cores made the Tucker/VBMF SVDs many times slower."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT", "")
    if not workers.isdigit() or int(workers) < 1 or os.environ.get("OMP_NUM_THREADS"):
        return
    share = str(max(1, (os.cpu_count() or 1) // int(workers)))
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, share)


_share_the_cores()

import numpy as np  # noqa: E402 - after the thread counts are set
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
UCMERCED = (REPO / ".." / "shared" / "datasets" / "UCMerced_LandUse").resolve()

# -- tiers and groups ------------------------------------------------------------------------------
# ``make test`` runs ``-m "not slow" -n 2 --dist loadgroup`` (the fast tier: unit tests and the tiny
# end-to-end searches of tests/search/test_run_e2e.py); ``make test-all`` (CI, via .ci/run) runs
# everything. A key is a module path or ``module::test`` (every parametrization of that test). The
# comment is what the test took in a full ``-n 2`` run on this project's 2-core machine: CPU seconds of
# the worker and its reaped children, then wall seconds; the machine was shared (load 6-8), so the wall
# time is about 3x what an idle machine takes, and for Ray tests it is mostly other processes and waits.
# A renamed or moved test drops out of its tier: keep the keys in step (collecting the whole suite
# fails on a key that names nothing).
#
# slow: long end-to-end runs (real data, profiling, the MLflow server in a browser, big searches and
# studies), and every test that starts a Ray instance or cluster or a server (the CLUSTER table).
SLOW: dict[str, str] = {
    # real data: UC Merced (../shared/datasets)
    "tests/rsc/test_e2e_ucmerced.py": "17 cpu / 48 wall",
    "tests/search/test_run_e2e.py::test_ucmerced_small": "23 / 46",
    # profiling: the module's latency table (lut, work_lut) is measured once for these, and the CLI's
    "tests/search/test_profile.py::test_the_table_covers_the_search_space_and_records_how_it_was_made": "4 / 13",
    "tests/search/test_profile.py::test_a_latency_budget_is_projected_with_the_table_and_re_measured_at_the_end":
        "12 / 36",
    "tests/search/test_profile.py::test_a_search_allocating_by_latency_ranks_layers_by_the_table_and_meets_the_budget":
        "17 / 41",
    "tests/search/test_profile.py::test_a_final_model_over_the_latency_budget_is_re_projected_below_it_and_fine_tuned_again":
        "53 / 172",
    "tests/search/test_profile.py::test_a_table_for_another_input_size_or_machine_is_refused_before_training": "1 / 2",
    "tests/search/test_profile.py::test_an_unreachable_latency_budget_fails_before_training_with_the_best_reachable":
        "1 / 2",
    "tests/search/test_profile.py::test_profile_cli_writes_a_table_and_refuses_bad_input": "13 / 32",
    # big searches and studies
    "tests/search/test_quality.py::test_the_quality_experiment_runs_the_search_and_its_baselines_at_one_budget":
        "236 / 728",
    "tests/search/test_quality.py::test_successive_halving_keeps_the_better_half_by_validation_oa_until_one_is_fine_tuned_in_full":
        "88 / 273",
    "tests/search/test_quality.py::test_allocated_pruning_lands_on_the_budget_and_the_allocated_search_is_configured_so":
        "30 / 96",
    "tests/search/test_quality.py::test_a_searched_cell_shows_its_trials_and_final_stage_on_the_study_bar": "28 / 91",
    "tests/search/test_quality.py::test_finetune_kd_distils_in_every_fine_tune_of_the_search_and_only_when_asked":
        "24 / 84",
    "tests/search/test_study.py::test_every_kind_of_cell_runs_at_its_rate_and_lands_in_tables_csv_plots_and_mlflow":
        "141 / 143",
    "tests/search/test_study.py::test_a_killed_study_resumes_without_redoing_finished_cells": "79 / 101",
    "tests/search/test_resume.py::test_resume_after_kill": "62 / 143",
    "tests/search/test_allocate_search.py": "2 tests: 69 / 212",
    "tests/search/test_hardware.py::test_search_on_onnxruntime_records_the_target_everywhere": "41 / 125",
    "tests/search/test_crossval.py::test_the_chosen_model_is_the_best_cross_validated_oa_each_fold_scored_from_its_own_base":
        "38 / 120",
    "tests/search/test_zero_shot.py::test_a_screened_trial_stops_before_fine_tuning_and_does_not_count": "36 / 36",
    "tests/search/test_baseline.py::test_with_matched_compute_the_baseline_gets_every_epoch_the_search_spent":
        "about 60 wall alone",
}
# cluster: starts a Ray instance or cluster, or a server process. All of them share one xdist group,
# so they run one after another on one worker: two Ray clusters (or a cluster and the MLflow server)
# never start at once, and nothing in them contends for Ray's fixed default ports (the dashboard
# agent's 52365). Every one is slow too.
CLUSTER: dict[str, str] = {
    "tests/search/test_ray_cluster.py": "4 tests: 31 / 267 (2-node clusters on 127.0.0.2)",
    "tests/search/test_ray_job.py": "2 tests: 7 / 131 (a head with the Jobs API)",
    "tests/search/test_ray_backend.py": "3 tests: 47 / 411 (private instances, as the ray backend starts them)",
    "tests/search/test_hardware.py::test_search_with_a_ray_target_measures_there": "26 / 73 (private_ray)",
    "tests/costs/test_targets.py::test_ray_target_measures_on_the_node_that_offers_the_resource": "3 / 21 (private_ray)",
    "tests/costs/test_targets.py::test_ray_target_refuses_what_the_cluster_or_its_node_lacks": "2 / 13 (private_ray)",
    "tests/tracking/test_mlflow_server.py": "36 / 54 (mlflow server; its UI in headless Chromium where installed)",
}
SLOW.update({key: "cluster" for key in CLUSTER})
CLUSTER_GROUP = "cluster"
#: Where Ray instances the tests start listen (Ray rewrites 127.0.0.1 to the host's interface address).
RAY_LOOPBACK = "127.0.0.2"


def _table_key(nodeid: str, table: dict[str, str]) -> str | None:
    nodeid = nodeid.removesuffix(f"@{CLUSTER_GROUP}")  # the group xdist appends under --dist loadgroup
    module, _, rest = nodeid.partition("::")
    name = rest.split("[", 1)[0]
    for key in (f"{module}::{name}", module):
        if key in table:
            return key
    return None


def _check_tables(config, nodeids: list[str]) -> None:
    """Stop a run of the whole suite in which a SLOW/CLUSTER key names no test (renamed or moved)."""
    if config.option.keyword or not all(Path(a).resolve() in (REPO, REPO / "tests") for a in config.args):
        return
    used = {_table_key(n, table) for n in nodeids for table in (SLOW, CLUSTER)}
    stale = sorted((set(SLOW) | set(CLUSTER)) - used)
    if stale:
        pytest.exit(f"tests/conftest.py names tests that were not collected (renamed or moved?): "
                    f"{', '.join(stale)}; update SLOW/CLUSTER", returncode=4)


@pytest.hookimpl(tryfirst=True)  # before -m deselects and before xdist reads the groups
def pytest_collection_modifyitems(config, items):
    for item in items:
        if _table_key(item.nodeid, SLOW) is not None:
            item.add_marker(pytest.mark.slow)
        if _table_key(item.nodeid, CLUSTER) is not None:
            item.add_marker(pytest.mark.cluster)
            item.add_marker(pytest.mark.xdist_group(CLUSTER_GROUP))
    if not os.environ.get("PYTEST_XDIST_WORKER"):  # xdist: the controller checks (below)
        _check_tables(config, [i.nodeid for i in items])


def pytest_xdist_node_collection_finished(node, ids):
    """On the xdist controller, with each worker's collection (after -m deselected): the tables are
    checked when nothing was deselected, and the cluster tests must carry their group. Under ``--dist
    loadgroup`` xdist groups a test by suffixing its node id; a pytest that ignores the suffix (9.2 with
    xdist 3.8) would spread the cluster tests over both workers unseen."""
    config = node.config
    if not config.option.markexpr:
        _check_tables(config, ids)
    if config.getoption("dist", "no") == "loadgroup":
        lost = [i for i in ids if "@" not in i and _table_key(i, CLUSTER) is not None]
        if lost:
            pytest.exit(f"--dist loadgroup did not group {lost[0]} (and {len(lost) - 1} more): this pytest / "
                        f"pytest-xdist pair drops xdist_group; see the pins in pyproject.toml", returncode=3)


@pytest.fixture(autouse=True)
def _ray_on_loopback(request, monkeypatch):
    """A private Ray instance a cluster test's code starts (``ray.init(address="local")``, as the ray
    backend does) listens on the loopback address, not on the host's interface."""
    if request.node.get_closest_marker("cluster") is None:
        yield
        return
    ray = pytest.importorskip("ray")
    real_init = ray.init

    def init(*args, **kwargs):
        if kwargs.get("address", args[0] if args else None) in (None, "local"):
            kwargs.setdefault("_node_ip_address", RAY_LOOPBACK)
        return real_init(*args, **kwargs)

    monkeypatch.setattr(ray, "init", init)
    yield


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    os.environ["RSC_CACHE_DIR"] = str(tmp_path_factory.mktemp("rsc-cache"))
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "false")
    import torch

    # OMP_NUM_THREADS, when set (by hand, or by _share_the_cores under xdist), is honoured: a run at 1
    # thread (another reduction order) is the cheapest stand-in for another CPU's float kernels;
    # otherwise at most 2 threads
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
             _node_ip_address=RAY_LOOPBACK, _temp_dir=temp_dir, object_store_memory=100 * 1024**2,
             logging_level="ERROR", log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()
        mp.undo()
        shutil.rmtree(temp_dir, ignore_errors=True)
