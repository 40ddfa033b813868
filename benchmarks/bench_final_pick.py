"""Which trials the final stage fine-tunes, measured: the final stage of a finished study's searched cells run
again with another pick, on the same trials.

    .venv/bin/python benchmarks/bench_final_pick.py --study-dir runs/ucm-quality-aimed --pick top-per-method \
        [--folds K] [--methods search-alloc] [--final 3] [--against l1] [--out benchmarks/results/final_pick-replayed]

For every finished searched cell, its search (Optuna storage, trials and their plans) is copied to a scratch
folder and resumed there with ``--final-pick PICK`` (and no rank sample): no trial is run again, only the
final stage - the picked trials fine-tuned ``--finetune-epochs`` from the same base on the same split, the
chosen model the best validation OA among them, as in the study; with ``--folds K`` the best OA cross-validated
over K folds of the training part instead (search ``--final-folds``: K more fine-tunes per finalist, each from a
base trained without its fold; K base trainings per split, cached). Reported per cell beside the study's own
answer: the finalists (method, trial score, validation and test OA), the chosen model, and both answers'
paired difference to ``--against`` (another method of the same study, same split). The study folder is
only read. Costs the final fine-tunes: about 3 x 10 epochs of a compressed ResNet-18 at 64 px per cell.
Writes ``<out>.json`` and ``<out>.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _pm(values: list[float]) -> str:
    from search.study.tables import mean_std

    if not values:
        return "n/a"
    m, s = mean_std(values)
    return f"{100 * m:+.2f} +- {100 * s:.2f} ({sum(v > 0 for v in values)}/{len(values)})"


def _scratch_tracking(uri: str, folder: Path) -> str:
    """A consistent copy of the study's sqlite tracking store (the trials' runs, which the final stage logs
    to), its artifacts redirected into ``folder``: the study's own store and artifacts stay untouched."""
    import sqlite3

    if not uri.startswith("sqlite:///"):
        raise SystemExit(f"error: the study tracks to {uri}; this benchmark copies sqlite stores only")
    copy = folder / "mlflow.db"
    with sqlite3.connect(uri.removeprefix("sqlite:///")) as src, sqlite3.connect(copy) as dst:
        src.backup(dst)
        dst.execute("UPDATE experiments SET artifact_location = ?", ((folder / "mlartifacts").as_uri(),))
    return f"sqlite:///{copy}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--study-dir", required=True, help="a study folder (runs/<name>) with finished searched cells")
    p.add_argument("--pick", default="top-per-method", help="the search's --final-pick to replay (default %(default)s)")
    p.add_argument("--folds", type=int, default=0, help="choose by the OA cross-validated over K folds of the "
                                                         "training part (search --final-folds; default 0: off)")
    p.add_argument("--final", type=int, default=None, help="models the final stage fine-tunes (default: the study's)")
    p.add_argument("--methods", default="search-alloc", help="comma list of searched methods (default %(default)s)")
    p.add_argument("--against", default="l1", help="the method both answers are paired with (default %(default)s)")
    p.add_argument("--threads", type=int, default=2, help="torch threads: the study's --threads, so that a trial in "
                                                          "both final sets fine-tunes to the same numbers (default 2)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "final_pick-replayed"))
    a = p.parse_args(argv)

    import torch

    from rsc.scenes import load_scene_data
    from search.config import FINAL_PICKS
    from search.study.cells import Cell
    from search.study.execute import Workspace, _search_cell

    if a.pick not in FINAL_PICKS:
        print(f"error: --pick takes one of {', '.join(FINAL_PICKS)}, got {a.pick!r}", file=sys.stderr)
        return 2
    torch.set_num_threads(a.threads)
    how = a.pick + (f" + {a.folds}-fold" if a.folds else "")
    study_dir = Path(a.study_dir)
    meta = json.loads((study_dir / "study.json").read_text())
    sys.path.insert(0, str(REPO / "benchmarks"))
    from bench_zero_shot import _study_config

    config = _study_config(meta["settings"])
    if a.folds < 0 or a.folds == 1:
        print(f"error: --folds takes 0 (off) or at least 2, got {a.folds}", file=sys.stderr)
        return 2
    config = dataclasses.replace(config, search=dataclasses.replace(
        config.search, final_pick=a.pick, rank_sample=0, final_folds=a.folds,
        final_max=a.final if a.final is not None else config.search.final_max))
    data = load_scene_data(meta.get("data") or config.data, dataset=config.dataset, image_size=config.image_size,
                           progress=False)
    rows = [json.loads(f.read_text()) for f in sorted((study_dir / "cells").glob("*.json"))]
    methods = set(a.methods.split(","))
    cells = [r for r in rows if r.get("method") in methods and r.get("status") == "ok" and r.get("search")]
    if not cells:
        print(f"error: no finished cell of {a.methods} in {study_dir}", file=sys.stderr)
        return 2
    against = {(r["train_ratio"], r["target_rate"], r["repeat"]): r["test_oa"] for r in rows
               if r.get("method") == a.against and r.get("status") == "ok"}
    scratch = Path(tempfile.mkdtemp(prefix="final-pick-")) / study_dir.name
    out, t0 = [], time.perf_counter()
    try:
        ws = Workspace(config=config, data=data, device=torch.device("cpu"), study_dir=scratch,
                       tracking_uri=_scratch_tracking(meta["mlflow_tracking_uri"], scratch.parent), say=print)
        for row in cells:
            name = row["search"]["study"]
            shutil.copytree(study_dir / "searches" / name, scratch / "searches" / name)
            cell = Cell(method=row["method"], network=row["network"], train_ratio=row["train_ratio"],
                        repeat=row["repeat"], rate=row["target_rate"], kd=row["kd"], augment=row["augment"])
            t = time.perf_counter()
            new = _search_cell(ws, cell)
            key = (row["train_ratio"], row["target_rate"], row["repeat"])
            out.append({"cell": row["id"], "repeat": row["repeat"], "rate": row["target_rate"],
                        "study": {k: row["search"].get(k) for k in ("pick", "picked_trial", "method", "finalists")}
                        | {"test_oa": row["test_oa"], "val_oa": row["val_oa"]},
                        "replayed": {k: new["search"].get(k) for k in ("pick", "picked_trial", "method", "finalists")}
                        | {"test_oa": new["test_oa"], "val_oa": new["val_oa"]},
                        "against": against.get(key), "seconds": time.perf_counter() - t})
            r = out[-1]
            print(f"{row['id']}: {row['search']['pick']} chose trial {r['study']['picked_trial']} "
                  f"({r['study']['method']}, test {100 * r['study']['test_oa']:.2f}); {how} chose trial "
                  f"{r['replayed']['picked_trial']} ({r['replayed']['method']}, test {100 * r['replayed']['test_oa']:.2f})")
    finally:
        shutil.rmtree(scratch.parent, ignore_errors=True)
    paired = [r for r in out if r["against"] is not None]
    by = "the best validation OA" + (f" ({out[0]['study']['pick']}), the best OA cross-validated over {a.folds} folds of "
                                     f"the training part ({how})" if a.folds else "")
    lines = [f"# The final pick replayed: {study_dir.name}", "",
             f"The same searches' trials; final stage {config.search.final_max} model(s) x {config.finetune_epochs} epochs, "
             f"the chosen model {by} among them. Test OA %; minus {a.against}: paired by split, "
             f"mean +- sample std (wins/n).", "",
             f"| cell | {out[0]['study']['pick']}: finalists (trial method: trial score / val / test) | chosen | "
             f"{how}: finalists (... / val{' / cross-validated' if a.folds else ''} / test) | chosen |",
             "|---|---|---|---|---|"]

    def fin(side: dict) -> str:
        return "; ".join(f"{f['trial']} {f['method']}: {100 * f['search_val_oa']:.1f} / {100 * f['val_oa']:.1f} / "
                         + (f"{100 * f['cv_oa']:.1f} / " if f.get("cv_oa") is not None else "")
                         + f"{100 * f['test_oa']:.1f}" for f in side["finalists"])
    for r in out:
        lines.append(f"| {r['cell']} | {fin(r['study'])} | {r['study']['picked_trial']}: {100 * r['study']['test_oa']:.2f} "
                     f"| {fin(r['replayed'])} | {r['replayed']['picked_trial']}: {100 * r['replayed']['test_oa']:.2f} |")
    lines += ["", f"minus {a.against}: {out[0]['study']['pick']} {_pm([r['study']['test_oa'] - r['against'] for r in paired])}; "
              f"{how} {_pm([r['replayed']['test_oa'] - r['against'] for r in paired])}; {how} minus "
              f"{out[0]['study']['pick']} {_pm([r['replayed']['test_oa'] - r['study']['test_oa'] for r in out])}"]
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(f"{a.out}.json").write_text(json.dumps({"study": study_dir.name, "pick": a.pick, "folds": a.folds,
                                                 "against": a.against,
                                                 "cells": out, "seconds": time.perf_counter() - t0}, indent=1))
    Path(f"{a.out}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
