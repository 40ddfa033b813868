"""The study's loop: check everything first, then run each unfinished cell, keep its row, log it.

State is the study folder: ``cells/<cell id>.json`` holds each finished cell's row (written whole,
then renamed, so a kill leaves either the row or nothing), ``study.json`` the settings and the
MLflow parent run. Run again with the same ``--name`` and the finished cells are kept; a cell that
failed is tried again, one that cannot reach its rate is not. Tables and plots are rebuilt from
all rows at the end of every run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any, Callable

from search.study.cells import BASELINE, Cell, StudyConfig, cell_epochs, plan_cells
from search.study.config import SEARCH_FLAGS, SPACE_OPTIONS, search_default

__all__ = ["prepare_study", "run_study", "estimate", "PreparedStudy"]


@dataclasses.dataclass
class PreparedStudy:
    config: StudyConfig
    data: Any
    ratios: tuple[float, ...]
    cells: list[Cell]
    study_dir: Path
    seconds_per_epoch: dict[str, float]


def _ratios(config: StudyConfig, data: Any) -> tuple[float, ...]:
    from rsc.catalog import get_dataset_info
    from rsc.errors import ConfigError

    if config.ratios:
        return tuple(config.ratios)
    try:
        return tuple(get_dataset_info(data.name).train_ratios)
    except ConfigError:
        return (0.8,)  # the synthetic set and unregistered folders


def prepare_study(config: StudyConfig, say: Callable[[str], None] = print) -> PreparedStudy:
    """Load the data and check every input before anything trains (ConfigError etc. on bad input)."""
    import torch

    from rsc.scenes import load_scene_data
    from rsc.splits import make_split
    from rsc.errors import ConfigError
    from rsc.models import create_model

    from search.study.methods import study_methods

    methods = study_methods()
    unknown = [m for m in (*config.methods_of("families"), *config.methods_of("pruning"), *config.quality_methods,
                           config.augment_method) if m not in methods]
    if unknown:
        raise ConfigError(f"unknown method(s) {', '.join(unknown)}; known: {', '.join(methods)}")
    if "quality" in config.experiments and config.quality_subject not in (None, *config.quality_methods):
        raise ConfigError(f"--quality-subject {config.quality_subject} is not one of --quality-methods "
                          f"{','.join(config.quality_methods)}")
    if config.search.final_max is not None and config.search.final_max < 1:  # the rest: SearchConfig's own checks
        raise ConfigError(f"--search-final must be >= 1, got {config.search.final_max}")
    if any(r <= 1 for r in config.rates):
        raise ConfigError(f"compression rates must be > 1 (original params / compressed), got {list(config.rates)}")
    if config.repeats < 1 or config.epochs < 1 or config.finetune_epochs < 0:
        raise ConfigError("--repeats and --epochs must be >= 1, --finetune-epochs >= 0")
    data = load_scene_data(config.data, dataset=config.dataset, image_size=config.image_size,
                           progress=config.progress)
    ratios = _ratios(config, data)
    for ratio in ratios:  # too few images per class for a ratio fails here, naming the class
        for repeat in range(config.repeats):
            make_split(data, train_ratio=ratio, val_ratio=config.val_ratio, seed=config.seed + repeat)
    cells = plan_cells(config, ratios)
    networks = sorted({c.network for c in cells} | ({config.teacher} if _uses_teacher(cells, methods) else set()))
    sizes = {}
    for net in networks:  # unknown networks and weights that do not fit fail here
        model = create_model(net, data.num_classes, weights=config.weights.get(net), image_size=data.image_size)
        sizes[net] = sum(p.numel() for p in model.parameters())
    if _uses_teacher(cells, methods) and sizes[config.teacher] <= sizes[config.model]:
        raise ConfigError(f"teacher {config.teacher} ({sizes[config.teacher] / 1e6:.2f}M params) is not larger than "
                          f"the student {config.model} ({sizes[config.model] / 1e6:.2f}M)")
    for flag, given in (("--weights", config.weights), ("--network-lr", config.network_lr)):
        extra = sorted(set(given) - set(networks))
        if extra:
            raise ConfigError(f"{flag} names network(s) the study does not train: {', '.join(extra)}")
    threads = torch.get_num_threads()
    speed = {net: _seconds_per_image(net, data, config) for net in networks}
    torch.set_num_threads(threads)
    n_train = max(len(make_split(data, train_ratio=r, val_ratio=config.val_ratio, seed=config.seed).train)
                  for r in ratios)
    per_epoch = {net: s * n_train for net, s in speed.items()}
    study_dir = Path(config.out) / config.study_name(data.name)
    _check_resumable(study_dir, config, data.name, methods)
    return PreparedStudy(config, data, ratios, cells, study_dir, per_epoch)


#: Settings every finished cell depends on: a study resumed with others would mix incomparable rows.
#: (Networks, methods, rates, repeats, experiments may grow or shrink: they only add or leave out cells.)
#: Of the searched cells' template, every cell depends on ``finetune_kd`` (the quality baselines distil with
#: it) and a searched cell on every field: those are fixed once the folder holds a searched cell.
FIXED_SETTINGS = ("image_size", "model", "teacher", "seed", "epochs", "finetune_epochs",
                  "finetune_lr", "batch_size", "val_ratio", "bn_batches", "slimming_reg", "weights")


def _recorded(settings: dict[str, Any]) -> dict[str, Any]:
    """Recorded settings in :meth:`StudyConfig.settings`'s layout, the keys recorded only: the flat
    ``search_*`` keys of a study recorded before the template move into ``search`` (null: the search's
    default), and a space option left to the space (null) becomes the space's default."""
    from search.study.methods import space_option_default

    out = {k: v for k, v in settings.items() if k not in SEARCH_FLAGS}
    out["search"] = dict(out.get("search") or {})
    for key, flag in SEARCH_FLAGS.items():
        if key in settings:
            out["search"][flag.field] = search_default(flag.field) if settings[key] is None else settings[key]
    for key, option in SPACE_OPTIONS.items():
        if key in out and out[key] is None:
            out[key] = space_option_default(option)
    return out


