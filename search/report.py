"""What a search tells its user: progress while it runs, the result it leaves, the final tables.

:class:`Reporter` is the seam between the pure ``search.driver.run`` and a terminal (or a test,
or a benchmark): the driver reports through it and prints nothing itself.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Sequence

if TYPE_CHECKING:
    from search.engines.base import TrialRecord

__all__ = ["Reporter", "TerminalReporter", "SearchResult", "cost_columns", "render", "render_table", "verdict_line"]

QUALITY_KEYS = ("val_oa", "test_oa", "search_val_oa", "cv_oa")
RATIO_KEYS = ("compression_rate", "speedup")


class Reporter:
    """What ``run`` tells the outside world; the default says nothing."""

    def message(self, text: str) -> None:
        """A line of progress worth showing (banner, base model, resume)."""

    def start(self, total: int, done: int) -> None:
        """The trial loop starts with ``done`` of ``total`` trials already finished."""

    def trial(self, row: Mapping[str, Any]) -> None:
        """A trial finished (any state)."""

    def close(self) -> None:
        """The trial loop ended."""

    def stage(self, name: str, detail: str) -> None:
        """The search entered a stage after its trials (``name``: ``"final"``); ``detail`` says what it does
        there (its ``message`` says the same as a line)."""


class TerminalReporter(Reporter):
    """A tqdm bar over trials (with ETA) and plain lines above it."""

    def __init__(self, *, progress: bool = True, stream: Any = None) -> None:
        self.progress = progress
        self.stream = stream or sys.stderr
        self.bar = None

    def message(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def start(self, total: int, done: int) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, initial=done, desc="trials", unit="trial", file=self.stream,
                        disable=not self.progress, dynamic_ncols=True)

    def trial(self, row: Mapping[str, Any]) -> None:
        if self.bar is None:
            return
        if row["state"] != "lost":  # a lost trial is run again as another: it does not count
            self.bar.update(1)
        post = {"last": f"#{row['number']} {row['state']}"}
        if row.get("hypervolume") is not None:
            post["hv"] = f"{row['hypervolume']:.4f}"
        if row.get("front") is not None:
            post["front"] = row["front"]
        self.bar.set_postfix(post, refresh=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


@dataclass
class SearchResult:
    """What a search leaves behind, and where."""

    study: str
    storage: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    out_dir: str
    artifact_uri: str
    objectives: list[tuple[str, str]]
    counts: dict[str, int] = field(default_factory=dict)
    front: list[dict[str, Any]] = field(default_factory=list)
    final: list[dict[str, Any]] = field(default_factory=list)
    base: dict[str, Any] = field(default_factory=dict)
    base_costs: dict[str, float] = field(default_factory=dict)
    hypervolume: float = 0.0
    interrupted: bool = False
    timing: dict[str, float] = field(default_factory=dict)
    trials: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    min_accuracy: float | None = None
    searched: list[str] = field(default_factory=list)  # cost keys budgeted or optimised
    hardware: str = "cpu"  # the costs.targets spec latency and speed-up were measured on
    hardware_fingerprint: dict[str, Any] = field(default_factory=dict)
    hardware_note: str = ""  # Target.describe()
    chosen: dict[str, Any] | None = None  # search.crossval.chosen_row: the final model a user ships
    rank_sample: list[dict[str, Any]] = field(default_factory=list)  # extra trials fine-tuned for ``rank``
    rank: dict[str, Any] = field(default_factory=dict)  # trial score vs final OA (tracking.stats.rank_correlation)
    halving: list[dict[str, Any]] = field(default_factory=list)  # the final stage's successive-halving rungs
    baseline: dict[str, Any] | None = None  # the uniform configuration fine-tuned alike (search.baseline)
    verdict: dict[str, Any] | None = None  # the chosen model minus the baseline (search.baseline.verdict)
    compute: dict[str, Any] = field(default_factory=dict)  # search.compute.Ledger.to_dict(): what the search spent


def stored_rows(trials: Sequence[TrialRecord]) -> list[dict[str, Any]]:
    """The report rows (:attr:`SearchResult.trials`) of the trials an earlier process finished, as
    ``search.state.Search.record`` wrote them, less the hypervolume and front size at the time; trials
    stored before the ``outcome`` attribute existed get their state from the engine's (infeasible shows as
    pruned). Interrupted trials have no row, as in the run that interrupted them."""
    rows = []
    for t in trials:
        if t.state not in ("complete", "pruned", "fail") or t.interrupted:
            continue
        old = {"complete": "complete", "pruned": "pruned"}.get(t.state, "lost" if t.lost else "failed")
        row: dict[str, Any] = {"number": t.number, "method": t.method or None, "state": t.outcome or old}
        if t.state == "complete":
            row.update(feasible=t.feasible, val_oa=t.values[0], costs=dict(t.costs), values=list(t.values))
        elif row["state"] == "pruned":
            row["val_oa"] = t.val_oa
            if t.screened:
                row["screened"] = True
        elif row["state"] in ("failed", "lost"):
            row["error"] = t.error or t.lost or ""
        rows.append(row)
    return rows


def verdict_line(v: Mapping[str, Any]) -> str:
    """Searched minus uniform, for a person: the test-OA difference in points, what each side costs and
    the compute each got; and, when the uniform model won, that its figures support shipping it."""
    diff = v.get("test_oa_minus_uniform")
    rates = [_fmt(x, "compression_rate") for x in v.get("compression_rate") or (None, None)]
    speed = [_fmt(x, "speedup") for x in v.get("speedup") or (None, None)]
    equal = ("at equal fine-tune length per model" if v["compute"] == "same" else "at equal compute")
    text = (f"searched minus uniform (test OA): {diff:+.2f} pts, trial {_trial(v['chosen_trial'])} against {v['baseline']} "
            f"({rates[0]} vs {rates[1]} compression, {speed[0]} vs {speed[1]} speed-up), {equal}: the search spent "
            f"{v['search_epochs']:.0f} epoch-equivalents, the baseline {v['baseline_epochs']:.0f}")
    if v["compute"] == "same":
        text += " (--baseline-compute matched, the default, gives it the search's)"
    val = v.get("val_oa_minus_uniform")
    if v.get("ship") == "uniform":
        text += (f"\nship models/uniform.pt: it leads the search's choice by {-val:.2f} pts on validation OA (the "
                 "choice reads validation alone; test OA only reports)")
    if diff is not None and diff < 0:
        text += ("\nthe uniform baseline beat the search's choice on the test split" +
                 (" and on validation: models/uniform.pt is the better model here" if val is not None and val < 0 else
                  " (validation OA tied them)" if val is not None and abs(val) < 1e-9 else
                  f" (validation OA ranked them the other way, by {val:+.2f} pts)" if val is not None else ""))
    return text


def _fmt(v: Any, key: str) -> str:
    """A table cell: OAs to 4 digits, ratios as 1.23x, costs in their registered unit."""
    if v is None or v == "":
        return "-"
    if key == "trial":
        return _trial(v)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if key in QUALITY_KEYS:
        return f"{v:.4f}"
    if key in RATIO_KEYS:
        return f"{v:.2f}x"
    unit = _cost_unit(key)
    if unit is None:
        return str(v) if isinstance(v, int) else f"{v:.4g}"
    if unit == "ms":
        return f"{v:.2f}"
    return _human(v) + ("B" if unit == "byte" else "")


def _trial(number: Any) -> str:
    """A final row's trial: its number; the uniform candidate of a ``--compute`` search (numbered below 0) as
    ``uniform``."""
    return "uniform" if isinstance(number, int) and not isinstance(number, bool) and number < 0 else str(number)


def _cost_unit(key: str) -> str | None:
    from costs.registry import get_cost, list_costs

    return get_cost(key).unit if key in list_costs() else None


def _human(v: float) -> str:
    for unit, f in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(v) >= f:
            return f"{v / f:.2f}{unit}"
    return f"{v:.4g}"


def cost_columns(rows: Sequence[Mapping[str, Any]], searched: Sequence[str] = ()) -> list[str]:
    """The cost columns of a front table: params and the compression rate, then every other budgetable
    cost of :mod:`costs`'s registry the rows carry; non-zero params only when ``searched`` (the
    budgeted and objective cost keys) holds it, as a search of weight-zeroing methods does."""
    from costs.registry import budget_metrics

    keys = ["params", "compression_rate"]
    for cost in budget_metrics().values():
        if cost.name in keys or not any(cost.name in r for r in rows):
            continue
        if cost.name == "nonzero_params" and cost.name not in searched:
            continue
        keys.append(cost.name)
    return keys


def render_table(rows: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> str:
    cells = [[k for k in keys]] + [[_fmt(r.get(k), k) for k in keys] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(keys))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render(result: SearchResult, stream: Any = None) -> None:
    stream = stream or sys.stdout
    c = result.counts
    print(f"\nstudy {result.study}: {c.get('finished', 0)} finished trial(s) "
          f"({c.get('complete', 0)} complete, {c.get('pruned', 0)} pruned/infeasible, {c.get('fail', 0)} failed"
          + (f", {c['interrupted']} interrupted" if c.get("interrupted") else "")
          + (f", {c['lost']} lost with their workers" if c.get("lost") else "")
          + (f"; {c['screened']} more screened before fine-tuning by their adaptive-BN score" if c.get("screened")
             else "")
          + f"); {c.get('inside_budget', 0)} of {c.get('complete', 0)} complete inside the budget"
          + (f", {c['above_floor']} of them at or above the accuracy floor {result.min_accuracy:g}"
             if "above_floor" in c else "")
          + f"; hypervolume {result.hypervolume:.4f}", file=stream)
    if result.final:
        keys = ["trial", "method", "test_oa", "val_oa", *(["cv_oa"] if any(r.get("cv_oa") is not None
                                                                          for r in result.final) else []),
                *cost_columns([result.base, *result.final], result.searched),
                "speedup"]
        table = result.hardware.startswith("lut:")
        if table and "latency_ms" in keys:
            keys.insert(keys.index("latency_ms") + 1, "latency_ms_predicted")
        where = (f"latency_ms and speedup measured on the target the table {result.hardware[4:]} was measured on, "
                 "latency_ms_predicted from the table" if table else f"latency_ms and speedup on --target {result.hardware}")
        uniform = [result.baseline] if result.baseline else []
        if uniform:
            keys.insert(keys.index("method") + 1, "epochs")
        print(f"\nPareto set after final fine-tuning (test split), beside the base model"
              + (" and the uniform baseline" if uniform else "") + f" ({where}):", file=stream)
        print(render_table([result.base, *result.final, *uniform], keys), file=stream)
        checked = [r for r in result.final if r.get("meets_budget") is not None]
        if checked:
            over = [str(r["trial"]) for r in checked if not r["meets_budget"]]
            print(f"as measured after the final fine-tuning, {len(checked) - len(over)} of {len(checked)} model(s) "
                  "meet the budget" + (f"; over it: trial(s) {', '.join(over)}" if over else ""), file=stream)
        if result.chosen:
            ch = result.chosen
            cv = ch.get("cv_oa") is not None
            by = (f"best OA cross-validated over {len(ch['cv_fold_oa'])} folds of the training part" if cv
                  else "best validation OA after the final fine-tune")
            print(f"chosen ({by}, inside the budget): trial {_trial(ch['trial'])} {ch['method']}, "
                  + (f"cross-validated OA {ch['cv_oa']:.4f} on {ch['cv_images']} images, " if cv else "")
                  + f"val OA {ch['val_oa']:.4f}, test OA {ch['test_oa']:.4f}, "
                  f"{_fmt(ch.get('compression_rate'), 'compression_rate')} compression", file=stream)
        if result.verdict:
            print(verdict_line(result.verdict), file=stream)
        if result.rank:
            t, v = result.rank["test_oa"], result.rank["val_oa"]

            def _c(d: Mapping[str, Any]) -> str:
                return ("n/a" if d["spearman"] is None else
                        f"Spearman {d['spearman']:+.2f}, Kendall {d['kendall']:+.2f}")
            print(f"trial score ({result.rank['fidelity_epochs']} fine-tune epoch(s), validation OA) against OA after "
                  f"{result.rank['final_epochs']} epochs, over {result.rank['trials']} trial(s): test OA {_c(t)}; "
                  f"validation OA {_c(v)}", file=stream)
            if result.rank.get("zero_shot"):
                z = result.rank["zero_shot"]
                print(f"zero-shot score (adaptive-BN validation OA before fine-tuning) against the same, over "
                      f"{z['trials']} trial(s): test OA {_c(z['test_oa'])}; validation OA {_c(z['val_oa'])}", file=stream)
            if result.rank.get("cv"):
                z = result.rank["cv"]
                print(f"cross-validated OA (the training part's folds) against the same, over {z['trials']} model(s): "
                      f"test OA {_c(z['test_oa'])}; validation OA {_c(z['val_oa'])}", file=stream)
    elif result.front:
        keys = ["trial", "method", "val_oa", *cost_columns(result.front, result.searched)]
        print("\nPareto set (validation split; no final stage run):", file=stream)
        print(render_table(result.front, keys), file=stream)
    elif c.get("inside_budget") and c.get("above_floor") == 0:
        best = max((t["val_oa"] for t in result.trials if t.get("state") == "complete"), default=float("nan"))
        print(f"no trial reached the accuracy floor (validation OA >= {result.min_accuracy:g}; best {best:.3f}): "
              "lower --min-accuracy, or raise --fidelity-epochs so trials train longer", file=stream)
    else:
        print("no complete trial inside the budget yet", file=stream)
    if result.hardware_note or result.hardware_fingerprint:
        device = result.hardware_fingerprint.get("device_name")
        print(f"\nlatency and speed-up measured on {result.hardware_note or result.hardware} (--target "
              f"{result.hardware}" + (f"; {device}" if device and device not in result.hardware_note else "") + ")",
              file=stream)
    if result.compute:
        from search.compute import Ledger

        print("\n" + Ledger.from_dict(result.compute).line(), file=stream)
    if "overhead_share" in result.timing:
        print(f"\nbookkeeping outside model compute: {100 * result.timing['overhead_share']:.1f}% of trial wall time",
              file=stream)
    for note in result.notes:
        print(note, file=stream)
    if result.interrupted:
        print("interrupted: completed trials are stored; rerun with --resume to continue", file=stream)
    print(f"MLflow: {result.tracking_uri}  experiment {result.experiment_id}  parent run {result.parent_run_id}", file=stream)
    print(f"artifacts: {result.artifact_uri}  (local copy: {result.out_dir}/pareto)", file=stream)
    if any(r.get("file") for r in result.final):
        print(f"models: {result.out_dir}/models  (trial-N.pt" + (", uniform.pt" if result.baseline else "")
              + ": spaces.load_compressed(path); .onnx beside where the exporter takes the model)", file=stream)
    print(f"Optuna storage: {result.storage}  study {result.study}", file=stream)
