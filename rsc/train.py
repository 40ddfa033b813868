"""Train and evaluate a scene classifier the way RS papers report it.

    python -m rsc.train --data ../shared/datasets/UCMerced_LandUse --model resnet18 \\
        --train-ratio 0.8 --image-size 64 --epochs 30 --repeats 3

Without ``--data`` it trains on the built-in synthetic scene set. Each repeat uses its own seeded
stratified split (seed, seed+1, ...); the test part is touched only for the final evaluation.
Writes, per repeat, ``checkpoint.pt``, ``metrics.json``, ``confusion.png``, ``split.json`` and
``history.json``, and for several repeats ``summary.json`` with OA mean +- std.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from rsc.cli import parser, positive_int, ratio, run_cli
from rsc.recipe import DEFAULT_BATCH_SIZE, DEFAULT_LR, DEFAULT_WEIGHT_DECAY
from rsc.options import add_options, opt, options_from_args


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Every setting of ``rsc.train``, its default and its help, in one place (the flags are generated)."""

    data: str | None = opt(None, "dataset folder (class folders, any wrapper level); default: synthetic scenes")
    dataset: str | None = opt(None, "dataset name (see --list-datasets); default: detected from the folder")
    download: bool = opt(False, "download the official archive into --data first")
    model: str = opt("resnet18", "torchvision classifier name (default {default})")
    weights: str | None = opt(None, "pretrained weights: a local .pth/checkpoint, or 'imagenet' (needs internet)")
    train_ratio: float = opt(0.8, "training share of each class, e.g. 0.8 or 80%% (the RS protocol; UC Merced: "
                                  "0.5 / 0.8) (default {default})", type=ratio)
    val_ratio: float = opt(0.1, "validation share of the training part (default {default})")
    image_size: int = opt(64, "input side in pixels (default {default})", type=positive_int)
    epochs: int = opt(30, "training epochs (default {default})")
    batch_size: int = opt(DEFAULT_BATCH_SIZE, "batch size (default {default})", type=positive_int)
    lr: float = opt(DEFAULT_LR, "peak learning rate, one-cycle (default {default})")
    weight_decay: float = opt(DEFAULT_WEIGHT_DECAY, "SGD weight decay (default {default})")
    seed: int = opt(0, "seeds the split, the init and the augmentation (default {default})")
    repeats: int = opt(1, "independent seeded splits to average over (mean +- std) (default {default})",
                       type=positive_int)
    split: str | None = opt(None, "reuse a saved split manifest (split.json) instead of drawing one")
    d4: bool = opt(True, "disable flips / 90-degree rotations", flag="--no-d4")
    crop: bool = opt(True, "disable random resized crop", flag="--no-crop")
    jitter: float = opt(0.2, "colour jitter strength (0 disables) (default {default})")
    bn_batches: int = opt(4, "re-estimate BatchNorm statistics on this many unaugmented training batches after the "
                             "last epoch (0: keep the running averages of training) (default {default})")
    device: str | None = opt(None, "cpu, cuda, cuda:1 ... (default: cuda when available)")
    threads: int | None = opt(None, "torch CPU threads", type=positive_int)
    out: str | None = opt(None, "output folder (default: runs/train/<dataset>-<model>-<size>px-r<ratio>)")
    progress: bool = opt(True, "no progress bars", flag="--no-progress")


def build_parser() -> argparse.ArgumentParser:
    p = parser("python -m rsc.train", __doc__)
    add_options(p, TrainConfig)
    p.add_argument("--list-datasets", action="store_true", help="print the dataset registry and exit")
    p.add_argument("--list-models", action="store_true", help="print the model names and exit")
    return p


def _listing(args) -> str | None:
    if args.list_models:
        from rsc.models import list_models

        return "\n".join(list_models())
    if args.list_datasets:
        from rsc.catalog import get_dataset_info, list_datasets

        rows = []
        for name in list_datasets():
            i = get_dataset_info(name)
            ratios = "/".join(f"{r:.0%}" for r in i.train_ratios)
            rows.append(f"{name:18s} {i.num_classes:3d} classes {i.num_images:6d} images {i.native_size:4d}px "
                        f"ratios {ratios:10s} {'download' if i.url else 'manual'}  {i.title}")
        return "\n".join(rows)
    return None