def _check_resumable(study_dir: Path, config: StudyConfig, dataset: str, methods: dict[str, Any]) -> None:
    from rsc.errors import ConfigError

    meta_path = study_dir / "study.json"
    try:
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        raise ConfigError(f"{meta_path} is unreadable: move it away to start the study afresh") from None
    old = {**_recorded(meta.get("settings", {})), **({"dataset": meta["dataset"]} if "dataset" in meta else {})}
    new = {**_recorded(config.settings()), "dataset": dataset}
    rows = finished_rows(study_dir).values()
    kinds = {r.get("method"): methods[r["method"]].kind for r in rows if r.get("method") in methods}
    changed = [f"{k}={old[k]!r} (now {new[k]!r})" for k in ("dataset", *FIXED_SETTINGS) if k in old and old[k] != new[k]]
    label = {flag.field: key for key, flag in SEARCH_FLAGS.items()}  # the study's flag names where it has one
    shared = ["finetune_kd", *(new["search"] if "search" in kinds.values() else ())]
    changed += [f"{label.get(k, 'search.' + k)}={old['search'][k]!r} (now {new['search'][k]!r})"
                for k in dict.fromkeys(shared) if k in old["search"] and k in new["search"]
                and old["search"][k] != new["search"][k]]
    # a network's lr may be set for a network the study has not trained yet, not changed under finished cells
    trained = {r.get("network") for r in rows} | ({old.get("teacher")} if "teacher" in kinds.values() else set())
    changed += [f"the lr of {net}={_lr(old, net)!r} (now {_lr(new, net)!r})" for net in sorted(trained - {None})
                if "lr" in old and _lr(old, net) != _lr(new, net)]
    if changed:
        raise ConfigError(f"study {study_dir.name} was run with {', '.join(changed)}: run with those settings to "
                          f"resume it, or give another --name")


def _lr(settings: dict[str, Any], network: str) -> float:
    return float((settings.get("network_lr") or {}).get(network, settings.get("lr")))


def _uses_teacher(cells: list[Cell], methods: dict[str, Any]) -> bool:
    return any(c.method != BASELINE and methods[c.method].kind == "teacher" for c in cells)


def _seconds_per_image(network: str, data: Any, config: StudyConfig) -> float:
    """The fastest of 4 timed training steps of ``network`` (after a warm-up step): the cost estimate's unit.

    The fastest, not the last: beside another job a 16-image step of ResNet-18 at 64 px took 0.23 to 2.6 s
    here, and one slow step had put a searched cell of 16 minutes at 12 hours.
    """
    import torch

    from rsc.models import create_model
    from rsc.loop import resolve_device

    device = resolve_device(config.device)
    model = create_model(network, data.num_classes, image_size=data.image_size).to(device).train()
    n = min(config.batch_size, 16)
    x = torch.randn(n, 3, data.image_size, data.image_size, device=device)
    y = torch.zeros(n, dtype=torch.long, device=device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    times = []
    for _ in range(5):
        t = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    return min(times[1:]) / n


def estimate(prep: PreparedStudy, done: set[str] | None = None) -> dict[str, float]:
    """Estimated seconds of each cell not in ``done``, its base's training counted with the first cell needing it."""
    from search.study.methods import study_methods

    c = prep.config
    methods = study_methods()
    done = done or set()
    seen: set[tuple] = set()
    out = {}
    for cell in prep.cells:
        if cell.id in done:
            continue
        seconds = cell_epochs(cell, c, methods) * prep.seconds_per_epoch[cell.network]
        bases = [cell.base_key]
        if cell.method != BASELINE and methods[cell.method].kind == "teacher":
            bases.append((c.teacher, cell.train_ratio, cell.repeat, cell.augment))
        for key in bases:
            if key not in seen:
                seen.add(key)
                seconds += c.epochs * prep.seconds_per_epoch[key[0]]
        out[cell.id] = seconds
    return out


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=float))
    os.replace(tmp, path)


def finished_rows(study_dir: Path) -> dict[str, dict]:
    rows = {}
    for path in sorted((study_dir / "cells").glob("*.json")):
        try:
            row = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue  # a row cut short: the cell runs again
        if row.get("status") in ("ok", "unreachable"):
            rows[row["id"]] = row
    return rows


