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

__all__ = ["BASELINE_TRIAL", "SEED_SLOT", "uniform_request", "verdict"]

#: The baseline's number in the final stage's records (no trial has it).
BASELINE_TRIAL = -1
#: The trial number its seed is derived from (:func:`search.request.trial_seed`: the last of the seed's block).
SEED_SLOT = 100002


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


def verdict(chosen: Mapping[str, Any] | None, baseline: Mapping[str, Any] | None, *, compute: str,
            search_epochs: float, baseline_epochs: float) -> dict[str, Any] | None:
    """Searched minus uniform: the chosen model's test and validation OA minus the baseline's (in points),
    their compression rates and speed-ups, and the compute each side got. None without both rows."""
    if not chosen or not baseline or chosen.get("test_oa") is None or baseline.get("test_oa") is None:
        return None
    out: dict[str, Any] = {"compute": compute, "search_epochs": search_epochs, "baseline_epochs": baseline_epochs,
                           "chosen_trial": chosen.get("trial"), "baseline": baseline.get("method")}
    for key in ("test_oa", "val_oa"):
        if chosen.get(key) is not None and baseline.get(key) is not None:
            out[f"{key}_minus_uniform"] = 100.0 * (float(chosen[key]) - float(baseline[key]))
    for key in ("compression_rate", "speedup"):
        out[key] = [chosen.get(key), baseline.get(key)]
    return out
