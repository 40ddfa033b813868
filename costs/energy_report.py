"""A model's energy per image, layer by layer, under the analytical model; and this machine's energy counters.

    python -m costs.energy_report --model resnet18 --image-size 64 --num-classes 21 [--top 10] [--sparse]

The model and its assumptions: :mod:`costs.energy`. The counters: :mod:`costs.energy_counters`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from costs.energy import EnergyModel, LayerEnergy, energy_breakdown, summarize
from costs.energy_counters import counters

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    from rsc.cli import parser, positive_int

    p = parser("python -m costs.energy_report", __doc__)
    p.add_argument("--model", default="resnet18", help="torchvision model name")
    p.add_argument("--image-size", type=positive_int, help="input side in pixels (default: 64, or the file's)")
    p.add_argument("--num-classes", type=positive_int, default=21)
    p.add_argument("--in-channels", type=positive_int, default=3)
    p.add_argument("--top", type=positive_int, help="show only the N most expensive layers")
    p.add_argument("--sparse", action="store_true", help="zero weights cost nothing (skip_zero_weights)")
    return p


def _table(layers: Sequence[LayerEnergy], top: int | None) -> str:
    total = sum(layer.total_pj for layer in layers) or 1.0
    shown = sorted(layers, key=lambda r: -r.total_pj)[:top] if top else list(layers)
    rows = [["layer", "kind", "bits", "MACs", "compute uJ", "data uJ", "of it DRAM uJ", "share"]]
    for r in shown:
        rows.append([r.name, r.kind, str(r.bits), f"{r.macs:,}", f"{r.compute_pj * 1e-6:.3f}",
                     f"{r.data_pj * 1e-6:.3f}", f"{r.dram_pj * 1e-6:.3f}" + (" *" if r.spills else ""),
                     f"{100 * r.total_pj / total:.1f}%"])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from rsc.cli import run_cli

    args = build_parser().parse_args(argv)

    def body() -> int:
        em = EnergyModel(skip_zero_weights=args.sparse)
        from rsc.models import create_model

        image_size = args.image_size or 64
        model = create_model(args.model, args.num_classes, image_size=image_size)
        what = f"{args.model} ({args.num_classes} classes)"
        layers = energy_breakdown(model, image_size, args.in_channels, em)
        s = summarize(layers)
        print(f"{what} at {image_size} px, batch 1; {em.source}; buffer {em.buffer_bytes / 2**10:g} KiB "
              f"({float(em.buffer_pj):.3g} pJ/word), array reuse {em.array_reuse:g}")
        print(_table(layers, args.top))
        if any(r.spills for r in layers):
            print("* activations spill to DRAM (input + output exceed the buffer)")
        tot = s["total"] or 1.0
        print(f"total {s['total'] * 1e-9:.4g} mJ per image ({s['macs'] / 1e6:.1f} M MACs): "
              f"compute {s['compute'] * 1e-9:.4g} mJ ({100 * s['compute'] / tot:.0f}%), "
              f"data movement {s['data'] * 1e-9:.4g} mJ ({100 * s['data'] / tot:.0f}%: "
              f"DRAM {s['dram'] * 1e-9:.4g}, buffer {s['buffer'] * 1e-9:.4g}, RF {s['rf'] * 1e-9:.4g})")
        print("measured energy counters:")
        for c in counters().values():
            print(f"  {c}")
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
