"""The engine seam (search.engines): the Optuna engine implements the protocol, its records carry what the
search keeps, and no Optuna object is used outside search/engines/."""

from __future__ import annotations

import ast
import dataclasses
import inspect
from pathlib import Path

import pytest

from search.engines.base import RECORD_ATTRS, Engine, TrialRecord

ROOT = Path(__file__).resolve().parents[2]
#: search modules that may use Optuna themselves, and why
OPTUNA_ALLOWED = {
    "search/profile.py": "draws random plans for a latency table's calibration from a throwaway in-memory study",
}


def _engine(tmp_path, **kw):
    from search.engines.optuna_engine import OptunaEngine

    return OptunaEngine(storage=f"sqlite:///{tmp_path / 'optuna.db'}", study_name="s",
                        directions=["maximize", "minimize"], sampler="random", seed=0, **kw)


def test_the_optuna_engine_implements_the_protocol(tmp_path):
    from search.engines.optuna_engine import OptunaEngine

    engine = _engine(tmp_path)
    assert isinstance(engine, Engine)
    members = [n for n, v in vars(Engine).items() if callable(v) and not n.startswith("_")]
    assert {"ask", "annotate", "tell_complete", "tell_pruned", "tell_failed", "trials", "finished"} <= set(members)
    for name in members:  # the same arguments, by name and kind
        want = inspect.signature(getattr(Engine, name)).parameters
        got = inspect.signature(getattr(OptunaEngine, name)).parameters
        assert [(p.name, p.kind) for p in got.values()] == [(p.name, p.kind) for p in want.values()], name


def test_records_carry_the_attributes_the_search_keeps(tmp_path):
    engine = _engine(tmp_path)
    numbers = []
    for _ in range(5):
        trial = engine.ask({"target": 0.5} if not numbers else None)
        trial.suggest_float("target", 0.1, 1.0, log=True)  # the enqueued value for the first
        engine.annotate(trial.number, {"method": "prune+quant", "mlflow_run_id": f"run{trial.number}",
                                       "target": {"params": 1.0e6}})
        numbers.append(trial.number)
    plan = {"base": {"model": "resnet18"}, "steps": [{"space": "prune.channel", "params": {}}]}
    engine.tell_complete(numbers[0], [0.8, 1.0e6], [-1.0], attrs={
        "outcome": "complete", "feasible": True, "plan": plan, "costs": {"params": 1.0e6}, "seconds": {"total": 2.0},
        "val_history": [0.5, 0.8], "zero_shot_oa": 0.3, "worker": {"host": "n1", "pid": 7}, "above_floor": True})
    engine.tell_pruned(numbers[1], attrs={"outcome": "pruned", "screened": True, "val_oa": 0.1, "zero_shot_oa": 0.1})
    engine.tell_failed(numbers[2], attrs={"outcome": "failed", "error": "RuntimeError: boom"})
    engine.tell_failed(numbers[3], lost="WorkerCrashedError", attrs={"outcome": "lost"})
    engine.tell_failed(numbers[4], interrupted=True)

    done = engine.complete()
    assert len(done) == 1 and isinstance(done[0], TrialRecord)
    t = done[0]
    assert (t.number, t.state, t.values, t.outcome) == (numbers[0], "complete", (0.8, 1.0e6), "complete")
    assert (t.method, t.mlflow_run_id, t.target, t.plan, t.costs) == (
        "prune+quant", f"run{numbers[0]}", {"params": 1.0e6}, plan, {"params": 1.0e6})
    assert (t.val_history, t.zero_shot_oa, t.worker, t.feasible, t.above_floor, t.eligible) == (
        (0.5, 0.8), 0.3, {"host": "n1", "pid": 7}, True, True, True)
    assert t.params == {"target": 0.5}  # the fixed parameter
    by = {r.number: r for r in engine.trials()}
    assert (by[numbers[1]].state, by[numbers[1]].screened, by[numbers[1]].val_oa) == ("pruned", True, 0.1)
    assert (by[numbers[2]].state, by[numbers[2]].error) == ("fail", "RuntimeError: boom")
    assert by[numbers[3]].lost == "WorkerCrashedError" and by[numbers[4]].interrupted
    # lost and interrupted trials do not count towards --trials
    assert [r.number for r in engine.finished()] == numbers[:3]
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.method = "tucker"  # type: ignore[misc]
    with pytest.raises(KeyError, match="not asked"):
        engine.tell_pruned(numbers[0])


def test_a_dead_process_leaves_running_trials_that_recover_fails(tmp_path):
    engine = _engine(tmp_path)
    left = engine.ask()
    again = _engine(tmp_path, resume=True)
    assert again.recover() == [left.number]
    (record,) = again.trials()
    assert record.state == "fail" and record.interrupted and again.finished() == []


def test_an_unknown_attribute_is_refused(tmp_path):
    engine = _engine(tmp_path)
    trial = engine.ask()
    with pytest.raises(ValueError, match="'methods'"):
        engine.annotate(trial.number, {"methods": "prune"})
    assert "method" in RECORD_ATTRS and "number" not in RECORD_ATTRS


def _optuna_uses(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [f"line {node.lineno}: import {a.name}" for a in node.names if a.name.split(".")[0] == "optuna"]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "optuna":
            found.append(f"line {node.lineno}: from {node.module}")
        elif isinstance(node, ast.Attribute) and (node.attr in ("user_attrs", "set_user_attr") or (
                node.attr == "study" and ast.unparse(node.value).endswith("engine"))):
            found.append(f"line {node.lineno}: .{node.attr}")
        elif isinstance(node, ast.Constant) and node.value == "user_attrs":
            found.append(f"line {node.lineno}: 'user_attrs'")
    return found


def test_no_optuna_object_leaves_the_engines():
    """Outside search/engines/, the search reads TrialRecords and talks to the Engine: no Optuna import, no
    trial.user_attrs, no engine.study. (The asked trial's suggest_* calls are the seam's one exception.)"""
    bad = {}
    for path in sorted((ROOT / "search").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith("search/engines/") or rel in OPTUNA_ALLOWED:
            continue
        uses = _optuna_uses(path)
        if uses:
            bad[rel] = uses
    assert bad == {}
