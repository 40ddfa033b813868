"""Every stored study's tables.md regenerates byte-identical from its cells (benchmarks/results/study-*):
the study's tables, pick rules and method table read the same rows the same way after any refactoring."""

from __future__ import annotations

import json
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STUDIES = sorted((ROOT / "benchmarks" / "results").glob("study-*"))
NUM_CLASSES = {"ucmerced": 21}


@pytest.mark.parametrize("study", STUDIES, ids=lambda p: p.name)
def test_stored_tables_regenerate_byte_identical(study, tmp_path, monkeypatch):
    import search.study.tables as tables
    from search.study.config import StudyConfig

    monkeypatch.setattr(tables, "_plot", lambda *a, **k: None)  # the pictures are not what is compared
    meta = json.loads((study / "study.json").read_text())
    settings = meta["settings"]
    config = StudyConfig.from_settings(settings)
    rows = [json.loads(p.read_text()) for p in sorted((study / "cells").glob("*.json"))]
    data = types.SimpleNamespace(name=meta["dataset"], num_classes=NUM_CLASSES[meta["dataset"]])
    prep = types.SimpleNamespace(config=config, data=data, ratios=tuple(settings.get("ratios") or (0.8,)))
    out = tmp_path / (settings.get("name") or study.name)
    out.mkdir()
    tables.write_outputs(prep, rows, out)
    assert (out / "tables.md").read_text() == (study / "tables.md").read_text()
