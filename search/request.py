"""What a trial is asked to do and what it answers: frozen, typed, and plain JSON on the wire.

A :class:`TrialRequest` is built in one place - :func:`search.setup.prepare` makes the search's
template, and every trial, final-stage fine-tune, halving rung and cross-validation fold is that
template with :func:`dataclasses.replace` applied - and read by one function,
:func:`search.objective.evaluate_trial`. Requests travel to Ray workers and results come back as plain
JSON (:meth:`TrialRequest.to_dict` / :meth:`TrialRequest.from_dict`, the same for
:class:`TrialResult`), so the executor boundary stays JSON: a trial function, a test's fake one
included, gets a dict and returns one.

Each default is defined once: the fine-tune settings a request leaves out default to
:class:`search.config.SearchConfig`'s (its fields' defaults are read here, not copied).

    template = TrialRequest(data=DataRef(...), base_checkpoint="base.pt", limits={"params": 2.8e6}, ...)
    request = dataclasses.replace(template, plan=plan, seed=trial_seed(seed, number))
    result = TrialResult.from_dict(trial_fn(request.to_dict()))
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Mapping

from search.config import SearchConfig

__all__ = ["DataRef", "EarlyStop", "TrialRequest", "TrialResult", "trial_seed"]

_CONFIG = {f.name: f.default for f in dataclasses.fields(SearchConfig)}


def trial_seed(seed: int, number: int) -> int:
    """The seed of trial ``number`` of a search seeded ``seed``: its batches, its torch state, its
    data-dependent choices. The final stage fine-tunes a trial's plan again with the same seed."""
    return int(seed) * 100003 + int(number)


def _plain(obj: Any) -> Any:
    """A fresh plain-JSON copy (tuples become lists; NaN and infinities stay as Python's json writes them)."""
    return json.loads(json.dumps(obj))


