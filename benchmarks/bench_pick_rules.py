"""Replay the ways to choose a searched cell's model among its finalists, over stored study cells.

    .venv/bin/python benchmarks/bench_pick_rules.py [STUDY_DIR ...] [--per-cell] [--out FILE.md]

Every searched cell of ``search.study`` fine-tunes its finalists in full and tests them all, then ships
the one its rule chooses (validation OA, ties to fewer params). That keeps enough on record to replay any
other rule that reads only the training side (``search.study.tables.PICK_RULES``: the validation OA with
other tie-breaks, the trial score, both summed) on the same finalists, without training anything. For
each study folder (default: every ``benchmarks/results/study-*`` with searched cells) and pooled over all
of them, each rule's choice against the finalists' mean test OA and against the study's own choice.
``--per-cell`` lists each cell's finalists and every rule's choice. The study's rule is checked against
the choice each cell recorded (``picked_trial``): a mismatch is an error, not a footnote.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def load_cells(study_dir: Path) -> list[dict]:
    from search.study.tables import replayable

    rows = [json.loads(p.read_text()) for p in sorted((study_dir / "cells").glob("*.json"))]
    return [r for r in rows if replayable(r)]


def main(argv: list[str] | None = None) -> int:
    from search.study.tables import PICK_RULES, replay_pick, replayable, rule_lines

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("studies", nargs="*", help="study folders (runs/<name> or benchmarks/results/study-<name>)")
    p.add_argument("--per-cell", action="store_true", help="list every cell's finalists and each rule's choice")
    p.add_argument("--out", default=None, help="also write the tables to this Markdown file")
    args = p.parse_args(argv)
    dirs = [Path(d) for d in args.studies] or sorted((REPO / "benchmarks" / "results").glob("study-*"))
    missing = [str(d) for d in dirs if not (d / "cells").is_dir()]
    if missing:
        print(f"error: not a study folder (no cells/): {', '.join(missing)}", file=sys.stderr)
        return 2
    studies = {d.name: load_cells(d) for d in dirs}
    studies = {k: v for k, v in studies.items() if v}
    if not studies:
        print("error: no searched cell with two or more finalists fine-tuned and tested in these folders",
              file=sys.stderr)
        return 2
    own = next(iter(PICK_RULES))
    for name, rows in studies.items():
        for r in rows:
            picked = replay_pick(replayable(r), own)["trial"]
            if picked != r["search"]["picked_trial"]:
                print(f"error: {name}/{r['id']}: the study's rule replays to trial {picked}, the cell chose "
                      f"{r['search']['picked_trial']}", file=sys.stderr)
                return 1
    md = ["# The final choice among a searched cell's finalists, replayed", ""]
    for name, rows in [*studies.items(), (f"all {len(studies)} studies pooled", sum(studies.values(), []))]:
        md += [f"## {name}", "", *rule_lines(rows), ""]
        if args.per_cell and not name.startswith("all "):
            md += ["| cell | finalists: trial (test OA %, val OA %, trial score %) | " +
                   " | ".join(PICK_RULES) + " |", "|---|---|" + "---|" * len(PICK_RULES)]
            for r in rows:
                fs = replayable(r)
                listed = "; ".join(f"{f['trial']} ({100 * f['test_oa']:.2f}, {100 * f['val_oa']:.2f}, "
                                   f"{100 * f['search_val_oa']:.2f})" for f in fs)
                md.append(f"| {r['id']} | {listed} | " + " | ".join(
                    f"{100 * replay_pick(fs, rule)['test_oa']:.2f}" for rule in PICK_RULES) + " |")
            md.append("")
    text = "\n".join(md)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
