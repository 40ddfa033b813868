"""The uncompressed base model of a search: loaded from a checkpoint, or trained once and cached.

Cached under ``<rsc cache>/base-models/`` keyed by architecture, dataset, size, split digest, epochs,
seed, the BatchNorm re-estimation that ends training and, where they are not the defaults (so that
keys written before they were part of it stay valid), the learning rate, batch size and augmentation,
so repeated searches (and the tests) train it once. ``KEY_VERSION`` is part of the key: raise it
whenever training changes what a key produces, so a cache written by older code is never taken for
the new model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from rsc.recipe import DEFAULT_BATCH_SIZE, DEFAULT_LR

__all__ = ["obtain_base_checkpoint", "search_base_checkpoint", "KEY_VERSION"]

#: v2: training ends on BatchNorm statistics re-estimated on ``bn_batches`` unaugmented batches.
KEY_VERSION = 2
#: The base recipe a key leaves implicit; ``search.config`` and the study take their defaults from here.


def obtain_base_checkpoint(*, model_name: str, weights: str | None, data: Any, split: Any, epochs: int, lr: float,
                           batch_size: int, seed: int, device: str, progress: bool,
                           say: Callable[[str], None], bn_batches: int = 4,
                           augment: Any = True) -> tuple[Path, bool]:
    """Return ``(checkpoint path, trained_now)`` of the base model for ``data``/``split``.

    ``weights`` may be an rsc checkpoint trained on these classes (used as is) or any other weights
    file (a backbone: loaded where shapes fit, then trained on ``data`` like no weights at all).
    ``bn_batches``: unaugmented training batches BatchNorm statistics are re-estimated on at the end
    (:func:`rsc.loop.recalibrate_bn`). ``augment``: the training augmentation (an
    :class:`rsc.augment.AugmentConfig`, True for the default, False for none); part of the key
    unless it is the default.
    """
    from rsc.checkpoint import check_classes, load_checkpoint, save_checkpoint
    from rsc.scenes import cache_dir
    from rsc.errors import CheckpointError

    if weights is not None:
        try:
            blob = load_checkpoint(weights)
        except CheckpointError:
            blob = None
        if blob is not None:
            arch = blob["arch"]
            if arch.get("model") != model_name:
                raise CheckpointError(f"checkpoint {weights} holds a {arch.get('model')}, not --model {model_name}")
            check_classes(blob, data.classes, where=f" {data.name}")
            return Path(weights), False
    from rsc.augment import AugmentConfig

    aug = AugmentConfig() if augment is True else augment or None
    key = f"v{KEY_VERSION}-{model_name}-{data.name}-{data.image_size}px-{split.digest}-e{epochs}-s{seed}-bn{bn_batches}"
    if aug != AugmentConfig():
        key += "-aug-" + (aug.tag() if aug is not None else "none")
    if lr != DEFAULT_LR:  # a network trained at another rate is another model (--network-lr, --base-lr)
        key += f"-lr{lr:g}"
    if batch_size != DEFAULT_BATCH_SIZE:
        key += f"-b{batch_size}"
    if weights is not None:
        key += "-from-" + Path(weights).stem
    path = cache_dir() / "base-models" / f"{key}.pt"
    if path.is_file():
        try:
            cached = (load_checkpoint(path).get("config") or {}).get("lr", lr)
            if cached == lr:
                say(f"base model: cached {path}")
                return path, False
            # written before the rate was part of the key: another model under this name
            say(f"base model: replacing cache {path} (trained at lr {cached:g}, not {lr:g})")
        except CheckpointError:
            say(f"base model: ignoring unreadable cache {path}")
    from rsc.loaders import make_loaders
    from rsc.metrics import evaluate
    from rsc.models import create_model
    from rsc.loop import collapse_note, fit, reestimate_bn, seed_everything

    what = f"from {weights}" if weights else "from scratch"
    say(f"base model: no --weights given, training {model_name} {what} for {epochs} epochs on {data.name} "
        f"(cached at {path})" if weights is None else f"base model: training {model_name} {what} for {epochs} epochs")
    seed_everything(seed)  # the initial weights too: a cached base must not depend on what ran before it
    model = create_model(model_name, data.num_classes, weights=weights, image_size=data.image_size)
    train, val, _ = make_loaders(data, split, batch_size=batch_size, augment=aug or False, seed=seed, device=device)
    fit(model, train, epochs=epochs, lr=lr, device=device, seed=seed, progress=progress, desc="base")
    reestimate_bn(model, data, split, batches=bn_batches, batch_size=batch_size, seed=seed, device=device)
    val_oa = evaluate(model, val, num_classes=data.num_classes, device=device).oa
    say(f"base model: val OA {val_oa:.4f}")
    note = collapse_note(val_oa, data.num_classes, lr)
    if note:
        say(f"warning: base model {model_name}: {note}")
    save_checkpoint(path, model.cpu(), arch={"model": model_name, "num_classes": data.num_classes,
                                             "image_size": data.image_size}, classes=data.classes,
                    split=split.info(), metrics={"val_oa": val_oa},
                    config={"epochs": epochs, "lr": lr, "bn_batches": bn_batches, "key_version": KEY_VERSION})
    return path, True


def search_base_checkpoint(config: Any, data: Any, split: Any, device: str,
                           say: Callable[[str], None]) -> tuple[Path, bool]:
    """:func:`obtain_base_checkpoint` with a search's base recipe (``SearchConfig``): the search's own base
    and, on a fold of its split, the bases of ``--final-folds`` (:mod:`search.crossval`)."""
    return obtain_base_checkpoint(model_name=config.model, weights=config.weights, data=data, split=split,
                                  epochs=config.base_epochs, lr=config.base_lr, batch_size=config.batch_size,
                                  seed=config.data_seed, device=device, progress=config.progress, say=say,
                                  bn_batches=config.bn_batches)
