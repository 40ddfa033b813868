"""The uniform baseline: what a search's model must beat to be worth its compute.

A compression search earns its place only if its model beats the simple configuration at the same budget:
one pruning ratio (or one rank fraction) for every layer, projected onto the budget, fine-tuned alike
(Liu et al., ICLR 2019; Blalock et al., MLSys 2020). So the final stage fine-tunes that configuration -
the searched spaces' preset marked ``uniform`` (:func:`spaces.registry.uniform_baseline`: uniform L1
channel pruning, or uniform Tucker-2 where the methods are low-rank only) - beside the searched
finalists, through the same trial function, with the same lr, batch, BatchNorm re-estimation, KD and
latency repair, and reports *searched minus uniform* on the test split.

``--baseline-compute matched`` (the default) gives it every epoch the search spent on its trials, halving
rungs and final fine-tunes (:mod:`search.compute`): the verdict at equal compute, the one that says whether the
search paid for itself (on UC Merced the uniform configuration given a search's epochs beat the searched model,
benchmarks/README.md). ``same`` gives it the final stage's epochs: equal fine-tune length per model, cheaper,
and flattering to the search. The baseline runs after the
finalists, so ``matched`` knows that figure; the rank sample (it only measures the search) and the
cross-validation fine-tunes are not in it.

    found = uniform_request(template, config, arch, base, context, epochs=20)
    if found: request, label = found
"""

from __future__ import annotations

from typing import Any, Mapping

from search.request import TrialRequest, trial_seed

__all__ = ["BASELINE_TRIAL", "SEED_SLOT", "UNIFORM_CANDIDATE", "record_seed", "uniform_request", "uniform_candidate",
           "verdict", "base_note", "BASE_MARGIN"]

#: How far (in OA) a compressed model may score above its base on validation before the base is called unconverged.
BASE_MARGIN = 0.01

#: The baseline's number in the final stage's records (no trial has it).
BASELINE_TRIAL = -1
#: The trial number its seed is derived from (:func:`search.request.trial_seed`: the last of the seed's block).
SEED_SLOT = 100002
#: The uniform configuration's number as a candidate of a compute-budgeted search (``--compute``): explored like a
#: trial, outside the engine (a trial without sampled parameters would empty NSGA-II's and TPE's search space).
UNIFORM_CANDIDATE = -2


def record_seed(seed: int, number: int) -> int:
    """The seed of a final-stage record: a trial's own (:func:`search.request.trial_seed`); the baseline's and
    the uniform candidate's from the last slots of the seed's block (``SEED_SLOT``, ``SEED_SLOT - 1``)."""
    return trial_seed(seed, number if number >= 0 else SEED_SLOT + 1 + number)


def uniform_request(template: TrialRequest, *, methods: tuple[str, ...], seed: int, arch: Mapping[str, Any],
                    base: Any, context: Any, epochs: int) -> tuple[TrialRequest, str] | None:
    """The final-stage request of the uniform configuration of ``methods`` (the search's ``--methods``):
    its preset's weak start projected onto the template's analytic limits, fine-tuned ``epochs`` epochs and
    tested; and its label (``uniform l1``). None when no searched space has a uniform preset or the budget
    has no counted cost to project it onto (a budget measured on the target without a latency table)."""
    from spaces.registry import get_space, uniform_baseline

    found = uniform_baseline(methods)
    if found is None or not template.limits:
        return None
    name, preset = found
    space = get_space(name, **dict(preset.options))
    step = {"space": name, "params": preset.start(space, base, context),
            **({"options": dict(preset.options)} if preset.options else {})}
    request = template.replace(plan={"base": dict(arch), "steps": [step]}, target={}, epochs=int(epochs),
                               seed=trial_seed(seed, SEED_SLOT), early_stop=None, zero_shot=False,
                               evaluate_test=True)
    return request, f"uniform {preset.name}"