def run_study(prep: PreparedStudy, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every unfinished cell of ``prep``; returns the summary (rows, tables, where things are)."""
    from tqdm.auto import tqdm

    from rsc.loop import resolve_device
    from search.study.execute import CellUnreachable, Workspace, run_cell
    from search.study.methods import study_methods
    from search.study.tables import write_outputs
    from tracking.mlflow_log import Tracker, check_tracking_uri, default_tracking_uri

    c = prep.config
    methods = study_methods()
    study_dir = prep.study_dir
    (study_dir / "cells").mkdir(parents=True, exist_ok=True)
    uri = c.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(c.out)
    check_tracking_uri(uri)
    meta_path = study_dir / "study.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    settings = c.settings()
    tracker = Tracker(uri=uri, experiment=c.experiment)
    parent = meta.get("mlflow_parent_run_id") if meta.get("mlflow_tracking_uri") == uri else None
    if parent:
        tracker.resume_parent(parent)
    else:
        parent = tracker.start_parent(study_dir.name, params={"dataset": prep.data.name, "model": c.model,
                                                              "image_size": c.image_size, "repeats": c.repeats,
                                                              "epochs": c.epochs, "finetune_epochs": c.finetune_epochs,
                                                              "rates": ",".join(f"{r:g}" for r in c.rates),
                                                              "ratios": ",".join(f"{r:g}" for r in prep.ratios)},
                                      tags={"kind": "study"})
    _write_json(meta_path, {**meta, "settings": settings, "dataset": prep.data.name, "data": prep.data.root,
                            "mlflow_tracking_uri": uri, "mlflow_parent_run_id": parent})
    rows = finished_rows(study_dir)
    for cell in prep.cells:  # a finished cell this run's plan shares with more experiments joins their tables
        row = rows.get(cell.id)
        if row is not None and not set(cell.experiments) <= set(row.get("experiments", ())):
            row["experiments"] = sorted({*row.get("experiments", ()), *cell.experiments})
            _write_json(study_dir / "cells" / f"{cell.id}.json", row)
    todo = [cell for cell in prep.cells if cell.id not in rows]
    if rows:
        say(f"resuming {study_dir.name}: {len(rows)} finished cell(s) kept, {len(todo)} to run")
    costs = estimate(prep, set(rows))
    ws = Workspace(config=c, data=prep.data, device=resolve_device(c.device), study_dir=study_dir,
                   tracking_uri=uri, say=lambda m: tqdm.write(m) if c.progress else say(m))
    bar = tqdm(total=round(sum(costs.values())), unit="s", desc="study (estimated s)", disable=not c.progress,
               bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}] {postfix}")
    interrupted = False
    try:
        for i, cell in enumerate(todo):
            where = f"cell {i + 1}/{len(todo)}: {cell.id}"
            bar.set_postfix_str(where)
            ws.status = lambda detail, where=where: bar.set_postfix_str(f"{where}, {detail}")
            start = time.perf_counter()
            row: dict[str, Any] = cell.describe(methods)
            try:
                row.update(run_cell(ws, cell))
                row["status"] = "ok"
            except CellUnreachable as exc:
                row.update(status="unreachable", reason=str(exc))
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as exc:  # noqa: BLE001 - one broken cell must not end the study
                row.update(status="failed", reason=f"{type(exc).__name__}: {exc}")
            row["seconds"] = time.perf_counter() - start
            _write_json(study_dir / "cells" / f"{cell.id}.json", row)
            _log_cell(tracker, parent, row)
            if row["status"] != "ok":
                ws.say(f"cell {cell.id}: {row['status']}: {row['reason']}")
            if row["status"] in ("ok", "unreachable"):
                rows[cell.id] = row
            bar.update(round(costs.get(cell.id, 0.0)))
    except KeyboardInterrupt:
        interrupted = True
    finally:
        bar.close()
    outputs = write_outputs(prep, list(rows.values()), study_dir)
    for path in outputs.values():
        tracker.log_artifact(parent, path, "study")
    tracker.end_parent(parent, status="KILLED" if interrupted else "FINISHED")
    failed = [cell.id for cell in todo if cell.id not in rows]
    return {"study_dir": str(study_dir), "rows": list(rows.values()), "outputs": {k: str(v) for k, v in outputs.items()},
            "cells": len(prep.cells), "finished": sum(cell.id in rows for cell in prep.cells), "in_folder": len(rows),
            "failed": failed, "interrupted": interrupted,
            "tracking_uri": uri, "parent_run_id": parent, "experiment": c.experiment}


def _log_cell(tracker: Any, parent: str, row: dict[str, Any]) -> None:
    run = tracker.start_child(parent, row["id"], tags={"state": row["status"], "method": row["method"],
                                                       "family": row["family"], "network": row["network"]})
    metrics = {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    tracker.finish_trial(run, plan=row.get("plan"), metrics=metrics,
                         tags={k: str(row[k]) for k in ("train_ratio", "repeat", "target_rate", "kd", "augment")},
                         status="FINISHED" if row["status"] != "failed" else "FAILED")
