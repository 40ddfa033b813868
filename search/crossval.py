"""The final choice cross-validated over the training part, not made on a validation split of ~200 images.

With ``--final-folds K``, every model the final stage fine-tuned is also fine-tuned K more times, once
per fold of the training part (train + validation; :func:`rsc.splits.fold_split`). Each time the model
starts from a base trained from scratch *without that fold* (the search's own base recipe, cached like
it), is compressed to the same architecture as the final model (its per-layer allocation kept; which
channels go, the factors and calibrations recomputed from that base), fine-tuned for the final
stage's epochs, and scored on the held-out fold. The folds partition the training part, so the pooled
OA (``cv_oa``) is measured on every training image, each by a model that never saw it: on UC Merced at
80%, 1680 images instead of the 168 of the validation split, where one image is 0.6 pts.

The model shipped is still the one fine-tuned on the search's split; ``cv_oa`` only chooses among them
(:func:`chosen_row`) as an estimate of how well its compression and fine-tune do. Why a
base per fold: the search's base trained on every training image, so a fold scored with it would be
scored on images it memorised, and a plan that keeps more of the base would look better for it. The
test split stays untouched. Cost: K base trainings per search (cached) and K fine-tunes per final model.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

if TYPE_CHECKING:
    from search.request import TrialRequest

__all__ = ["fold_plan", "cross_validate", "chosen_row", "choice_key"]


def fold_plan(plan: Mapping[str, Any]) -> dict[str, Any]:
    """``plan`` as it is rebuilt on a fold's base: the same architecture, data-dependent choices recomputed.

    A record that holds an allocation (``params`` with an ``inner`` record: :mod:`spaces.allocation.space`)
    keeps the allocated per-layer params and loses the inner record; every other record (which channels
    a criterion removed, factors, int8 calibration) is dropped, since it belongs to the search's base.
    """
    out = copy.deepcopy(dict(plan))
    steps = []
    for step in out.get("steps") or []:
        step = dict(step)
        record = step.pop("record", None)
        if isinstance(record, Mapping) and isinstance(record.get("params"), Mapping) and "inner" in record:
            step["record"] = {k: v for k, v in record.items() if k != "inner"}
        steps.append(step)
    out["steps"] = steps
    return out


def cross_validate(config: Any, rows: Sequence[dict[str, Any]], plans: Mapping[int, Mapping[str, Any]],
                   request_for: Callable[..., TrialRequest], trial_fn: Callable[[dict[str, Any]], dict[str, Any]],
                   data: Any, split: Any, device: str, say: Callable[[str], None],
                   spent: Callable[[str, float, float], None] = lambda part, epochs, seconds: None) -> None:
    """Add ``cv_oa`` (pooled over the folds), ``cv_fold_oa`` and ``cv_images`` to each of ``rows`` (final
    models, by ``trial``) whose plan is in ``plans``; ``request_for(number, **extra)`` is the final stage's
    request for that trial. A fold that fails leaves its row without ``cv_oa`` (said, not raised).
    ``spent(part, epochs, seconds)`` is told each fold's base (``crossval_bases``, cached or not) and each
    fine-tune (``crossval``) in epoch-equivalents of the split's training part (:mod:`search.compute`)."""
    from rsc.splits import fold_split
    from search.base_model import search_base_checkpoint

    folds = int(config.final_folds)
    todo = [r for r in rows if r.get("trial") in plans]
    if not todo:
        return
    say(f"final stage: cross-validating {len(todo)} model(s) over {folds} folds of the training part "
        f"({len(split.train) + len(split.val)} images), a base trained without each fold")
    scores: dict[int, list[float]] = {r["trial"]: [] for r in todo}
    sizes: list[int] = []
    for i in range(folds):
        part = fold_split(data, split, folds=folds, fold=i)
        ckpt, _ = search_base_checkpoint(config, data, part, device, lambda m, i=i: say(f"fold {i + 1}/{folds}: {m}"))
        n = len(part.val)
        sizes.append(n)
        share = len(part.train) / max(len(split.train), 1)  # a fold's epoch, in the split's epochs
        spent("crossval_bases", config.base_epochs * share, 0.0)
        for r in todo:
            number = r["trial"]
            request = request_for(number, plan=fold_plan(plans[number]), latency=False, base_checkpoint=str(ckpt))
            request = request.replace(data=dataclasses.replace(request.data, fold=(folds, i)))
            try:
                out = trial_fn(request.to_dict())
                oa = float(out["val_oa"])
                spent("crossval", (out.get("epochs_run") or request.epochs) * share,
                      float((out.get("seconds") or {}).get("total", 0.0)))
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as exc:  # noqa: BLE001 - the row keeps its validation OA only
                say(f"final stage: trial {number} failed on fold {i + 1}/{folds}: {type(exc).__name__}: {exc}")
                scores.pop(number, None)
                continue
            if number in scores:
                scores[number].append(oa)
                say(f"final stage, fold {i + 1}/{folds} ({n} held-out images): trial {number} OA {oa:.4f}")
        todo = [r for r in todo if r["trial"] in scores]
    for r in todo:
        oa = scores[r["trial"]]
        r["cv_oa"] = sum(a * n for a, n in zip(oa, sizes)) / sum(sizes)
        r["cv_fold_oa"], r["cv_images"] = oa, sum(sizes)


def chosen_row(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The model a user ships: among the final models that meet the budget as measured, the best
    cross-validated OA when every one has it (``--final-folds``), else the best validation OA after the
    final fine-tune (ties to the better validation OA, then fewer params); the test OA only reports it."""
    ok = [r for r in rows if r.get("val_oa") is not None and r.get("meets_budget") is not False]
    if not ok:
        return None
    cv = all(r.get("cv_oa") is not None for r in ok)
    return dict(max(ok, key=lambda r: choice_key(r, cv)))


def choice_key(row: Mapping[str, Any], cv: bool = False) -> tuple[float, float, float]:
    """The order :func:`chosen_row` ranks final models by: the cross-validated OA (``cv``) or the
    validation OA, ties to the better validation OA, then fewer params."""
    return (row["cv_oa"] if cv else row["val_oa"], row["val_oa"], -(row.get("params") or 0.0))