def uniform_candidate(s: Any, trial_fn: Any, *, epochs: int,
                      objectives: Any) -> tuple[Any, dict[str, Any]] | None:
    """The uniform configuration explored as one more candidate of a compute-budgeted search: projected onto
    the budget like the baseline, fine-tuned ``epochs`` (the trials' fidelity) with the trials' request, scored
    on the validation split. Returns ``(TrialRecord numbered UNIFORM_CANDIDATE, its result dict)``; None when
    the search has no uniform configuration (see :func:`uniform_request`). ``s``: the prepared search
    (:class:`search.setup.PreparedSearch`); ``objectives``: the search's ``(name, key, direction)``."""
    from search.engines.base import TrialRecord
    from search.state import Outcome

    config = s.config
    found = uniform_request(s.request, methods=config.space_methods()[0], seed=config.seed, arch=s.arch,
                            base=s.skeleton, context=s.context, epochs=epochs)
    if found is None:
        return None
    request, label = found
    request = request.replace(seed=record_seed(config.seed, UNIFORM_CANDIDATE), evaluate_test=False)
    raw: dict[str, Any] | None = None
    try:
        raw = trial_fn(request.to_dict())
        outcome = Outcome.of(raw, None, objectives)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:  # noqa: BLE001 - a failed candidate is reported, the search goes on
        outcome = Outcome.of(None, exc, objectives)
    result = outcome.result
    if outcome.state != "complete" or result is None:
        return TrialRecord(number=UNIFORM_CANDIDATE, state="fail", method=label,
                           error=outcome.error or outcome.state), dict(raw or {})
    costs = dict(result.costs)
    feasible = s.budgets.check(costs)
    above = None if config.min_accuracy is None else result.val_oa >= config.min_accuracy
    return TrialRecord(number=UNIFORM_CANDIDATE, state="complete", values=tuple(outcome.values), method=label,
                       plan=result.plan, costs=costs, feasible=feasible, above_floor=above,
                       val_history=tuple(result.curve or ()), seconds=dict(result.seconds),
                       epochs_run=result.epochs_run, outcome="complete"), result.to_dict()


def verdict(chosen: Mapping[str, Any] | None, baseline: Mapping[str, Any] | None, *, compute: str,
            search_epochs: float, baseline_epochs: float) -> dict[str, Any] | None:
    """Searched minus uniform: the chosen model's test and validation OA minus the baseline's (in points),
    their compression rates and speed-ups, the compute each side got, and ``ship``: the one to deploy, chosen on
    validation OA alone (``uniform`` when the baseline leads there and meets the budget, else ``searched``).
    None without both rows."""
    if not chosen or not baseline or chosen.get("test_oa") is None or baseline.get("test_oa") is None:
        return None
    out: dict[str, Any] = {"compute": compute, "search_epochs": search_epochs, "baseline_epochs": baseline_epochs,
                           "chosen_trial": chosen.get("trial"), "baseline": baseline.get("method")}
    for key in ("test_oa", "val_oa"):
        if chosen.get(key) is not None and baseline.get(key) is not None:
            out[f"{key}_minus_uniform"] = 100.0 * (float(chosen[key]) - float(baseline[key]))
    for key in ("compression_rate", "speedup"):
        out[key] = [chosen.get(key), baseline.get(key)]
    # which model to ship, on validation OA alone (test OA only reports): the uniform one only when it leads and
    # meets the budget as measured; ties go to the search's choice
    val = out.get("val_oa_minus_uniform")
    out["ship"] = ("uniform" if val is not None and val < 0 and baseline.get("meets_budget") is not False
                   else "searched")
    return out


def base_note(base: Mapping[str, Any] | None, rows: list[Mapping[str, Any]], base_epochs: int) -> str | None:
    """A warning when a compressed model - a final model or the uniform baseline - scores more than
    :data:`BASE_MARGIN` above its base on validation: fewer weights cannot know more, so the base was still
    improving when its training stopped (a compressed copy fine-tuned longer went on learning), and figures
    "minus base" flatter every method. None when the base leads, or without validation OAs."""
    if not base or base.get("val_oa") is None:
        return None
    scored = [r for r in rows if r and r.get("val_oa") is not None]
    if not scored:
        return None
    best = max(scored, key=lambda r: r["val_oa"])
    gap = float(best["val_oa"]) - float(base["val_oa"])
    if gap <= BASE_MARGIN:
        return None
    who = "the uniform baseline" if best.get("trial") == "uniform" else f"{best.get('method')} ({best.get('epochs', '?')} epochs)"
    trained = f"{base_epochs} epochs" if base_epochs else "its recipe"
    return (f"warning: the base model is not converged: {who}, compressed "
            f"{float(best.get('compression_rate') or 0):.1f}x, scores {100 * gap:.1f} pts above it on validation "
            f"({best['val_oa']:.4f} vs {base['val_oa']:.4f}); train the base longer (--base-epochs, trained {trained}) "
            f"or hand a converged one (--weights) before reading results against it")
