"""Run a compression study: baselines, weight vs local vs global compression, the pruning methods, augmentation.

    python -m search.study --data ../shared/datasets/UCMerced_LandUse --plan     # the cells and their cost
    python -m search.study --data ../shared/datasets/UCMerced_LandUse            # run (again: resume)

Without --data it runs on the built-in synthetic scene set. See search/README.md (the study) for what
each method is and how the tables read.
"""

from __future__ import annotations

import math

import sys
from dataclasses import fields

from rsc.cli import parser, positive_int, run_cli
from search.config import FINAL_PICKS
from search.study.cells import AUGMENTS, EXPERIMENTS, METHODS, StudyConfig


def _list(kind):
    def parse(text: str):
        import argparse

        items = [t.strip() for t in text.split(",") if t.strip()]
        try:
            return tuple(kind(t) for t in items)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma list of {kind.__name__}, got {text!r}") from None
    return parse


def _choices(allowed):
    def parse(text: str):
        import argparse

        items = tuple(t.strip() for t in text.split(",") if t.strip())
        bad = [t for t in items if t not in allowed]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {', '.join(bad)}; choose from {', '.join(allowed)}")
        return items
    return parse


def _kd(text: str):
    import argparse

    table = {"off": False, "on": True, "no": False, "yes": True}
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items or any(t not in table for t in items):
        raise argparse.ArgumentTypeError(f"--kd takes off, on or off,on; got {text!r}")
    return tuple(dict.fromkeys(table[t] for t in items))


def build_parser():
    d = StudyConfig()
    p = parser("python -m search.study", __doc__)
    a = p.add_argument
    a("--data", help="dataset folder (default: the built-in synthetic scenes)")
    a("--dataset", help="dataset name when the folder is ambiguous")
    a("--image-size", type=positive_int, default=d.image_size)
    a("--model", default=d.model, help="the network every compression method compresses")
    a("--networks", type=_list(str), default=d.networks, help="baseline networks, comma list")
    a("--teacher", default=d.teacher, help="distill-teacher's teacher network ('none': no such cells)")
    a("--ratios", type=_list(float), default=d.ratios,
      help="training ratios, comma list (default: the dataset's literature ratios, e.g. 0.5,0.8 for UC Merced)")
    a("--repeats", type=positive_int, default=d.repeats, help="seeded splits per training ratio")
    a("--seed", type=int, default=d.seed, help="split k uses seed+k (split, init, augmentation)")
    a("--epochs", type=positive_int, default=d.epochs, help="from-scratch training epochs (bases, KD students)")
    a("--finetune-epochs", type=int, default=d.finetune_epochs, help="fine-tune budget of every compressed model")
    a("--lr", type=float, default=d.lr, help="peak learning rate from scratch")
    a("--finetune-lr", type=float, default=d.finetune_lr, help="peak learning rate of fine-tunes")
    a("--batch-size", type=positive_int, default=d.batch_size)
    a("--rates", type=_list(float), default=d.rates, help="target compression rates (original/compressed params)")
    a("--experiments", type=_choices(EXPERIMENTS), default=d.experiments,
      help="comma list (default: baselines,families,pruning,augment; the quality protocol only when named)")
    a("--family-methods", type=_choices(tuple(METHODS)), default=d.family_methods, help="comma list (--list-methods)")
    a("--pruning-methods", type=_choices(tuple(METHODS)), default=d.pruning_methods, help="comma list")
    a("--kd", type=_kd, default=d.kd, help="the pruning comparison with and/or without KD: off, on or off,on")
    a("--augments", type=_choices(tuple(k for k in AUGMENTS if k != "default")), default=d.augments,
      help="augmentation variants of the ablation")
    a("--augment-method", choices=tuple(METHODS), default=d.augment_method,
      help="the compressed model of the ablation (at the middle rate)")
    a("--quality-methods", type=_choices(tuple(METHODS)), default=d.quality_methods,
      help="the search-quality protocol's methods, comma list")
    a("--quality-subject", choices=tuple(METHODS), default=d.quality_subject,
      help="the method the quality tables pair every other method against (same split: paired differences; "
           "default: the first searched one of --quality-methods)")
    a("--search-trials", type=positive_int, default=d.search_trials, help="trials per searched cell")
    a("--search-fidelity", type=positive_int, default=d.search_fidelity, help="fine-tune epochs per search trial")
    a("--search-final", type=positive_int, default=d.search_final,
      help="models a searched cell's final stage fine-tunes (search --final-max)")
    a("--search-pick", choices=FINAL_PICKS, default=d.search_pick,
      help="which: the top trial scores inside the budget (default) or spread along the front "
           "(search --final-pick)")
    a("--search-rungs", type=positive_int, default=d.search_rungs,
      help="successive halving rungs of a searched cell's final stage (search --final-rungs)")
    a("--search-folds", type=int, default=d.search_folds, metavar="K",
      help="choose a searched cell's model by its OA cross-validated over K folds of the training part, each "
           "final model fine-tuned K more times from a base trained without the fold (search --final-folds; "
           "default 0: by validation OA)")
    a("--search-kd", action="store_true", default=d.search_kd,
      help="KD from the base model during every fine-tune of a search (search --finetune-kd), "
           "and of the quality experiment's baselines (the same fine-tune for every method)")
    a("--search-min-target", type=float, default=d.search_min_target,
      help="search --min-target: a searched cell's trials aim at [F, 1] of its rate's params (default 0.9: "
           "compared at the rate; 0.1, the search's own default, spreads them over 1-10x the rate)")
    a("--search-zero-shot", action="store_true", default=d.search_zero_shot,
      help="search --zero-shot: score every trial before fine-tuning by its adaptive-BN validation OA (EagleEye), "
           "screen the clearly dominated, and rank the final OA by that score too")
    a("--rank-sample", type=int, default=d.rank_sample,
      help="more trials per searched cell fine-tuned like the finalists, for the rank correlation of trial "
           "score with final OA (search --rank-sample)")
    a("--slimming-reg", type=float, default=d.slimming_reg, help="Network Slimming's L1 weight on BN scales")
    a("--weights", action="append", default=[], metavar="NET=PATH",
      help="local pretrained weights of a network (repeat per network); the literature's figures use "
           "ImageNet-pretrained backbones at 224 px")
    a("--network-lr", action="append", default=[], metavar="NET=LR",
      help="a network's own peak learning rate from scratch (repeat per network; e.g. squeezenet1_1=0.01 "
           "for networks without BatchNorm, which collapse at the default --lr)")
    a("--device", help="cpu, cuda, cuda:N (default: cuda when available); latency is always on the CPU")
    a("--threads", type=positive_int, help="torch CPU threads")
    a("--name", help="study name (default: study-<dataset>-<model>-<size>px); the same name resumes")
    a("--out", default=d.out, help="folder of studies, the default MLflow store and searched cells' studies")
    a("--tracking-uri", help="MLflow URI (default $MLFLOW_TRACKING_URI, else sqlite:///<out>/mlflow.db)")
    a("--experiment", default=d.experiment, help="MLflow experiment")
    a("--plan", action="store_true", help="print the cells and an estimate of their cost, run nothing")
    a("--list-methods", action="store_true", help="print the methods and exit")
    a("--no-progress", dest="progress", action="store_false", help="no progress bars")
    return p


