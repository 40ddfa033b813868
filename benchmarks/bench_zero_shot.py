"""Does a compressed model's adaptive-BN score, before any fine-tuning, rank its final OA? (EagleEye's claim,
measured on the searched cells of a finished study.)

    .venv/bin/python benchmarks/bench_zero_shot.py --study-dir runs/ucm-quality-aimed [--methods search-alloc]
        [--margin 0.1] [--out benchmarks/results/zero_shot-adaptive-bn-rank]

For every finished searched cell of the study, every complete trial of its search is rebuilt from its plan
(records replayed: the exact model the trial fine-tuned, on the same split and base), its BatchNorm
statistics re-estimated on the trial's own unaugmented training batches and its validation OA taken with no
gradient step - the score ``search.run --zero-shot`` records (:func:`spaces.finetune.zero_epoch_oa`). Then,
per cell:

* Spearman and Kendall of that score against the OA after the full fine-tune, over the trials the search
  fine-tuned in full (finalists + rank sample), beside the same for the trial score (validation OA after
  ``--fidelity-epochs``: what the search ranks by);
* the score against the trial score over all complete trials;
* the same within each method combination (the score's own premise: EagleEye ranks candidates of one method);
* what the screen would have done at ``--margin``: the trials, in the order they finished, whose score a
  finished, at-least-as-cheap trial of the same method combination beat by the margin, and the final OA of
  those among them that were fine-tuned in full, beside the cell's chosen model.

Costs about a second a trial on the CPU. Writes ``<out>.json`` and ``<out>.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _study_config(settings: dict):
    from search.study import StudyConfig

    return StudyConfig.from_settings(settings, progress=False)


def score_cell(ws, cell: dict, study_dir: Path, margin: float) -> dict:
    """The adaptive-BN score of every complete trial of one searched cell, and how it ranks (module docstring)."""
    import optuna
    import torch

    from rsc.loaders import make_loaders
    from search.request import trial_seed
    from search.state import epoch_fronts
    from spaces.base import Context, Plan
    from spaces.compose import compress
    from spaces.finetune import zero_epoch_oa
    from tracking.pareto import dominated_by
    from tracking.stats import rank_correlation

    c = ws.config
    name = cell["search"]["study"]
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{(study_dir / 'searches' / name / 'optuna.db').resolve()}")
    split = ws.split(cell["train_ratio"], cell["repeat"])
    base = ws.base_model(cell["network"], cell["train_ratio"], cell["repeat"], cell["augment"]).cpu()
    seed = c.seed + cell["repeat"]  # the searched cell's --seed (search.study.execute._search_cell)
    val = make_loaders(ws.data, split, batch_size=c.batch_size, seed=seed)[1]
    trials = sorted(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)),
                    key=lambda t: t.datetime_complete)
    scores: dict[int, float] = {}
    for t in trials:
        own = trial_seed(seed, t.number)  # the trial's own batches (search.driver.run)
        plain = make_loaders(ws.data, split, batch_size=c.batch_size, augment=False, seed=own)[0]
        bn = [b for _, b in zip(range(c.bn_batches), plain)]
        ctx = Context(num_classes=ws.data.num_classes, image_size=ws.data.image_size, device="cpu",
                      calibration=bn[:2], seed=own)
        torch.manual_seed(own)
        model, _ = compress(base, Plan.from_dict(t.user_attrs["plan"]), ctx)
        scores[t.number] = zero_epoch_oa(model, bn, val, num_classes=ws.data.num_classes)
    full = [*cell["search"]["finalists"], *cell["search"]["rank_sample"]]
    method = {t.number: t.user_attrs.get("method", "") for t in trials}
    for r in full:
        r["zero_shot_oa"], r["method"] = scores.get(r["trial"]), method.get(r["trial"], "")
    within = {m: rank_correlation([r["zero_shot_oa"] for r in full if r["method"] == m],
                                  [r["test_oa"] for r in full if r["method"] == m]) for m in sorted(set(method.values()))}
    chosen = cell["search"]["picked_trial"]
    chosen_test = next((r["test_oa"] for r in full if r["trial"] == chosen), None)
    # the screen, replayed in the order the trials finished: dominated by a finished trial's score
    directions = ["maximize", "minimize"]
    screened = []
    for i, t in enumerate(trials):
        same = [u for u in trials[:i] if u.user_attrs.get("method") == t.user_attrs.get("method")]  # as the search
        fronts = epoch_fronts([_Scored(u, scores[u.number]) for u in same], 1, directions, zero_shot=True)
        if fronts and dominated_by([scores[t.number], t.values[1]], fronts["0"], directions, margin=[margin, 0.0]):
            screened.append(t.number)
    by_trial = {r["trial"]: r for r in full}
    return {
        "cell": cell["id"], "method": cell["method"], "repeat": cell["repeat"], "rate": cell["target_rate"],
        "zero_shot_vs_final_test_per_method": within,
        "trials": [{"trial": t.number, "method": method[t.number], "zero_shot_oa": scores[t.number],
                    "trial_score": t.values[0],
                    "params": t.values[1], **({k: by_trial[t.number][k] for k in ("val_oa", "test_oa")}
                                              if t.number in by_trial else {})} for t in trials],
        "zero_shot_vs_final_test": rank_correlation([r["zero_shot_oa"] for r in full], [r["test_oa"] for r in full]),
        "trial_score_vs_final_test": rank_correlation([r["search_val_oa"] for r in full],
                                                      [r["test_oa"] for r in full]),
        "zero_shot_vs_final_val": rank_correlation([r["zero_shot_oa"] for r in full], [r["val_oa"] for r in full]),
        "zero_shot_vs_trial_score": rank_correlation([scores[t.number] for t in trials], [t.values[0] for t in trials]),
        "screened": screened, "chosen": chosen, "chosen_test_oa": chosen_test,
        "screened_fine_tuned": [{"trial": n, "test_oa": by_trial[n]["test_oa"]} for n in screened if n in by_trial],
    }


@dataclasses.dataclass
class _Scored:
    """A finished trial as :func:`search.state.epoch_fronts` reads it (a trial record's ``zero_shot_oa``,
    ``val_history`` and ``values``), with its adaptive-BN score."""

    trial: object
    score: float
    val_history: tuple = ()

    @property
    def zero_shot_oa(self) -> float:
        return self.score

    @property
    def values(self):
        return self.trial.values


def _c(d: dict) -> str:
    return "n/a" if d["spearman"] is None else f"{d['spearman']:+.2f} / {d['kendall']:+.2f}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--study-dir", required=True, help="a study folder (runs/<name>) with finished searched cells")
    p.add_argument("--methods", default=None, help="comma list of searched methods (default: every searched cell)")
    p.add_argument("--margin", type=float, default=0.1, help="the screen's OA margin to replay (default 0.1)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "zero_shot-adaptive-bn-rank"))
    a = p.parse_args(argv)

    import torch

    from rsc.scenes import load_scene_data
    from search.study.execute import Workspace

    torch.set_num_threads(a.threads)
    study_dir = Path(a.study_dir)
    meta = json.loads((study_dir / "study.json").read_text())
    config = _study_config(meta["settings"])
    data = load_scene_data(meta.get("data") or config.data, dataset=config.dataset, image_size=config.image_size,
                           progress=False)
    ws = Workspace(config=config, data=data, device=torch.device("cpu"), study_dir=study_dir, tracking_uri="",
                   say=print)
    methods = set(a.methods.split(",")) if a.methods else None
    cells = [json.loads(f.read_text()) for f in sorted((study_dir / "cells").glob("*.json"))]
    cells = [c for c in cells if c.get("family") == "search" and c.get("status") == "ok" and c.get("search")
             and (methods is None or c["method"] in methods)]
    if not cells:
        print(f"error: no finished searched cell in {study_dir}", file=sys.stderr)
        return 2
    out, t0 = [], time.perf_counter()
    for cell in cells:
        out.append(score_cell(ws, cell, study_dir, a.margin))
        r = out[-1]
        print(f"{r['cell']}: zero-shot vs final test OA {_c(r['zero_shot_vs_final_test'])} (Spearman / Kendall), "
              f"trial score vs final test OA {_c(r['trial_score_vs_final_test'])}; screen at {a.margin:g}: "
              f"{len(r['screened'])} of {len(r['trials'])} trials")
    lines = [f"# Adaptive-BN (zero-shot) score against the final OA: {study_dir.name}", "",
             f"Trials of each searched cell rebuilt from their plans, BatchNorm re-estimated on {config.bn_batches} "
             f"unaugmented training batches, validation OA with no gradient step; final OA after "
             f"{config.finetune_epochs} epochs of fine-tuning (finalists + rank sample). Spearman / Kendall.", "",
             "| cell | trials fine-tuned in full | zero-shot vs final test OA | trial score vs final test OA | "
             "zero-shot vs final val OA | zero-shot vs final test OA, per method (n) | "
             "zero-shot vs trial score (all trials) | screened at "
             f"{a.margin:g} | fine-tuned ones screened (test OA; chosen) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in out:
        sf = ", ".join(f"{x['trial']}: {100 * x['test_oa']:.1f}" for x in r["screened_fine_tuned"]) or "none"
        lines.append(f"| {r['cell']} | {r['zero_shot_vs_final_test']['n']} | {_c(r['zero_shot_vs_final_test'])} | "
                     f"{_c(r['trial_score_vs_final_test'])} | {_c(r['zero_shot_vs_final_val'])} | "
                     + "; ".join(f"{m} {_c(v)} ({v['n']})" for m, v in r["zero_shot_vs_final_test_per_method"].items())
                     + f" | {_c(r['zero_shot_vs_trial_score'])} | {len(r['screened'])} of {len(r['trials'])} | "
                     f"{sf}; chosen {r['chosen']}: {100 * (r['chosen_test_oa'] or float('nan')):.1f} |")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(f"{a.out}.json").write_text(json.dumps({"study": study_dir.name, "margin": a.margin, "cells": out,
                                                 "seconds": time.perf_counter() - t0}, indent=1))
    Path(f"{a.out}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
