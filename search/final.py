"""The end of a search: fine-tune the Pareto set longer, test it, ship it, and write the front.

The final stage runs the same trial function as the trials (one compress path), with more
epochs, no early stop, and the test split, which nothing before it touches. Each final model is
written as files a user deploys (plan file + ONNX) and logged to MLflow; the front goes to
``<study>/pareto/`` (CSV, JSON, PNG, HTML) and to the parent run.
"""

from __future__ import annotations

import inspect
import json
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from search.config import SearchConfig
from search.crossval import chosen_row
from search.engines.base import TrialRecord
from search.executors import TrialFn
from search.report import SearchResult
from search.compute import Ledger
from search.request import TrialRequest, TrialResult

if TYPE_CHECKING:
    from search.setup import PreparedSearch

__all__ = ["front_row", "spread_pick", "final_candidates", "final_request", "final_stage", "write_artifacts",
           "chosen_row"]


def front_row(t: TrialRecord, base_costs: Mapping[str, float]) -> dict[str, Any]:
    """A finished trial as a row of the front: its OA, its costs, its compression rate."""
    from costs.registry import budget_metrics

    costs = dict(t.costs)
    row = {"trial": t.number, "method": t.method, "val_oa": t.values[0], "mlflow_run_id": t.mlflow_run_id}
    row.update({c.name: costs[c.name] for c in budget_metrics().values() if c.name in costs})
    if costs.get("params"):
        row["compression_rate"] = base_costs["params"] / costs["params"]
    return row


def spread_pick(front: Sequence[Any], k: int | None, accuracy: Callable[[Any], float] = lambda t: t.values[0]) -> list[Any]:
    """``k`` models of a front sorted by cost (cheapest first), spread evenly along it.

    The cheapest and the most accurate models are kept, the rest evenly spaced between, so a
    capped final stage still shows the whole trade-off and its best model.
    """
    n = len(front)
    if k is None or k >= n:
        return list(front)
    if k <= 0:
        return []
    best = max(range(n), key=lambda i: accuracy(front[i]))
    if k == 1:
        return [front[best]]
    picks = {round(i * (n - 1) / (k - 1)) for i in range(k)}
    if best not in picks:
        picks.remove(min(picks - {0}, key=lambda i: abs(i - best)))
        picks.add(best)
    return [front[i] for i in sorted(picks)]


def final_candidates(config: SearchConfig, front: Sequence[Any], eligible: Sequence[Any]) -> tuple[list[Any], list[Any]]:
    """The trials the final stage fine-tunes: ``(final set, rank sample)``.

    The final set: ``final_pick`` ``spread`` takes ``final_max`` models spread along the front
    (:func:`spread_pick`; the front is sorted by cost), ``top`` the ``final_max`` eligible trials
    (finished, inside the budget) with the best trial score, on the front or not - where the
    budget's best model is decided; ``top-per-method`` the same taken in turn from each method
    combination (each one's best first, by score; then each one's second...), since a short
    fine-tune can rank methods that recover at different speeds in the wrong order, and only the
    full fine-tune should decide between them. The rank sample: ``rank_sample`` more eligible trials, spread
    evenly over the trial scores (best and worst kept), fine-tuned only to measure how well the
    trial score ranks the final OA.
    """
    if config.final_pick in ("top", "top-per-method"):
        ranked = sorted(eligible, key=lambda t: (-t.values[0], t.number))
        if config.final_pick == "top-per-method":
            seen: dict[str, int] = {}
            turn: dict[int, int] = {}
            for t in ranked:  # a trial's turn: how many of its method combination scored better
                method = t.method
                turn[t.number] = seen.get(method, 0)
                seen[method] = turn[t.number] + 1
            ranked = sorted(ranked, key=lambda t: (turn[t.number], -t.values[0], t.number))
        chosen = ranked if config.final_max is None else ranked[:max(config.final_max, 0)]
    else:
        chosen = spread_pick(front, config.final_max)
    taken = {t.number for t in chosen}
    rest = sorted((t for t in eligible if t.number not in taken), key=lambda t: (t.values[0], t.number))
    return chosen, spread_pick(rest, config.rank_sample) if config.rank_sample else []