def _checked(cls: type, data: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` as keyword arguments of ``cls``; an unknown key is a mistake of the caller, said by name."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} key(s) {unknown}; known: {', '.join(sorted(names))}")
    return dict(data)


@dataclass(frozen=True, kw_only=True)
class DataRef:
    """Where a worker finds the data and which split it must rebuild (:meth:`SearchConfig.data_request`).

    ``file``: the decoded set as :func:`rsc.scenes.save_scene_file` writes it, read instead of ``path``
    (shipped to a worker without the image folder). ``fold``: ``(folds, fold)``, that fold of the split's
    training part as validation (:func:`rsc.splits.fold_split`, the cross-validation of
    :mod:`search.crossval`). ``digest``: the driver's split; a worker that rebuilds another one fails.
    """

    path: str | None = None
    dataset: str | None = None
    image_size: int = _CONFIG["image_size"]
    train_ratio: float = _CONFIG["train_ratio"]
    val_ratio: float = _CONFIG["val_ratio"]
    split_seed: int = _CONFIG["seed"]
    digest: str | None = None
    file: str | None = None
    fold: tuple[int, int] | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "DataRef":
        kw = _checked(cls, data)
        if kw.get("fold") is not None:
            kw["fold"] = (int(kw["fold"][0]), int(kw["fold"][1]))
        return cls(**kw)


@dataclass(frozen=True, kw_only=True)
class EarlyStop:
    """What a trial needs to stop itself when clearly dominated (:meth:`search.state.Search.early_stop`).

    ``fronts`` maps an epoch, as a string, to the points ``[val OA after that epoch, costs...]`` of finished
    trials, so a trial is only ever compared with others at the same point of the same schedule; epoch
    ``"0"`` holds their zero-shot scores, compared with ``zero_shot_margin``. A margin of None stops
    nothing at that point.
    """

    fronts: Mapping[str, list[list[float]]] = field(default_factory=dict)
    directions: tuple[str, ...] = ()
    cost_keys: tuple[str, ...] = ()
    margin: float | None = _CONFIG["early_stop_margin"]
    zero_shot_margin: float | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "EarlyStop":
        kw = _checked(cls, data)
        for key in ("directions", "cost_keys"):
            if key in kw:
                kw[key] = tuple(kw[key])
        return cls(**kw)


@dataclass(frozen=True, kw_only=True)
class TrialRequest:
    """One trial, from the data and base-model *paths* to the settings of its fine-tune.

    Attributes:
        data: where the data is and which split to rebuild.
        base_checkpoint: the base model's checkpoint (a path the worker can read).
        plan: a :class:`spaces.Plan` as its dict (``{base, steps}``).
        limits: analytic ceilings by cost key, the plan is projected onto them.
        target: tighter ceilings the plan aims at; a plan that cannot reach them keeps its most
            compressed form within ``limits``.
        base_costs: the base model's costs (measured again when None).
        epochs, lr, batch_size: the fine-tune.
        seed: the trial's seed (:func:`trial_seed`); device: where it trains.
        calibration_batches: unaugmented training batches for data-dependent choices and int8.
        bn_batches: BatchNorm re-estimation after every fine-tune epoch (0: off).
        latency: measure latency and speed-up on ``hardware`` (a :mod:`costs.targets` spec).
        finetune_kd: distil from the base model during the fine-tune, even without a distillation step.
        zero_shot: score the compressed model before fine-tuning (EagleEye's adaptive-BN OA).
        early_stop: the fronts a trial is stopped against, or None.
        evaluate_test: the final stage: the test split, and latency on the table's own target.
        threads: torch threads (a Ray trial's reserved CPUs), or None.
    """

    data: DataRef
    base_checkpoint: str
    plan: Mapping[str, Any] = field(default_factory=dict)
    limits: Mapping[str, float] = field(default_factory=dict)
    target: Mapping[str, float] = field(default_factory=dict)
    base_costs: Mapping[str, float] | None = None
    epochs: int = _CONFIG["fidelity_epochs"]
    lr: float = _CONFIG["finetune_lr"]
    batch_size: int = _CONFIG["batch_size"]
    seed: int = _CONFIG["seed"]
    device: str = "cpu"
    calibration_batches: int = _CONFIG["calibration_batches"]
    bn_batches: int = _CONFIG["bn_batches"]
    latency: bool = _CONFIG["latency"]
    hardware: str = _CONFIG["hardware"]
    finetune_kd: bool = _CONFIG["finetune_kd"]
    zero_shot: bool = _CONFIG["zero_shot"]
    early_stop: EarlyStop | None = None
    evaluate_test: bool = False
    threads: int | None = None

    def replace(self, **changes: Any) -> "TrialRequest":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON: what an executor ships and a trial function receives."""
        return _plain(dataclasses.asdict(self))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrialRequest":
        kw = _checked(cls, data)
        kw["data"] = DataRef.from_dict(kw["data"])
        if kw.get("early_stop") is not None:
            kw["early_stop"] = EarlyStop.from_dict(kw["early_stop"])
        for key in ("limits", "target"):
            if kw.get(key) is None:
                kw.pop(key, None)
        return cls(**kw)

    @classmethod
    def from_json(cls, text: str) -> "TrialRequest":
        return cls.from_dict(json.loads(text))


@dataclass(frozen=True, kw_only=True)
class TrialResult:
    """What a trial answers (:func:`search.objective.evaluate_trial`; a test's fake may leave keys out).

    Attributes:
        status: ``"ok"`` or ``"pruned"`` (stopped early, or ``screened`` before fine-tuning).
        val_oa: validation OA (when stopped: after the epoch it was stopped at).
        test_oa: the final stage's test OA.
        costs: every analytic cost, and latency when measured (``latency_ms_predicted`` beside it on a
            table's target in the final stage).
        compression_rate, speedup: against the base model.
        plan: the plan as compressed (base + steps with their records).
        projection: the strength factor the plan was projected with.
        history: one record per fine-tune epoch; epochs_run: how many ran.
        seconds: wall time by stage (``worker`` and ``ship`` added on Ray).
        zero_shot_oa: the adaptive-BN score before fine-tuning (with ``zero_shot``).
        reason: why it was pruned. worker: where it ran on Ray (host, pid, node id, start, end).
    """

    status: str = "ok"
    val_oa: float | None = None
    test_oa: float | None = None
    costs: Mapping[str, float] = field(default_factory=dict)
    compression_rate: float | None = None
    speedup: float | None = None
    base_latency_ms: float | None = None
    base_latency_ms_predicted: float | None = None
    hardware: str | None = None
    plan: Mapping[str, Any] | None = None
    projection: float | None = None
    history: tuple[Mapping[str, Any], ...] = ()
    epochs_run: int | None = None
    seconds: Mapping[str, float] = field(default_factory=dict)
    zero_shot_oa: float | None = None
    screened: bool = False
    reason: str = ""
    worker: Mapping[str, Any] | None = None

    @property
    def curve(self) -> list[Any]:
        """Validation OA after each fine-tune epoch."""
        return [h.get("val_oa") for h in self.history]

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrialResult":
        kw = _checked(cls, data)
        kw["history"] = tuple(kw.get("history") or ())
        for key in ("costs", "seconds"):
            kw[key] = dict(kw.get(key) or {})
        return cls(**kw)

    @classmethod
    def from_json(cls, text: str) -> "TrialResult":
        return cls.from_dict(json.loads(text))
