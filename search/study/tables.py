"""The study's tables and plots, rebuilt from its cell rows: Markdown, CSV, PNG.

One table per experiment and training ratio; each line is one method (with or without KD, at one
target rate) over the repeats: OA mean +- sample std, the compression rate reached (original params /
compressed params; non-zero params for magnitude pruning) and the measured speed-up, and how many
repeats finished. A cell that cannot reach its rate is listed under its table, not averaged.
"""

from __future__ import annotations

import csv
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from search.crossval import choice_key

__all__ = ["write_outputs", "summarise", "mean_std", "quality_lines", "rank_lines", "uniform_lines", "budget_lines", "pick_lines", "PICK_RULES",
           "replay_pick", "replayable", "rule_lines"]

_CSV_KEYS = ("id", "status", "method", "family", "network", "train_ratio", "repeat", "target_rate", "kd", "augment",
             "test_oa", "val_oa", "compression_rate", "compression_rate_params", "speedup", "params",
             "nonzero_params", "macs", "size", "sparse_size", "latency_ms", "base_latency_ms", "epochs", "seconds",
             "reason")


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return math.nan, math.nan
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0


def _pm(values: list[float], digits: int = 3, pct: bool = False) -> str:
    m, s = mean_std(values)
    if math.isnan(m):
        return "-"
    k = 100.0 if pct else 1.0
    return f"{m * k:.{digits}f} +- {s * k:.{digits}f}"


def _label(row: dict[str, Any]) -> str:
    return row["method"] if row["method"] != "baseline" else f"baseline ({row['network']})"


def summarise(rows: list[dict[str, Any]], experiment: str, ratio: float) -> list[dict[str, Any]]:
    """Lines of one table: rows of ``experiment`` at ``ratio`` grouped over their repeats."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        if experiment in r.get("experiments", ()) and r["train_ratio"] == ratio:
            key = (r["method"], r["network"], bool(r["kd"]), r.get("target_rate"), r["augment"])
            groups[key].append(r)
    lines = []
    for (method, network, kd, rate, augment), rs in groups.items():
        ok = [r for r in rs if r["status"] == "ok"]
        lines.append({"method": method, "network": network, "kd": kd, "target_rate": rate, "augment": augment,
                      "family": rs[0]["family"], "n": len(ok), "of": len(rs),
                      "oa": [r["test_oa"] for r in ok], "rate": [r.get("compression_rate") for r in ok],
                      "speedup": [r.get("speedup") for r in ok], "params": [r.get("params") for r in ok],
                      "unreachable": [r.get("reason", "") for r in rs if r["status"] == "unreachable"]})
    order = {"baseline": 0, "weight": 1, "local": 2, "global": 3, "pruning": 4}
    augments = {"none": 0, "d4": 1, "d4+crop": 2}
    lines.sort(key=lambda x: (order.get(x["family"], 9), x["method"], x["kd"], x["target_rate"] or 0,
                              augments.get(x["augment"], 9)))
    return lines


def _table(lines: list[dict[str, Any]], experiment: str, num_classes: int = 0) -> list[str]:
    if experiment == "baselines":
        from rsc.loop import at_chance

        out = ["| network | OA (%) | params (M) | repeats |", "|---|---|---|---|"]
        collapsed = 0
        for x in lines:
            low = sum(at_chance(v, num_classes) for v in x["oa"])
            collapsed += low
            flag = f" (at chance on {low} of {x['n']}: training collapsed)" if low else ""
            out.append(f"| {x['network']} | {_pm(x['oa'], 2, pct=True)}{flag} | "
                       f"{mean_std(x['params'])[0] / 1e6:.2f} | {x['n']}/{x['of']} |")
        if collapsed:
            out += ["", "Collapsed: the network ended at chance level (one class for nearly every image); networks "
                    "without BatchNorm diverge at a high --lr: lower it for them (--network-lr NET=LR) or give "
                    "pretrained --weights."]
        return out
    if experiment == "augment":
        out = ["| model | augmentation | OA (%) | repeats |", "|---|---|---|---|"]
        for x in lines:
            what = _label(x) + (f" at {x['target_rate']:g}x" if x["target_rate"] else "")
            out.append(f"| {what} | {x['augment']} | {_pm(x['oa'], 2, pct=True)} | {x['n']}/{x['of']} |")
        return out
    out = ["| method | family | KD | target rate | OA (%) | compression rate | speed-up | minus base (pts, paired) | "
           "repeats |", "|---|---|---|---|---|---|---|---|---|"]
    for x in lines:
        target = f"{x['target_rate']:g}x" if x["target_rate"] else ("own" if x["method"] != "baseline" else "1x")
        rate = mean_std(x["rate"])[0]
        vs = "-" if x.get("vs_base") is None else _pts(x["vs_base"])
        out.append(f"| {_label(x)} | {x['family']} | {'yes' if x['kd'] else 'no'} | {target} | "
                   f"{_pm(x['oa'], 2, pct=True)} | {rate:.2f}x | {_pm(x['speedup'], 2)} | {vs} | {x['n']}/{x['of']} |"
                   if x["n"] else
                   f"| {_label(x)} | {x['family']} | {'yes' if x['kd'] else 'no'} | {target} | unreachable | - | - | - | "
                   f"0/{x['of']} |")
    out += ["", "Minus base: on each split the difference to that split's base, then mean +- sample std over the "
            "splits; (w/n): splits where the method is strictly ahead of the base."]
    return out


def _paired(rows: list[dict[str, Any]], ratio: float, experiment: str = "quality") -> dict[tuple, dict[int, float]]:
    """Test OA by (method, target rate, KD, augmentation) and repeat, of an experiment's finished cells at ``ratio``."""
    out: dict[tuple, dict[int, float]] = defaultdict(dict)
    for r in rows:
        if experiment in r.get("experiments", ()) and r["train_ratio"] == ratio and r["status"] == "ok":
            out[(r["method"], r.get("target_rate"), bool(r["kd"]), r["augment"])][r["repeat"]] = r["test_oa"]
    return out