def final_stage(s: PreparedSearch, result: SearchResult, front: list[TrialRecord], *, trial_fn: TrialFn,
                say: Callable[[str], None], eligible: Sequence[TrialRecord] = (),
                stage: Callable[[str, str], None] = lambda name, detail: None, ledger: Ledger | None = None,
                baseline_epochs: int | None = None) -> None:
    """Fine-tune the final set longer and evaluate it - and the base model - on the test split; then the
    uniform baseline alike (:mod:`search.baseline`, unless ``--no-baseline``); with ``rank_sample``, also the
    rank sample, and the rank correlation of trial score with final OA.

    ``s``: the prepared search (its config, tracker, base checkpoint, data and split, and the request
    template, whose paths this process reads); ``front``: the Pareto trials sorted by cost; ``eligible``:
    every trial that may be picked (``final_pick`` top), the front when empty; ``ledger``: the search's
    compute so far (:mod:`search.compute`), to which every fine-tune here is added; ``baseline_epochs``: the
    compute-matched baseline's epochs when the search's are not the measure (a wall-time ``--compute``)."""
    from rsc.checkpoint import load_checkpoint, model_from_checkpoint
    from costs.registry import CostSettings, budget_metrics, measure
    from rsc.loaders import make_loaders
    from rsc.metrics import evaluate
    from costs.targets import compare_latency_on, parse_target
    from search.budget import REPAIR_PASSES, meets_budget, parse_budgets, repair_aim

    config, tracker, data, split, template = s.config, s.tracker, s.data, s.split, s.request
    ledger = ledger if ledger is not None else Ledger()
    base = model_from_checkpoint(load_checkpoint(s.ckpt)).eval()
    _, val, test = make_loaders(data, split, batch_size=config.batch_size, seed=config.seed)
    settings = CostSettings(image_size=data.image_size)
    cost_keys = list(c.name for c in budget_metrics().values())
    hardware = template.hardware or "cpu"
    costs = measure(base, [k for k in cost_keys if k != "latency_ms"], settings)
    target = parse_target(hardware)
    predicted = {}
    if "latency_ms" in cost_keys:  # on the search's latency target, as every trial's (a table's: where it was measured)
        costs["latency_ms"] = compare_latency_on(target.measured, {"model": base}, data.image_size)["model"]
        if target.table is not None:
            predicted["latency_ms_predicted"] = compare_latency_on(target, {"model": base}, data.image_size)["model"]
    result.base = {"trial": "base", "method": config.model,
                   "val_oa": evaluate(base, val, num_classes=data.num_classes).oa,
                   "test_oa": evaluate(base, test, num_classes=data.num_classes).oa,
                   **{k: costs[k] for k in cost_keys}, **predicted, "compression_rate": 1.0, "speedup": 1.0}
    tracker.log_metrics(result.parent_run_id, {"base_val_oa": result.base["val_oa"], "base_test_oa": result.base["test_oa"]})
    chosen, sample = final_candidates(config, front, eligible or front)
    if not chosen:
        return
    what = {"spread": "Pareto model(s)", "top": "best-scored model(s) inside the budget"}.get(
        config.final_pick, "best-scored model(s) of each method inside the budget")
    detail = (f"fine-tuning {len(chosen)} {what}"
              + (f" by successive halving over {config.final_rungs} rungs" if config.final_rungs > 1 and len(chosen) > 1
                 else "")
              + (f" and {len(sample)} more for the rank correlation" if sample else "")
              + f", {config.final_epochs} epochs at the end, then the test split")
    say(f"final stage: {detail}")
    stage("final", detail)
    keep_model = _accepts_return_model(trial_fn)
    budgets = parse_budgets(config.budgets)
    chosen = _halve(config, result, chosen, template, trial_fn, say, ledger)
    ranked: list[dict[str, Any]] = []
    plans: dict[int, Any] = {}
    picked = {t.number for t in chosen}
    def fine_tune(t: TrialRecord, part: str, request: TrialRequest | None = None,
                  **extra: Any) -> tuple[dict[str, Any], Any, TrialResult] | None:
        try:
            request = (request.replace(**extra) if request is not None else
                       final_request(template, t, seed=config.seed, epochs=config.final_epochs, evaluate_test=True,
                                     **extra)).to_dict()
            raw = trial_fn(request, return_model=True) if keep_model else trial_fn(request)
            model = raw.pop("model", None)
            out = TrialResult.from_dict(raw)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # noqa: BLE001
            say(f"final stage: {_name(t)} failed: {type(exc).__name__}: {exc}")
            return None
        spent = out.epochs_run if out.epochs_run is not None else request["epochs"]
        ledger.add(part, epochs=spent, seconds=out.seconds.get("total", 0.0))
        costs = out.costs
        row = {"trial": t.number, "method": t.method, "val_oa": out.val_oa,
               "test_oa": out.test_oa, **{k: costs.get(k) for k in cost_keys},
               **({"latency_ms_predicted": costs["latency_ms_predicted"]} if "latency_ms_predicted" in costs else {}),
               "compression_rate": out.compression_rate, "speedup": out.speedup,
               "search_val_oa": t.values[0] if t.values else None, "mlflow_run_id": t.mlflow_run_id,
               **({"zero_shot_oa": t.zero_shot_oa} if t.zero_shot_oa is not None else {}),
               "hardware": hardware, "epochs": int(request["epochs"])}
        row["meets_budget"] = meets_budget(budgets, row, result.base, out.to_dict())
        return row, model, out

    def tuned(t: TrialRecord, part: str, request: TrialRequest | None = None
              ) -> tuple[dict[str, Any], Any, TrialResult] | None:
        """``t`` fine-tuned, and - over a latency budget the table under-predicted - re-projected lower by that
        error and fine-tuned again (``--no-latency-repair``: not)."""
        done = fine_tune(t, part, request)
        if done is None:
            return None
        first, passes = done[0], 0
        while part != "rank_sample" and config.latency_repair and passes < REPAIR_PASSES:
            aim = repair_aim(budgets, done[0], result.base, done[2].to_dict())
            if aim is None:  # inside, or over another budget than latency's
                break
            before = done[0]
            again = fine_tune(t, part, request, limits=template.limits, target={"latency_ms": aim})
            if again is None:
                break
            done, passes = again, passes + 1
            done[0]["repaired"] = {"latency_ms_before": first["latency_ms"], "aim_ms_predicted": aim,
                                   "projection": done[2].projection, "passes": passes}
            say(f"final stage: {_name(t)} measured {before['latency_ms']:.3f} ms, over the latency budget "
                f"(the table predicted {before['latency_ms_predicted']:.3f}); re-projected onto {aim:.3f} ms as "
                f"predicted and fine-tuned again: {done[0]['latency_ms']:.3f} ms, "
                + ("inside it" if done[0]["meets_budget"] else "still over it"))
        return done

    for t in [*chosen, *sample]:
        extra = t.number not in picked
        done = tuned(t, "rank_sample" if extra else "final")
        if done is None:
            continue
        row, model, out = done
        ranked.append(row)
        plans[t.number] = out.plan or t.plan
        run_id = t.mlflow_run_id
        if run_id:
            tracker.log_metrics(run_id, {f"final_{k}": v for k, v in row.items()
                                         if isinstance(v, (int, float)) and k not in ("trial",)})
        if extra:
            result.rank_sample.append(row)
            continue
        result.final.append(row)
        if model is not None:
            _ship_model(config, tracker, result, row, model, out.plan, t.number, data.image_size, say,
                        name="uniform-candidate" if t.number < 0 else None)
    if config.final_folds:  # the choice made on every training image (search.crossval)
        from search.crossval import cross_validate

        trials = {t.number: t for t in [*chosen, *sample]}
        cross_validate(config, ranked, plans, lambda n, **x: final_request(
            template, trials[n], seed=config.seed, epochs=config.final_epochs, evaluate_test=False, **x), trial_fn,
            data, split, template.device or "cpu", say,
            spent=lambda part, epochs, seconds: ledger.add(part, epochs=epochs, seconds=seconds))
        for row in ranked:
            if row.get("cv_oa") is not None and row.get("mlflow_run_id"):
                tracker.log_metrics(row["mlflow_run_id"], {"final_cv_oa": row["cv_oa"]})
    result.chosen = chosen_row(result.final)
    if config.baseline and result.final:
        _uniform_baseline(s, result, base, ledger, tuned, say, epochs=baseline_epochs)
    from search.baseline import base_note

    note = base_note(result.base, [*result.final, *([result.baseline] if result.baseline else [])],
                     ledger.base_epochs)
    if note:
        result.notes.append(note)
        say(note)
    if config.rank_sample:
        from tracking.stats import rank_correlation

        score = [r["search_val_oa"] for r in ranked]
        result.rank = {"trials": len(ranked), "final_epochs": config.final_epochs,
                       "fidelity_epochs": config.fidelity_epochs,
                       "test_oa": rank_correlation(score, [r["test_oa"] for r in ranked]),
                       "val_oa": rank_correlation(score, [r["val_oa"] for r in ranked])}
        metrics = {f"rank_{k}_{m}": result.rank[k][m] for k in ("test_oa", "val_oa") for m in ("spearman", "kendall")
                   if result.rank[k][m] is not None}
        for name in ("zero_shot", "cv"):  # EagleEye's adaptive-BN score before any fine-tuning; the folds' OA
            scored = [r for r in ranked if r.get(f"{name}_oa") is not None]
            if scored:
                got = [r[f"{name}_oa"] for r in scored]
                result.rank[name] = {"trials": len(scored), **{k: rank_correlation(got, [r[k] for r in scored])
                                                               for k in ("test_oa", "val_oa")}}
                metrics.update({f"rank_{name}_{k}_{m}": result.rank[name][k][m] for k in ("test_oa", "val_oa")
                                for m in ("spearman", "kendall") if result.rank[name][k][m] is not None})
        if metrics:
            tracker.log_metrics(result.parent_run_id, metrics)


