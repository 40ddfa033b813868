"""Trial functions for the multi-node Ray tests, importable on every node (the nodes get this repo on
PYTHONPATH): each marks where it runs in ``$RSC_TEST_MARKERS`` before it starts the real trial,
so a test can kill its worker process or remove its node while it runs."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Mapping


def marked_trial(request: Mapping[str, Any]) -> dict:
    import ray

    from search.objective import evaluate_trial

    if not ray.is_initialized():  # the final stage, in the driver after the cluster is gone
        return evaluate_trial(request)
    folder = Path(os.environ["RSC_TEST_MARKERS"])
    folder.mkdir(parents=True, exist_ok=True)
    mark = {"seed": request["seed"], "pid": os.getpid(), "node_id": ray.get_runtime_context().get_node_id(),
            "data_file": request["data"].get("file"), "base_checkpoint": request["base_checkpoint"],
            "time": time.time()}
    (folder / f"{request['seed']}-{os.getpid()}.json").write_text(json.dumps(mark))
    time.sleep(float(os.environ.get("RSC_TEST_TRIAL_SLEEP", "0")))  # time for the test to act
    return evaluate_trial(request)


def dies_on_trial_one(request: Mapping[str, Any]) -> dict:
    """Trial 1's worker process dies on every attempt (as if killed by the OOM killer); the rest run."""
    from search.objective import evaluate_trial
    from search.request import trial_seed

    if request["seed"] == trial_seed(0, 1):  # the tests' searches are seeded 0
        os._exit(1)
    return evaluate_trial(request)
