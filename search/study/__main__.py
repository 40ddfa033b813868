"""Run a compression study: baselines, weight vs local vs global compression, the pruning methods, augmentation.

    python -m search.study --data ../shared/datasets/UCMerced_LandUse --plan     # the cells and their cost
    python -m search.study --data ../shared/datasets/UCMerced_LandUse            # run (again: resume)

Without --data it runs on the built-in synthetic scene set. See search/README.md (the study) for what
each method is and how the tables read.
"""

from __future__ import annotations

import math
import sys

from rsc.cli import parser, positive_int, run_cli
from search.study.config import StudyConfig


def build_parser():
    """The parser: one flag per :class:`StudyConfig` field with help, and per search-template flag
    (:data:`search.study.config.SEARCH_FLAGS`), generated as ``search.run``'s (defaults stay in the config)."""
    from rsc.options import add_options
    from search.study.config import search_flags

    p = parser("python -m search.study", __doc__)
    add_options(p, StudyConfig)
    add_options(p, search_flags())
    a = p.add_argument
    a("--threads", type=positive_int, help="torch CPU threads")
    a("--plan", action="store_true", help="print the cells and an estimate of their cost, run nothing")
    a("--list-methods", action="store_true", help="print the methods and exit")
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
    """The config of a parsed command line: the given flags over the config's defaults."""
    import dataclasses

    from rsc.errors import ConfigError
    from rsc.options import options_from_args
    from search.study.config import SEARCH_FLAGS, search_flags

    given = options_from_args(args, StudyConfig)
    if "weights" in given:
        given["weights"] = _by_network(given["weights"], "--weights", "PATH", lambda v: v or None)
    if "network_lr" in given:
        given["network_lr"] = _by_network(given["network_lr"], "--network-lr", "LR with LR > 0", _positive_float)
    if "teacher" in given and str(given["teacher"]).lower() in ("none", ""):
        given["teacher"] = None
    config = StudyConfig(**given)
    flags = {SEARCH_FLAGS[k].field: "--" + k.replace("_", "-") for k in SEARCH_FLAGS}
    search = {SEARCH_FLAGS[k].field: v for k, v in options_from_args(args, search_flags()).items()}
    try:
        return dataclasses.replace(config, search=dataclasses.replace(config.search, **search)) if search else config
    except ConfigError as exc:  # the search's check, said with the study's flag: "--search-folds must be ..."
        field = str(exc).split(" ", 1)[0]
        raise ConfigError(str(exc).replace(field, flags[field], 1) if field in flags else str(exc)) from None


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
            from search.study.methods import study_methods

            for m in study_methods().values():
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
