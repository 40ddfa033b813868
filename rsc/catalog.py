"""The registry of remote-sensing scene datasets and the detection of their folder layouts.

A dataset is one :class:`DatasetInfo` entry: classes, expected image count, native size, the
training ratios the literature reports, where to get it, and how its folders look. Adding a
dataset means adding one ``register(...)`` call below.

Layouts understood (see ``../shared/datasets/SOURCES.md``):

* class folders ``<root>/<class>/*.<ext>`` (ImageFolder), any of jpg/jpeg/png/tif/tiff/bmp, any case;
* the same under wrapper folders (``Images/``, ``images/``, ``2750/``, ``RSSCN7-master/``, or any
  single sub-folder), e.g. UC Merced's official ``UCMerced_LandUse/Images/<class>/*.tif``;
* Brazilian Coffee Scenes: ``fold1..fold5/*.jpg`` with ``fold1.txt..fold5.txt`` listing
  ``<coffee|noncoffee>.<image name>`` - the label comes from the fold file, split on the first dot.

Class order follows a case-sensitive sort of folder names, as torchvision's ImageFolder does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from rsc.errors import ConfigError, DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")
WRAPPER_FOLDERS = ("Images", "images", "2750", "RSSCN7-master", "EuroSAT_RGB", "EuroSAT")


@dataclass(frozen=True)
class DatasetInfo:
    """What the field knows about one dataset.

    Attributes:
        name: registry key, used by ``--dataset``.
        title: the dataset's published name.
        num_classes: number of scene classes.
        num_images: images in the official release (a loader warns when it finds another count).
        native_size: side of the released images in pixels (nominal).
        train_ratios: training ratios used by the RS literature for this dataset.
        url: official (or widely used mirror) archive, for ``--download``; None where only a
            landing page exists.
        sha256 / md5: archive checksum (at most one needed).
        folder_names: top-level folder names that identify the dataset when detecting it.
        layout: ``"folders"`` (class folders) or ``"coffee_folds"``.
        note: anything the user should know (licence, manual steps).
    """

    name: str
    title: str
    num_classes: int
    num_images: int
    native_size: int
    train_ratios: tuple[float, ...]
    url: str | None = None
    sha256: str | None = None
    md5: str | None = None
    folder_names: tuple[str, ...] = ()
    layout: str = "folders"
    note: str = ""
    extra: dict = field(default_factory=dict)


_REGISTRY: dict[str, DatasetInfo] = {}


def register(info: DatasetInfo) -> DatasetInfo:
    """Add a dataset to the registry; a duplicate name is a programming error."""
    if info.name in _REGISTRY:
        raise ValueError(f"dataset {info.name!r} is already registered")
    _REGISTRY[info.name] = info
    return info


def list_datasets() -> list[str]:
    """Names of all registered datasets, sorted."""
    return sorted(_REGISTRY)


def get_dataset_info(name: str) -> DatasetInfo:
    """Look a dataset up by name (case- and separator-insensitive)."""
    key = _normalise(name)
    for info in _REGISTRY.values():
        if _normalise(info.name) == key or key in (_normalise(n) for n in info.folder_names):
            return info
    raise ConfigError(f"unknown dataset {name!r}; known datasets: {', '.join(list_datasets())}")


def _normalise(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


register(DatasetInfo(
    name="ucmerced", title="UC Merced Land-Use", num_classes=21, num_images=2100, native_size=256,
    train_ratios=(0.5, 0.8),
    url="http://weegee.vision.ucmerced.edu/datasets/UCMerced_LandUse.zip",
    sha256="06c539ef28703a58fb07bd2837991ac7c48b813b00bb12ac197efd813a18daeb",
    folder_names=("UCMerced_LandUse", "UCMerced", "uc_merced"),
    note="public domain; 44 images are 242-257 px instead of 256",
))
register(DatasetInfo(
    name="nwpu_resisc45", title="NWPU-RESISC45", num_classes=45, num_images=31500, native_size=256,
    train_ratios=(0.1, 0.2),
    url="https://hf.co/datasets/isaaccorley/resisc45/resolve/883edc0eee77b2c84225472f10f126e3ed83fa6e/NWPU-RESISC45.zip",
    md5="75206b2e16446591afa88e2628744886",
    folder_names=("NWPU-RESISC45", "RESISC45", "resisc45"),
    note="official release is a .rar (OneDrive/Baidu); the zip mirror is used for --download",
))
register(DatasetInfo(
    name="aid", title="AID", num_classes=30, num_images=10000, native_size=600,
    train_ratios=(0.2, 0.5), folder_names=("AID",),
    note="download by hand from https://captain-whu.github.io/AID/ (no direct archive)",
))
register(DatasetInfo(
    name="whu_rs19", title="WHU-RS19", num_classes=19, num_images=1005, native_size=600,
    train_ratios=(0.4, 0.6),
    url="https://github.com/CAPTAIN-WHU/BED4RS/raw/main/datasets/WHU-RS19.zip",
    sha256="1b6dc34bcc7ea50c45c7fc74cd41ece25121412eaa923c9b4a30b482c1347cf0",
    folder_names=("WHU-RS19", "RSDataset", "WHU_RS19"),
))
register(DatasetInfo(
    name="siri_whu", title="SIRI-WHU", num_classes=12, num_images=2400, native_size=200,
    train_ratios=(0.5, 0.8), folder_names=("SIRI-WHU", "SIRI_WHU", "12class_tif"),
    note="download by hand from http://www.lmars.whu.edu.cn/prof_web/zhongyanfei/e-code.html",
))
register(DatasetInfo(
    name="rsscn7", title="RSSCN7", num_classes=7, num_images=2800, native_size=400,
    train_ratios=(0.2, 0.5),
    url="https://github.com/palewithout/RSSCN7/archive/refs/heads/master.zip",
    folder_names=("RSSCN7", "RSSCN7-master"),
))
register(DatasetInfo(
    name="rsc11", title="RSC11", num_classes=11, num_images=1232, native_size=512,
    train_ratios=(0.5,), folder_names=("RSC11", "RS_C11_Database"),
    note="no verified download URL; place the class folders by hand",
))
register(DatasetInfo(
    name="brazilian_coffee", title="Brazilian Coffee Scenes", num_classes=2, num_images=2876,
    native_size=64, train_ratios=(0.8,),
    url="http://www.patreo.dcc.ufmg.br/wp-content/uploads/2017/11/brazilian_coffee_dataset.zip",
    folder_names=("brazilian_coffee_scenes", "brazilian_coffee_dataset"), layout="coffee_folds",
    note="bands are Green, Red, NIR (false colour); the 5 published folds are the protocol",
))
register(DatasetInfo(
    name="eurosat", title="EuroSAT (RGB)", num_classes=10, num_images=27000, native_size=64,
    train_ratios=(0.1, 0.2, 0.8),
    url="https://zenodo.org/records/7711810/files/EuroSAT_RGB.zip",
    folder_names=("EuroSAT", "EuroSAT_RGB", "2750"),
))
register(DatasetInfo(
    name="patternnet", title="PatternNet", num_classes=38, num_images=30400, native_size=256,
    train_ratios=(0.2, 0.5),
    url="https://hf.co/datasets/torchgeo/PatternNet/resolve/2dbd901b00e301967a5c5146b25454f5d3455ad0/PatternNet.zip",
    md5="96d54b3224c5350a98d55d5a7e6984ad", folder_names=("PatternNet",),
))


# --------------------------------------------------------------------------- layout detection

@dataclass(frozen=True)
class Layout:
    """What :func:`scan` found on disk: one entry per image file, labels as class indices."""

    root: Path
    classes: list[str]
    files: list[str]  # paths relative to ``root``
    labels: list[int]
    info: DatasetInfo | None
    warnings: list[str]
    folds: list[int] | None = None  # Brazilian Coffee: the published fold of each file


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def _visible_dirs(path: Path) -> list[Path]:
    return sorted((p for p in path.iterdir() if p.is_dir() and not p.name.startswith((".", "__"))),
                  key=lambda p: p.name)


def _descend_wrappers(root: Path) -> Path:
    """Walk down wrapper folders (``Images/``, ``2750/``, a lone sub-folder) to the class folders."""
    path = root
    for _ in range(4):
        files = [p for p in path.iterdir() if p.is_file() and _is_image(p.name)]
        if files:
            return path
        dirs = _visible_dirs(path)
        wrappers = [d for d in dirs if d.name in WRAPPER_FOLDERS]
        if len(wrappers) == 1 and not _has_images(wrappers[0], shallow=True):
            path = wrappers[0]
        elif len(dirs) == 1 and not _has_images(dirs[0], shallow=True):
            path = dirs[0]
        else:
            return path
    return path


def _has_images(path: Path, *, shallow: bool) -> bool:
    try:
        return any(p.is_file() and _is_image(p.name) for p in path.iterdir())
    except OSError:
        return False


def scan(data: str | os.PathLike, *, dataset: str | None = None) -> Layout:
    """Find the images and their classes under ``data``.

    Args:
        data: the dataset folder as the user has it (the archive's top folder or any level above
            the class folders).
        dataset: registry name; when None it is guessed from folder names and the class count.

    Raises:
        DataError: missing path, not a folder, an empty folder, class folders without images.
    """
    root = Path(data).expanduser()
    if not root.exists():
        raise DataError(f"dataset path does not exist: {root}")
    if not root.is_dir():
        raise DataError(f"dataset path is not a folder: {root}")
    info = get_dataset_info(dataset) if dataset else None
    if (info is not None and info.layout == "coffee_folds") or _find_coffee_root(root) is not None:
        coffee_root = _find_coffee_root(root)
        if coffee_root is None:
            raise DataError(f"no Brazilian Coffee fold files (fold1.txt...) under {root}")
        return _scan_coffee(coffee_root, get_dataset_info("brazilian_coffee"))

    base = _descend_wrappers(root)
    loose = [p.name for p in base.iterdir() if p.is_file() and _is_image(p.name)]
    class_dirs = _visible_dirs(base)
    if not class_dirs:
        if loose:
            raise DataError(f"{base} holds images but no class folders; expected <class>/<image> folders")
        raise DataError(f"dataset folder is empty (no class folders with images): {base}")
    warnings: list[str] = []
    if loose:
        warnings.append(f"{len(loose)} images directly in {base} (outside class folders) ignored")
    files: list[str] = []
    labels: list[int] = []
    empty: list[str] = []
    classes = [d.name for d in class_dirs]
    for index, class_dir in enumerate(class_dirs):
        names = sorted(
            str(p.relative_to(base)) for p in class_dir.rglob("*")
            if p.is_file() and _is_image(p.name)
        )
        if not names:
            empty.append(class_dir.name)
        files.extend(names)
        labels.extend([index] * len(names))
    if empty:
        raise DataError(
            f"{len(empty)} class folder(s) under {base} hold no images: {', '.join(empty[:10])}"
            + (" ..." if len(empty) > 10 else "")
        )
    if info is None:
        info = _guess_info(root, base, len(classes))
    if info is not None:
        if info.num_classes != len(classes):
            warnings.append(
                f"{info.title} has {info.num_classes} classes, found {len(classes)} class folders in {base}"
            )
        if info.num_images != len(files):
            warnings.append(f"{info.title} has {info.num_images} images, found {len(files)}")
    return Layout(root=base, classes=classes, files=files, labels=labels, info=info, warnings=warnings)


def _guess_info(root: Path, base: Path, num_classes: int) -> DatasetInfo | None:
    """Name the dataset from its folder names, confirmed by its class count."""
    names = {_normalise(p.name) for p in (root, base, *base.parents) if p.name}
    for info in _REGISTRY.values():
        keys = {_normalise(info.name), *(_normalise(n) for n in info.folder_names)}
        if names & keys and info.num_classes == num_classes:
            return info
    return None


def _find_coffee_root(root: Path) -> Path | None:
    for candidate in (root, *_visible_dirs(root)):
        if (candidate / "fold1.txt").is_file():
            return candidate
    return None


def _scan_coffee(base: Path, info: DatasetInfo) -> Layout:
    """Brazilian Coffee Scenes: the label of each image comes from its fold file."""
    entries: list[tuple[str, str, int]] = []
    for fold_file in sorted(base.glob("fold*.txt")):
        fold = int("".join(ch for ch in fold_file.stem if ch.isdigit()) or 0)
        for line in fold_file.read_text().splitlines():
            line = line.strip()
            if not line:
                continue
            label, _, stem = line.partition(".")
            if not stem:
                raise DataError(f"{fold_file}: line {line!r} is not '<coffee|noncoffee>.<image name>'")
            entries.append((label, f"fold{fold}/{stem}.jpg", fold))
    if not entries:
        raise DataError(f"Brazilian Coffee fold files under {base} list no images")
    classes = sorted({label for label, _, _ in entries})
    missing = [f for _, f, _ in entries if not (base / f).is_file()]
    warnings = [f"{len(missing)} images listed in fold files are missing, e.g. {missing[0]}"] if missing else []
    kept = [(label, f, fold) for label, f, fold in entries if (base / f).is_file()]
    return Layout(
        root=base, classes=classes, files=[f for _, f, _ in kept],
        labels=[classes.index(label) for label, _, _ in kept], info=info, warnings=warnings,
        folds=[fold for _, _, fold in kept],
    )