def _key(x: dict[str, Any]) -> tuple:
    return (x["method"], x["target_rate"], bool(x["kd"]), x["augment"])


def with_base_differences(lines: list[dict[str, Any]], rows: list[dict[str, Any]], ratio: float,
                          experiment: str) -> list[dict[str, Any]]:
    """Each line's paired difference to the base of the same split (``vs_base``; the base's own: None)."""
    from tracking.stats import paired_differences

    oa = _paired(rows, ratio, experiment)
    for x in lines:
        x["vs_base"] = (None if x["method"] == "baseline" else
                        paired_differences(oa.get(_key(x), {}), oa.get(("baseline", None, False, x["augment"]), {})))
    return lines


def _pts(d: dict[str, Any]) -> str:
    return "-" if not d["n"] else f"{100 * d['mean']:+.2f} +- {100 * d['std']:.2f} ({d['wins']}/{d['n']})"


def quality_lines(rows: list[dict[str, Any]], ratio: float, subject: str) -> list[dict[str, Any]]:
    """The quality table at ``ratio``: per method and rate, beside the summary of :func:`summarise`,
    the paired differences (same split) method - base and ``subject`` - method, in OA."""
    from tracking.stats import paired_differences

    oa = _paired(rows, ratio)
    lines = with_base_differences([x for x in summarise(rows, "quality", ratio) if x["method"] != "baseline"],
                                  rows, ratio, "quality")
    for x in lines:
        x["subject_minus"] = (None if x["method"] == subject else
                              paired_differences(oa.get((subject, *_key(x)[1:]), {}), oa.get(_key(x), {})))
    lines.sort(key=lambda x: (x["target_rate"] or 0, x["method"] != subject, x["method"]))
    return lines


def _quality_table(lines: list[dict[str, Any]], subject: str) -> list[str]:
    out = [f"| method | target rate | OA (%) | compression rate | speed-up | minus base (pts, paired) | "
           f"{subject} minus it (pts, paired) | repeats |", "|---|---|---|---|---|---|---|---|"]
    for x in lines:
        if not x["n"]:
            out.append(f"| {x['method']} | {x['target_rate']:g}x | unreachable | - | - | - | - | 0/{x['of']} |")
            continue
        vs = "(itself)" if x["subject_minus"] is None else _pts(x["subject_minus"])
        out.append(f"| {x['method']} | {x['target_rate']:g}x | {_pm(x['oa'], 2, pct=True)} | "
                   f"{mean_std(x['rate'])[0]:.2f}x | {_pm(x['speedup'], 2)} | {_pts(x['vs_base'])} | {vs} | "
                   f"{x['n']}/{x['of']} |")
    out += ["", "Paired: the difference on each split, then mean +- sample std over the splits; (w/n): splits "
            "where the first is strictly ahead, of those both finished."]
    return out