def _by_network(items: list[str], flag: str, form: str, parse) -> dict:
    """``NET=VALUE`` items of a repeated flag, by network; ``parse`` returns the value or None when bad."""
    from rsc.errors import ConfigError

    out = {}
    for item in items:
        net, sep, value = item.partition("=")
        parsed = parse(value) if sep and net else None
        if parsed is None:
            raise ConfigError(f"{flag} takes NET={form}, got {item!r}")
        out[net] = parsed
    return out


def _positive_float(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if value > 0 and math.isfinite(value) else None


def config_from_args(args) -> StudyConfig:
    weights = _by_network(args.weights, "--weights", "PATH", lambda v: v or None)
    network_lr = _by_network(args.network_lr, "--network-lr", "LR with LR > 0", _positive_float)
    names = {f.name for f in fields(StudyConfig)}
    kw = {k: v for k, v in vars(args).items() if k in names and k not in ("weights", "network_lr")}
    kw["teacher"] = None if str(args.teacher).lower() in ("none", "") else args.teacher
    return StudyConfig(**kw, weights=weights, network_lr=network_lr)


def _plan_text(prep, done: set) -> str:
    from search.study.runner import estimate

    costs = estimate(prep, done)
    lines = [f"study {prep.study_dir.name}: {len(prep.cells)} cell(s), {len(done)} finished, on {prep.data.name} "
             f"({len(prep.data.labels)} images, {prep.data.num_classes} classes, {prep.data.image_size}px), "
             f"training ratios {', '.join(f'{r:g}' for r in prep.ratios)}"]
    by_exp: dict = {}
    for cell in prep.cells:
        for exp in cell.experiments:
            by_exp.setdefault(exp, []).append(cell)
    for exp, cells in by_exp.items():
        todo = [c for c in cells if c.id not in done]
        lines.append(f"  {exp}: {len(cells)} cell(s), {len(todo)} to run")
        for cell in todo[:400]:
            lines.append(f"    {cell.id:60s} ~{_duration(costs.get(cell.id, 0)):>9s}")
    total = sum(costs.values())
    lines.append(f"estimated {_duration(total)} here (a training step of each network timed on this machine, "
                 "bases counted once, cached bases counted as if they were not)")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        if args.list_methods:
            for m in METHODS.values():
                print(f"{m.name:16s} {m.family:8s} {m.what}")
            return 0
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        config = config_from_args(args)
        if config.data is None:
            print("note: no --data given: the study runs on the built-in synthetic scene set", file=sys.stderr)
        from search.study.runner import finished_rows, prepare_study, run_study

        prep = prepare_study(config, say=lambda m: print(m, file=sys.stderr))
        done = set(finished_rows(prep.study_dir))
        if args.plan:
            print(_plan_text(prep, done))
            return 0
        res = run_study(prep)
        print(f"study {prep.study_dir.name}: {res['finished']} of {res['cells']} cell(s) finished"
              + (f" ({res['in_folder']} in its folder, earlier runs' included)"
                 if res["in_folder"] > res["cells"] else "")
              + (f"; failed (run again to retry): {', '.join(res['failed'])}" if res["failed"] else "")
              + (" (interrupted: run the same command again to resume)" if res["interrupted"] else ""))
        print(f"tables: {res['outputs']['tables_md']}  (CSV: {res['outputs']['results_csv']})")
        print(f"MLflow: {res['tracking_uri']}  experiment {res['experiment']}  parent run {res['parent_run_id']}")
        return 130 if res["interrupted"] else (1 if res["failed"] else 0)

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
