"""Is training compute-bound? Real UC Merced through the real pipeline vs random in-memory tensors.

    .venv/bin/python benchmarks/bench_data.py [--data ../shared/datasets/UCMerced_LandUse]
        [--model resnet18] [--image-size 64] [--batch-size 64] [--steps 10] [--rounds 5]

Both sides run the same training step (forward, backward, SGD) on the same model in one process,
in alternating windows of ``--steps`` steps (so machine noise hits both alike); the reported
throughput is the median over ``--rounds`` windows. The pipeline side includes everything that
happens per batch in ``rsc.train``: indexing the cached uint8 tensor, conversion, random resized
crop, D4, colour jitter and normalisation. Decoding (once, then cached) is timed separately.
Target: pipeline / random >= 0.9. Writes benchmarks/results/data-pipeline-vs-random.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(REPO / ".." / "shared" / "datasets" / "UCMerced_LandUse"))
    p.add_argument("--model", default="resnet18")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "data-pipeline-vs-random.json"))
    args = p.parse_args()

    import os
    import tempfile

    import torch

    from rsc.loaders import make_loaders
    from rsc.scenes import load_scene_data
    from rsc.splits import make_split
    from rsc.models import create_model

    cache = tempfile.mkdtemp(prefix="bench-cache-")
    os.environ["RSC_CACHE_DIR"] = cache
    t0 = time.perf_counter()
    data = load_scene_data(args.data, image_size=args.image_size, progress=False)
    decode_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    data = load_scene_data(args.data, image_size=args.image_size, progress=False)
    cached_s = time.perf_counter() - t0
    split = make_split(data, train_ratio=0.8, seed=0)
    train, _, _ = make_loaders(data, split, batch_size=args.batch_size, seed=0)

    torch.manual_seed(0)
    model = create_model(args.model, data.num_classes, image_size=args.image_size)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step(x, y):
        loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    random_x = torch.randn(args.batch_size, 3, args.image_size, args.image_size)
    random_y = torch.randint(0, data.num_classes, (args.batch_size,))

    def pipeline_batches():
        while True:
            yield from train

    batches = pipeline_batches()

    def window(use_pipeline: bool) -> float:
        start = time.perf_counter()
        for _ in range(args.steps):
            if use_pipeline:
                x, y = next(batches)
            else:
                x, y = random_x, random_y
            step(x, y)
        return args.steps * args.batch_size / (time.perf_counter() - start)

    window(True)
    window(False)  # warm-up both
    pipe, rand = [], []
    for r in range(args.rounds):
        order = (True, False) if r % 2 == 0 else (False, True)
        for use_pipeline in order:
            (pipe if use_pipeline else rand).append(window(use_pipeline))
    result = {
        "model": args.model, "image_size": args.image_size, "batch_size": args.batch_size,
        "dataset": data.name, "images": len(data), "threads": torch.get_num_threads(),
        "decode_seconds_first_load": round(decode_s, 2), "seconds_cached_load": round(cached_s, 3),
        "pipeline_img_s": round(statistics.median(pipe), 1), "random_img_s": round(statistics.median(rand), 1),
        "ratio": round(statistics.median(pipe) / statistics.median(rand), 3),
        "windows": {"pipeline": [round(v, 1) for v in pipe], "random": [round(v, 1) for v in rand]},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"{args.model} {args.image_size}px batch {args.batch_size}, training images/s (median of "
          f"{args.rounds} windows x {args.steps} steps, {result['threads']} threads)")
    print(f"  real {data.name} through the pipeline: {result['pipeline_img_s']:8.1f}")
    print(f"  random in-memory tensors:          {result['random_img_s']:8.1f}")
    print(f"  ratio pipeline / random:           {result['ratio']:8.3f}   (target >= 0.9)")
    print(f"  first load (decode {len(data)} images): {decode_s:.1f}s, cached load: {cached_s:.2f}s")
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