def rank_lines(rows: list[dict[str, Any]], ratio: float) -> list[str]:
    """Trial score against OA after the full fine-tune, per searched method and rate (mean over repeats)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        if r["train_ratio"] == ratio and r.get("status") == "ok" and r.get("rank"):
            groups[(r["method"], r.get("target_rate"))].append(r["rank"])
    if not groups:
        return []
    zero = any(g.get("zero_shot") for ranks in groups.values() for g in ranks)
    out = ["| searched cell | target rate | trials fine-tuned in full | Spearman (test OA) | Kendall (test OA) | "
           "Spearman (val OA) | " + ("zero-shot score: Spearman (test OA) | " if zero else "") + "repeats |",
           "|---|---|---|---|---|---|" + ("---|" if zero else "") + "---|"]
    for (method, rate), ranks in sorted(groups.items(), key=lambda kv: (kv[0][1] or 0, kv[0][0])):
        def col(key: str, stat: str, of: str | None = None) -> str:
            found = [g[of] if of else g for g in ranks if not of or g.get(of)]
            return _pm([g[key][stat] for g in found if g[key][stat] is not None], 2)
        out.append(f"| {method} | {rate:g}x | {mean_std([g['trials'] for g in ranks])[0]:.0f} | "
                   f"{col('test_oa', 'spearman')} | {col('test_oa', 'kendall')} | {col('val_oa', 'spearman')} | "
                   + (f"{col('test_oa', 'spearman', 'zero_shot')} | " if zero else "") + f"{len(ranks)} |")
    return out


def uniform_lines(rows: list[dict[str, Any]], ratio: float) -> list[str]:
    """Each searched cell against the uniform configuration its own search fine-tuned at the same budget
    (``--search-baseline``), paired by split, with the compute each side got and where the search spent its own
    (:mod:`search.compute`). Empty when no cell ran the baseline."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        u = r.get("uniform")
        if r["train_ratio"] == ratio and r.get("status") == "ok" and u and u.get("test_oa") is not None:
            budget = (r.get("search") or {}).get("compute")  # a budgeted search's --compute (search.spending)
            groups[(r["method"], r.get("target_rate"), u.get("compute") + (f", --compute {budget}" if budget else ""))
                   ].append(r)
    if not groups:
        return []
    out = ["| searched cell | target rate | baseline compute | searched: test OA | uniform: test OA | "
           "searched minus uniform (pts, paired) | epochs: search / uniform | search exploring | "
           "wall min: search / uniform | rates: searched / uniform | repeats |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for (method, rate, compute), cells in sorted(groups.items(), key=lambda kv: (kv[0][1] or 0, kv[0][0])):
        diff = [100 * (r["test_oa"] - r["uniform"]["test_oa"]) for r in cells]
        spent = [r.get("compute") or {} for r in cells]
        share = [c["exploration_share"] for c in spent if c.get("exploration_share") is not None]
        out.append(f"| {method} | {rate:g}x | {compute} | {_pm([r['test_oa'] for r in cells], 2, pct=True)} | "
                   f"{_pm([r['uniform']['test_oa'] for r in cells], 2, pct=True)} | {_pm(diff, 2)} "
                   f"({sum(d > 0 for d in diff)}/{len(diff)}) | "
                   f"{_pm([c.get('search_epochs', 0.0) for c in spent], 0)} / "
                   f"{_pm([r['uniform'].get('epochs') or 0 for r in cells], 0)} | "
                   f"{_pm([100 * x for x in share], 0)}% | "
                   f"{_pm([c.get('search_seconds', 0.0) / 60 for c in spent], 1)} / "
                   f"{_pm([(c.get('seconds') or {}).get('baseline', 0.0) / 60 for c in spent], 1)} | "
                   f"{_pm([r.get('compression_rate') or 0.0 for r in cells], 2)}x / "
                   f"{_pm([r['uniform'].get('compression_rate') or 0.0 for r in cells], 2)}x | {len(cells)} |")
    return out


def budget_lines(rows: list[dict[str, Any]], ratio: float) -> list[str]:
    """How each budgeted searched cell (``--search-compute``) spent its budget: the candidates it explored (its
    trials and the uniform configuration), the finalist's epochs, and how often the finalist was the uniform
    candidate (:mod:`search.spending`). Empty when no cell had a budget."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        search = r.get("search") or {}
        if r["train_ratio"] == ratio and r.get("status") == "ok" and search.get("compute"):
            groups[(r["method"], r.get("target_rate"), search["compute"])].append(r)
    if not groups:
        return []
    out = ["| searched cell | target rate | budget | candidates explored | epochs exploring | finalist's epochs | "
           "finalist was the uniform candidate | repeats |", "|---|---|---|---|---|---|---|---|"]
    for (method, rate, budget), cells in sorted(groups.items(), key=lambda kv: (kv[0][1] or 0, kv[0][0])):
        spent = [(r.get("compute") or {}).get("epochs") or {} for r in cells]
        uniform = sum(1 for r in cells if isinstance(r["search"].get("picked_trial"), int)
                      and r["search"]["picked_trial"] < 0)
        out.append(f"| {method} | {rate:g}x | {budget} | {_pm([r['search'].get('trials', 0) + 1 for r in cells], 0)} | "
                   f"{_pm([e.get('trials', 0.0) for e in spent], 0)} | {_pm([e.get('final', 0.0) for e in spent], 0)} | "
                   f"{uniform}/{len(cells)} | {len(cells)} |")
    return out


def pick_lines(rows: list[dict[str, Any]], ratio: float) -> list[str]:
    """How much the final choice cost, per searched method, rate and KD: the chosen model's test OA
    against its finalists' (every finalist is fine-tuned in full and tested, but chosen on validation
    OA alone; the test OA of the others is bookkeeping, never a choice)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        finalists = [f for f in (r.get("search") or {}).get("finalists") or () if f.get("test_oa") is not None]
        if r["train_ratio"] == ratio and r.get("status") == "ok" and len(finalists) > 1:
            groups[(r["method"], r.get("target_rate"), bool(r["kd"]))].append(
                {"chosen": r["test_oa"], "val": r.get("val_oa"), "tests": [f["test_oa"] for f in finalists]})
    if not groups:
        return []
    out = ["| searched cell | target rate | KD | finalists | chosen: val OA | chosen: test OA | "
           "finalists' mean test OA | best finalist's test OA | chosen minus best finalist (pts) | "
           "chosen was a best finalist | repeats |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for (method, rate, kd), picks in sorted(groups.items(), key=lambda kv: (kv[0][1] or 0, kv[0][0], kv[0][2])):
        lost = [g["chosen"] - max(g["tests"]) for g in picks]
        out.append(f"| {method} | {rate:g}x | {'yes' if kd else 'no'} | "
                   f"{mean_std([len(g['tests']) for g in picks])[0]:.0f} | "
                   f"{_pm([g['val'] for g in picks], 2, pct=True)} | "
                   f"{_pm([g['chosen'] for g in picks], 2, pct=True)} | "
                   f"{_pm([statistics.fmean(g['tests']) for g in picks], 2, pct=True)} | "
                   f"{_pm([max(g['tests']) for g in picks], 2, pct=True)} | {_pm(lost, 2, pct=True)} | "
                   f"{sum(x > -1e-9 for x in lost)}/{len(picks)} | {len(picks)} |")
    return out


def _params(f: dict[str, Any]) -> float:
    return f.get("params") or 0.0


# ways to choose a searched cell's model among its finalists, replayed from their records (every finalist is
# fine-tuned in full and tested): the study's own rule first (search.crossval.chosen_row's, without folds). A
# rule is a sort key; max() keeps the first finalist among equals, as chosen_row does.
PICK_RULES: dict[str, Any] = {
    "validation OA, ties to fewer params (the study's)": choice_key,
    "validation OA, ties to the better trial score": lambda f: (f["val_oa"], f["search_val_oa"]),
    "validation OA, ties to more params": lambda f: (f["val_oa"], _params(f)),
    "trial score": lambda f: (f["search_val_oa"], f["val_oa"], -_params(f)),
    "validation OA + trial score": lambda f: (f["val_oa"] + f["search_val_oa"], -_params(f)),
}


def replay_pick(finalists: list[dict[str, Any]], rule: str) -> dict[str, Any]:
    """The finalist ``rule`` (a :data:`PICK_RULES` name) chooses."""
    return max(finalists, key=PICK_RULES[rule])


def replayable(row: dict[str, Any]) -> list[dict[str, Any]]:
    """A finished searched cell's finalists, when a choice among them can be replayed (two or more, each
    with its test, validation and trial score); else []."""
    finalists = (row.get("search") or {}).get("finalists") or []
    ok = [f for f in finalists if all(f.get(k) is not None for k in ("test_oa", "val_oa", "search_val_oa"))]
    return ok if row.get("status") == "ok" and len(ok) > 1 and len(ok) == len(finalists) else []


def rule_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Each :data:`PICK_RULES` rule replayed on every searched cell in ``rows`` (pooled over methods, rates
    and ratios): its choice's test OA minus the finalists' mean, and minus the study's rule's choice."""
    cells = [f for f in map(replayable, rows) if f]
    if not cells:
        return []
    first = next(iter(PICK_RULES))
    own = [replay_pick(f, first)["test_oa"] for f in cells]
    out = ["| rule | chosen minus the finalists' mean (pts) | ahead of the mean | chosen minus the study's rule (pts) "
           "| ahead / behind the study's rule | cells |", "|---|---|---|---|---|---|"]
    for rule in PICK_RULES:
        chosen = [replay_pick(f, rule)["test_oa"] for f in cells]
        vs_mean = [c - statistics.fmean(x["test_oa"] for x in f) for c, f in zip(chosen, cells)]
        vs_own = [c - o for c, o in zip(chosen, own)]
        out.append(f"| {rule} | {_pm(vs_mean, 2, pct=True)} | {sum(d > 1e-9 for d in vs_mean)}/{len(cells)} | "
                   f"{_pm(vs_own, 2, pct=True)} | {sum(d > 1e-9 for d in vs_own)} / {sum(d < -1e-9 for d in vs_own)} | "
                   f"{len(cells)} |")
    return out


_TITLES = {"baselines": "Baselines: classic networks trained from scratch",
           "families": "Weight vs local vs global compression",
           "pruning": "Pruning methods at matched compression rates, with and without distillation",
           "augment": "Augmentation ablation (colour jitter off in all three variants)",
           "quality": "Search quality: the search against the baselines at the same budget, paired by split"}


def _plot(lines: list[dict[str, Any]], path: Path, x_key: str, x_label: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    series: dict[str, list] = defaultdict(list)
    for x in lines:
        if x["n"]:
            series[_label(x) + (" + KD" if x["kd"] and x["family"] == "pruning" else "")].append(x)
    for name, xs in sorted(series.items()):
        pts = sorted((mean_std(x[x_key])[0], *mean_std(x["oa"])) for x in xs)
        ax.errorbar([p[0] for p in pts], [100 * p[1] for p in pts], yerr=[100 * p[2] for p in pts], marker="o",
                    capsize=3, label=name, linestyle="-" if len(pts) > 1 else "none")
    ax.set_xscale("log")
    ax.set_xlabel(x_label)
    ax.set_ylabel("test OA (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(prep: Any, rows: list[dict[str, Any]], study_dir: Path) -> dict[str, Path]:
    """``results.csv`` (one line per cell), ``tables.md``, ``summary.csv`` and the plots; returns their paths."""
    c = prep.config
    out: dict[str, Path] = {}
    results = study_dir / "results.csv"
    with results.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=_CSV_KEYS, extrasaction="ignore")
        w.writeheader()
        for r in sorted(rows, key=lambda r: r["id"]):
            w.writerow({k: r.get(k) for k in _CSV_KEYS})
    out["results_csv"] = results
    md = [f"# Study {study_dir.name}", "",
          f"{prep.data.name} ({prep.data.num_classes} classes), {c.image_size} px, {c.model} compressed; "
          f"{c.repeats} seeded split(s) per training ratio; from scratch {c.epochs} epochs, every compressed model "
          f"fine-tuned {c.finetune_epochs} epochs"
          + (f" but the searched cells, which spend a compute budget of {c.search.compute} each (search --compute: "
             "their finalist and uniform baseline trained for what it leaves)" if c.search.compute else "")
          + ". OA on the test part of each split (mean +- sample std over the "
          "repeats); compression rate = original params / compressed params (non-zero params for magnitude "
          "pruning); speed-up measured beside the base on this CPU, 1 thread, batch 1.", ""]
    summary_rows = []
    from search.study.cells import EXPERIMENTS

    ratios = sorted({*prep.ratios, *(r["train_ratio"] for r in rows)})
    # every experiment with rows, not only this run's: a study grown over several runs keeps its tables
    for exp in [e for e in EXPERIMENTS if e in c.experiments or any(e in r.get("experiments", ()) for r in rows)]:
        for ratio in ratios:
            lines = summarise(rows, exp, ratio)
            if not lines:
                continue
            if exp == "quality":
                md += [f"## {_TITLES[exp]}, training ratio {ratio:.0%}", "",
                       *_quality_table(quality_lines(rows, ratio, c.subject()), c.subject()), ""]
                ranks = rank_lines(rows, ratio)
                if ranks:
                    md += ["How well the search's trial score (validation OA after the short fine-tune) ranks "
                           "the OA after the full fine-tune:", "", *ranks, ""]
                uniform = uniform_lines(rows, ratio)
                if uniform:
                    md += ["Each searched cell against the uniform configuration its own search fine-tuned at the same "
                           "budget (same split, base and trial function; matched: for every epoch the search spent):",
                           "", *uniform, ""]
                budgeted = budget_lines(rows, ratio)
                if budgeted:
                    md += ["How each budgeted search spent its budget (search.spending: a share exploring - its trials "
                           "and the uniform configuration as one more candidate - and the rest on one finalist):", "",
                           *budgeted, ""]
            else:
                if exp in ("families", "pruning"):
                    with_base_differences(lines, rows, ratio, exp)
                md += [f"## {_TITLES[exp]}, training ratio {ratio:.0%}", "",
                       *_table(lines, exp, prep.data.num_classes), ""]
            for x in lines:
                for reason in x["unreachable"][:1]:
                    md.append(f"- {x['method']} at {x['target_rate']:g}x: {reason}")
                m, s = mean_std(x["oa"])
                summary_rows.append({"experiment": exp, "train_ratio": ratio, "method": x["method"],
                                     "network": x["network"], "kd": x["kd"], "target_rate": x["target_rate"],
                                     "augment": x["augment"], "n": x["n"], "of": x["of"], "oa_mean": m, "oa_std": s,
                                     "rate_mean": mean_std(x["rate"])[0], "speedup_mean": mean_std(x["speedup"])[0],
                                     "speedup_std": mean_std(x["speedup"])[1],
                                     "minus_base_mean": (x.get("vs_base") or {}).get("mean"),
                                     "minus_base_std": (x.get("vs_base") or {}).get("std"),
                                     "minus_base_n": (x.get("vs_base") or {}).get("n")})
            if md[-1]:  # after the unreachable notes; the table already ends in one
                md.append("")
            if picks := pick_lines([r for r in rows if exp in r.get("experiments", ())], ratio):
                md += ["The final choice of each searched cell: its finalists were all fine-tuned in full and "
                       "tested, and one chosen on validation OA alone:", "", *picks, ""]
                if rules := rule_lines([r for r in rows if exp in r.get("experiments", ())
                                        and r["train_ratio"] == ratio]):
                    md += ["Other rules replayed on the same finalists (no test OA is ever used to choose; the "
                           "study's rule is the first):", "", *rules, ""]
            if exp in ("families", "pruning", "quality"):
                for key, label, tag in (("rate", "compression rate (x, log)", "rate"),
                                        ("speedup", "measured speed-up (x, log)", "speedup")):
                    path = study_dir / f"{exp}-r{ratio:g}-oa-vs-{tag}.png"
                    _plot(lines, path, key, label, f"{_TITLES[exp]}, ratio {ratio:.0%}")
                    out[path.stem] = path
                    md.append(f"![{path.stem}]({path.name})")
                md.append("")
    tables = study_dir / "tables.md"
    tables.write_text("\n".join(md) + "\n")
    out["tables_md"] = tables
    summary = study_dir / "summary.csv"
    with summary.open("w", newline="") as fh:
        keys = list(summary_rows[0]) if summary_rows else ["experiment"]
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(summary_rows)
    out["summary_csv"] = summary
    return out