def run(config: TrainConfig) -> dict:
    """Train ``config.repeats`` models on seeded splits; returns the summary (nothing printed but bars)."""
    import torch

    from rsc.augment import AugmentConfig
    from rsc.checkpoint import save_checkpoint
    from rsc.loaders import make_loaders
    from rsc.scenes import load_scene_data
    from rsc.splits import load_split, make_split
    from rsc.errors import ConfigError
    from rsc.metrics import evaluate, plot_confusion
    from rsc.models import create_model
    from rsc.loop import collapse_note, fit, reestimate_bn, resolve_device, seed_everything

    if config.threads:
        torch.set_num_threads(config.threads)
    if config.bn_batches < 0:
        raise ConfigError(f"--bn-batches must be >= 0, got {config.bn_batches}")
    if config.repeats > 1 and config.split:
        raise ConfigError("--split fixes one split; it cannot be combined with --repeats > 1")
    try:
        augment = AugmentConfig(d4=config.d4, crop=config.crop, jitter=config.jitter)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    data_path = config.data
    if config.download:
        from rsc.download import download_dataset

        if not (config.dataset and config.data):
            raise ConfigError("--download needs --dataset NAME and --data FOLDER (where to put it)")
        data_path = str(download_dataset(config.dataset, config.data, progress=config.progress))
    device = resolve_device(config.device)
    data = load_scene_data(data_path, dataset=config.dataset, image_size=config.image_size,
                           progress=config.progress)
    # Fail on a bad model name before any training.
    create_model(config.model, data.num_classes, image_size=config.image_size)
    out = Path(config.out or Path("runs") / "train" /
               f"{data.name}-{config.model}-{config.image_size}px-r{config.train_ratio:g}")
    results = []
    for repeat in range(config.repeats):
        seed = config.seed + repeat
        split = load_split(config.split, data) if config.split else make_split(
            data, train_ratio=config.train_ratio, seed=seed, val_ratio=config.val_ratio)
        seed_everything(seed)
        model = create_model(config.model, data.num_classes, weights=config.weights,
                             image_size=config.image_size).to(device)
        train, val, test = make_loaders(data, split, batch_size=config.batch_size, augment=augment,
                                        seed=seed, device=device)
        start = time.perf_counter()
        history = fit(model, train, epochs=config.epochs, lr=config.lr, weight_decay=config.weight_decay,
                      val_loader=val, num_classes=data.num_classes, device=device, seed=seed,
                      progress=config.progress, desc=f"split {repeat + 1}/{config.repeats}")
        reestimate_bn(model, data, split, batches=config.bn_batches, batch_size=config.batch_size, seed=seed,
                      device=device)
        train_seconds = time.perf_counter() - start
        val_oa = evaluate(model, val, num_classes=data.num_classes, device=device).oa if len(val) else None
        metrics = evaluate(model, test, num_classes=data.num_classes, device=device)
        run_dir = out / f"seed{seed}" if config.repeats > 1 else out
        run_dir.mkdir(parents=True, exist_ok=True)
        split.save(run_dir / "split.json", data)
        split_info = split.info()
        record = {"seed": seed, "oa": metrics.oa, "kappa": metrics.kappa, "train_seconds": train_seconds,
                  "counts": {"train": len(split.train), "val": len(split.val), "test": len(split.test)},
                  "split_digest": split.digest, "history": history, "val_oa": val_oa,
                  "val_oa_as_trained": history[-1].get("val_oa") if history else None,
                  "collapsed": collapse_note(metrics.oa, data.num_classes, config.lr)}
        save_checkpoint(run_dir / "checkpoint.pt", model,
                        arch={"model": config.model, "num_classes": data.num_classes,
                              "image_size": config.image_size},
                        classes=data.classes, split=split_info, metrics={"test_oa": metrics.oa},
                        config=_jsonable(config))
        (run_dir / "metrics.json").write_text(json.dumps(
            {**metrics.to_dict(data.classes), "dataset": data.name, "model": config.model,
             "split": split_info, "train_seconds": train_seconds, "bn_batches": config.bn_batches,
             "val_oa": val_oa, "val_oa_as_trained": record["val_oa_as_trained"],
             "skipped": [list(s) for s in data.skipped]}, indent=1))
        (run_dir / "history.json").write_text(json.dumps(history, indent=1))
        plot_confusion(metrics, data.classes, run_dir / "confusion.png",
                       title=f"{config.model} on {data.name}, split seed {seed}: OA {metrics.oa:.3f}")
        record["dir"] = str(run_dir)
        results.append(record)
    oas = [r["oa"] for r in results]
    summary = {"dataset": data.name, "data": data.root, "model": config.model, "image_size": config.image_size,
               "train_ratio": config.train_ratio, "repeats": config.repeats,
               "oa_mean": statistics.fmean(oas), "oa_std": statistics.stdev(oas) if len(oas) > 1 else 0.0,
               "kappa_mean": statistics.fmean(r["kappa"] for r in results),
               "train_seconds": sum(r["train_seconds"] for r in results),
               "skipped": [list(s) for s in data.skipped], "warnings": data.warnings,
               "runs": [{k: v for k, v in r.items() if k != "history"} for r in results],
               "config": _jsonable(config), "out": str(out), "device": str(device)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def _jsonable(config: TrainConfig) -> dict:
    return asdict(config)


def report(summary: dict) -> str:
    lines = []
    if summary["data"] is None:
        lines.append("note: no --data given: trained on the built-in synthetic scene set")
    for w in summary["warnings"]:
        lines.append(f"warning: {w}")
    if summary["skipped"]:
        shown = "; ".join(f"{f} ({why})" for f, why in summary["skipped"][:5])
        more = f" and {len(summary['skipped']) - 5} more" if len(summary["skipped"]) > 5 else ""
        lines.append(f"warning: skipped {len(summary['skipped'])} unreadable image(s): {shown}{more}")
    for r in summary["runs"]:
        lines.append(f"split seed {r['seed']}: test OA {r['oa']:.4f}  kappa {r['kappa']:.4f}  "
                     f"({r['counts']['train']} train / {r['counts']['val']} val / {r['counts']['test']} test, "
                     f"{r['train_seconds']:.0f}s)")
        if r.get("collapsed"):
            lines.append(f"warning: split seed {r['seed']}: {r['collapsed']}")
    oa = f"{summary['oa_mean']:.4f}"
    if summary["repeats"] > 1:
        oa += f" +- {summary['oa_std']:.4f} over {summary['repeats']} splits"
    lines.append(f"{summary['model']} on {summary['dataset']} ({summary['image_size']}px, "
                 f"train ratio {summary['train_ratio']:g}): OA {oa}")
    lines.append(f"results: {summary['out']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    arg_parser = build_parser()
    args = arg_parser.parse_args(argv)

    def body() -> int:
        listing = _listing(args)
        if listing is not None:
            print(listing)
            return 0
        config = TrainConfig(**options_from_args(args, TrainConfig))
        if config.data is None and not config.download:
            print("note: no --data given: training on the built-in synthetic scene set", file=sys.stderr)
        print(report(run(config)))
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