def _uniform_baseline(s: PreparedSearch, result: SearchResult, base: Any, ledger: Ledger,
                      tuned: Callable[..., tuple[dict[str, Any], Any, TrialResult] | None],
                      say: Callable[[str], None], epochs: int | None = None) -> None:
    """The uniform configuration at the same budget, fine-tuned like the finalists (``--baseline-compute
    same``) or for the search's epochs (``matched``), tested, shipped as ``models/uniform.pt``, and the verdict
    searched minus uniform (:mod:`search.baseline`) on the result, the parent run and the plot."""
    from search.baseline import BASELINE_TRIAL, uniform_request, verdict

    config, tracker = s.config, s.tracker
    searched = ledger.matched_epochs()
    if config.baseline_compute == "same":
        epochs = config.final_epochs
    elif epochs is None:
        epochs = max(1, round(searched))
    found = uniform_request(s.request, methods=config.space_methods()[0], seed=config.seed, arch=s.arch, base=base,
                            context=s.context, epochs=epochs)
    if found is None:
        result.notes.append("note: no uniform baseline: " + (
            "no searched method has a uniform configuration (channel pruning or Tucker-2)" if s.request.limits else
            "the budget has no counted cost to project it onto (a latency budget needs --target lut:TABLE)"))
        return
    request, label = found
    how = ("like each finalist" if config.baseline_compute == "same" else
           f"for the search's {searched:.0f} epoch-equivalents (compute-matched)" if epochs == max(1, round(searched))
           else f"for the search's {ledger.search_seconds() / 60:.1f} min at its own pace (compute-matched)")
    k = int(config.baseline_k)
    each = max(1, round(epochs / k))
    say(f"final stage: the uniform baseline ({label}) projected onto the budget, fine-tuned {epochs} epochs {how}"
        + (f", as the best by validation OA of {k} fine-tunes of {each} epochs (seeds differ)" if k > 1 else ""))
    runs = []
    for i in range(k):  # best-of-k: k seeds share the epochs; validation OA alone chooses
        again = request if k == 1 else request.replace(epochs=each, seed=request.seed + BEST_OF_STRIDE * i)
        done = tuned(TrialRecord(number=BASELINE_TRIAL, state="complete", method=label), "baseline", again)
        if done is not None:
            runs.append(done)
    if not runs:
        return
    row, model, out = max(runs, key=lambda d: (d[0]["val_oa"], -runs.index(d)))
    row.update(trial="uniform", search_val_oa=None, projection=out.projection)
    if k > 1:
        row.update(best_of=k, runs=[{key: d[0].get(key) for key in ("val_oa", "test_oa", "epochs")} for d in runs])
    result.baseline = row
    if model is not None:
        _ship_model(config, tracker, result, row, model, out.plan, BASELINE_TRIAL, s.data.image_size, say,
                    name="uniform")
    result.verdict = verdict(result.chosen, row, compute=config.baseline_compute, search_epochs=ledger.search_epochs(),
                             baseline_epochs=ledger.epochs.get("baseline", 0.0))
    metrics = {f"baseline_{k}": v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if result.verdict:
        metrics.update({k: v for k, v in result.verdict.items() if k.endswith("_minus_uniform")})
        metrics["ship_uniform"] = float(result.verdict["ship"] == "uniform")
    tracker.log_metrics(result.parent_run_id, metrics)


#: The seed offset between the fine-tunes of a best-of-k baseline (``--baseline-k``): past any trial's seed block.
BEST_OF_STRIDE = 1_000_003


def _name(t: TrialRecord) -> str:
    from search.baseline import BASELINE_TRIAL, UNIFORM_CANDIDATE

    return {BASELINE_TRIAL: "the uniform baseline", UNIFORM_CANDIDATE: "the uniform candidate"}.get(
        t.number, f"trial {t.number}")


def final_request(template: TrialRequest, t: TrialRecord, *, seed: int, epochs: int, evaluate_test: bool,
                  **changes: Any) -> TrialRequest:
    """Trial ``t``'s plan fine-tuned again from the base: no projection, no early stop, the trial's own seed
    (:func:`search.request.trial_seed` of the search's ``seed``; the uniform candidate's:
    :func:`search.baseline.record_seed`); ``changes`` override the rest."""
    from search.baseline import record_seed

    return template.replace(**{"plan": t.plan, "limits": {}, "epochs": epochs, "seed": record_seed(seed, t.number),
                               "early_stop": None,
                               "zero_shot": False,  # the trial's score is already kept; nothing to screen
                               "evaluate_test": evaluate_test, **changes})


def _halve(config: SearchConfig, result: SearchResult, chosen: list[TrialRecord], template: TrialRequest,
           trial_fn: TrialFn, say: Callable[[str], None], ledger: Ledger) -> list[TrialRecord]:
    """Successive halving over fine-tune epochs before the final fine-tune (``final_rungs`` > 1).

    Rung i of R fine-tunes the candidates left for ``final_epochs / 2**(R-1-i)`` epochs (at least one)
    from the base, scores them on the validation split (no test, no timing) and keeps the better half;
    the last rung is the final fine-tune itself. Four rungs from 8 candidates at 20 epochs cost
    8x3 + 4x5 + 2x10 (+ 1x20) epochs: 84 epochs: eight candidates for the price of about four full fine-tunes.
    Each rung is recorded in ``result.halving``.
    """
    import math

    rungs = int(config.final_rungs)
    for i in range(rungs - 1):
        if len(chosen) <= 1:
            break
        epochs = max(1, math.ceil(config.final_epochs / 2 ** (rungs - 1 - i)))
        scores: dict[int, float] = {}
        for t in chosen:
            try:
                out = TrialResult.from_dict(trial_fn(final_request(template, t, seed=config.seed, epochs=epochs,
                                                                   evaluate_test=False, latency=False).to_dict()))
                ledger.add("halving", epochs=out.epochs_run if out.epochs_run is not None else epochs,
                           seconds=out.seconds.get("total", 0.0))
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as exc:  # noqa: BLE001 - a candidate that fails a rung drops out
                say(f"final stage: trial {t.number} failed at rung {i + 1}: {type(exc).__name__}: {exc}")
                continue
            scores[t.number] = float(out.val_oa)
        alive = sorted((t for t in chosen if t.number in scores), key=lambda t: (-scores[t.number], t.number))
        kept = alive[:math.ceil(len(chosen) / 2)]
        result.halving.append({"rung": i + 1, "epochs": epochs, "val_oa": {str(n): v for n, v in scores.items()},
                               "kept": [t.number for t in kept]})
        say(f"final stage, rung {i + 1}/{rungs}: {len(scores)} candidate(s) fine-tuned {epochs} epoch(s), "
            f"kept {len(kept)}: trial(s) {', '.join(str(t.number) for t in kept)}")
        chosen = kept
    return chosen


def _ship_model(config: SearchConfig, tracker: Any, result: SearchResult, row: dict[str, Any], model: Any,
                plan: Mapping[str, Any] | None, number: int, image_size: int, say: Callable[[str], None],
                name: str | None = None) -> None:
    """Write a final model as files a user deploys, and log it to MLflow.

    ``<study>/models/trial-N.pt`` (``name``.pt: ``uniform.pt`` for the baseline; base + plan + state dict;
    :func:`spaces.load_compressed`, ``weights_only``) always, ``trial-N.onnx`` where the exporter takes the model; both go to the
    parent run's ``models/`` artifacts. With ``log_models`` the model is also an MLflow model:
    the ``pytorch`` flavour where MLflow can serialise it (not a post-training step's packed int8
    weights), else a pyfunc over the plan file.
    """
    import torch

    from spaces import Plan, export_onnx, save_compressed
    from spaces.compose import split_plan

    plan = Plan.from_dict(plan)
    folder = config.study_dir / "models"
    extra = {k: v for k, v in row.items() if isinstance(v, (int, float, str))}
    extra["hardware_fingerprint"] = result.hardware_fingerprint  # what latency_ms and speedup were measured on
    stem = name or f"trial-{number}"
    who = f"trial {number}" if name is None else f"the {name} model"
    path = save_compressed(folder / f"{stem}.pt", model, plan, extra=extra)
    row["file"] = str(path.resolve())
    why = export_onnx(model, path.with_suffix(".onnx"), image_size=image_size)
    if why is None:
        row["onnx"] = str(path.with_suffix(".onnx").resolve())
    else:
        result.notes.append(f"note: {who} has no ONNX file ({why}); its .pt file rebuilds it")
    for f in (path, path.with_suffix(".onnx")):
        if f.exists():
            tracker.log_artifact(result.parent_run_id, f, "models")
    if not config.log_models:
        return
    example = torch.zeros(1, 3, image_size, image_size).numpy()
    meta = {"trial": number, "plan": json.dumps(plan.to_dict()), "hardware": result.hardware}
    name = f"pareto-{stem}"
    first = "int8 packed weights"
    if not split_plan(plan)[1].steps:
        try:
            row["model_uri"] = tracker.log_model(result.parent_run_id, model, name, input_example=example,
                                                 metadata=meta)
            return
        except Exception as exc:  # noqa: BLE001 - whatever MLflow cannot serialise: fall back to the plan file
            first = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    try:
        row["model_uri"] = tracker.log_compressed_model(result.parent_run_id, path, name, input_example=example,
                                                        metadata={**meta, "flavor_note": first})
    except Exception as exc:  # noqa: BLE001
        note = (f"note: could not log {who} as an MLflow model ({type(exc).__name__}: {exc}); "
                f"{path} rebuilds it")
        result.notes.append(note)
        say(note)


def _accepts_return_model(fn: Callable) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "return_model" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def write_artifacts(s: PreparedSearch, result: SearchResult) -> None:
    """Pareto set as CSV/JSON, plots (PNG + HTML) and the summary: on disk and on the parent run."""
    import csv

    from tracking.plots import plot_front_html, plot_front_png

    engine, objectives, base_costs, tracker = s.engine, s.search.objectives, s.base_costs, s.tracker
    budget_limits = s.budgets.limits()
    folder = s.config.study_dir / "pareto"
    folder.mkdir(parents=True, exist_ok=True)
    front_ids = {r["trial"] for r in result.front}
    records = []
    for t in engine.complete():
        records.append({"number": t.number, "values": {n: v for (n, _, _), v in zip(objectives, t.values)},
                        "feasible": t.eligible, "pareto": t.number in front_ids, "method": t.method})
    rows = [*(result.final or result.front), *([result.baseline] if result.baseline else [])]
    with open(folder / "front.csv", "w", newline="") as fh:
        keys = list(dict.fromkeys(k for r in ([result.base] if result.base else []) + rows for k in r))
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        for r in ([result.base] if result.base else []) + rows:
            writer.writerow(r)
    summary = {"study": result.study, "objectives": result.objectives, "hypervolume": result.hypervolume,
               "counts": result.counts, "base": result.base, "front": result.front, "final": result.final,
               "chosen": result.chosen, "rank_sample": result.rank_sample, "rank": result.rank,
               "halving": result.halving, "baseline": result.baseline, "verdict": result.verdict,
               "compute": result.compute, "timing": result.timing, "interrupted": result.interrupted}
    (folder / "front.json").write_text(json.dumps(summary, indent=1, default=str))
    base_point = {n: (result.base.get("val_oa") if k == "val_oa" else base_costs.get(k)) for n, k, _ in objectives}
    base_point = {k: v for k, v in base_point.items() if v is not None}
    obj = [(n, d) for n, _, d in objectives]
    title = f"{result.study}: {len(result.front)} Pareto model(s), HV {result.hypervolume:.4f}"
    base = base_point if len(base_point) == len(obj) else None
    if base is not None and result.base.get("test_oa") is not None:  # the label gives it; the axis stays validation OA
        base = {**base, "test_oa": result.base["test_oa"]}
    marks = dict(base=base, title=title, budgets=dict(budget_limits), final=result.final,
                 keys={n: k for n, k, _ in objectives}, uniform=result.baseline)
    plot_front_png(records, obj, folder / "front.png", **marks)
    plot_front_html(records, obj, folder / "front.html", **marks)
    tracker.log_artifacts(result.parent_run_id, folder, "pareto")
