"""Re-evaluate a checkpoint on a dataset.

    python -m rsc.evaluate runs/train/ucmerced-resnet18-64px-r0.8/checkpoint.pt \\
        --data ../shared/datasets/UCMerced_LandUse

By default the split the checkpoint was trained on is rebuilt from its recorded ratio and seed,
checked against its digest, and the test part evaluated. ``--split`` reuses a saved manifest;
``--subset all`` evaluates every image (e.g. a different dataset with the same classes).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rsc.cli import parser, run_cli


def build_parser() -> argparse.ArgumentParser:
    p = parser("python -m rsc.evaluate", __doc__)
    p.add_argument("checkpoint", help="checkpoint.pt written by rsc.train")
    p.add_argument("--data", help="dataset folder (default: the built-in synthetic set)")
    p.add_argument("--dataset", help="dataset name (default: detected)")
    p.add_argument("--split", help="split manifest (split.json) to use instead of the recorded one")
    p.add_argument("--subset", choices=("test", "val", "train", "all"), default="test")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", help="cpu, cuda... (default: cuda when available)")
    p.add_argument("--out", help="write metrics.json and confusion.png here")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    return p


def run(args: argparse.Namespace) -> dict:
    import torch

    from rsc.checkpoint import check_classes, load_checkpoint, model_from_checkpoint
    from rsc.loaders import TensorLoader
    from rsc.scenes import load_scene_data
    from rsc.splits import load_split, make_split
    from rsc.errors import CheckpointError
    from rsc.metrics import evaluate, plot_confusion
    from rsc.loop import resolve_device

    blob = load_checkpoint(args.checkpoint)
    arch = blob["arch"]
    data = load_scene_data(args.data, dataset=args.dataset, image_size=int(arch["image_size"]),
                           progress=args.progress)
    check_classes(blob, data.classes, where=f" at {data.root or 'synthetic'}")
    model = model_from_checkpoint(blob)
    device = resolve_device(args.device)
    model.to(device)
    if args.subset == "all":
        index = torch.arange(len(data))
    else:
        if args.split:
            split = load_split(args.split, data)
        else:
            info = blob["split"]
            split = make_split(data, train_ratio=float(info["train_ratio"]), seed=int(info["seed"]),
                               val_ratio=float(info["val_ratio"]))
            if split.digest != info["digest"]:
                raise CheckpointError(
                    f"the dataset's files differ from the ones the checkpoint was trained on (split digest "
                    f"{split.digest} != {info['digest']}); pass --split with its split.json or --subset all")
        index = getattr(split, args.subset)
    loader = TensorLoader(data.images, data.labels, index, batch_size=args.batch_size, device=device)
    metrics = evaluate(model, loader, num_classes=data.num_classes, device=device)
    result = {**metrics.to_dict(data.classes), "subset": args.subset, "checkpoint": str(args.checkpoint),
              "dataset": data.name, "skipped": [list(s) for s in data.skipped]}
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(result, indent=1))
        plot_confusion(metrics, data.classes, out / "confusion.png")
    return result


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        result = run(args)
        if result["skipped"]:
            print(f"warning: skipped {len(result['skipped'])} unreadable image(s), e.g. "
                  f"{result['skipped'][0][0]} ({result['skipped'][0][1]})")
        print(f"{args.subset} OA {result['oa']:.4f}  kappa {result['kappa']:.4f}  (n={result['n']})")
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
