"""What a search spent: training passes and wall time, by where it spent them.

A search is worth its compute only if its model beats what the same compute buys without it (the uniform
configuration fine-tuned longer). So every search keeps a :class:`Ledger`: the *epoch-equivalents* it
trained - one pass over the search split's training part is one; a cross-validation fold's pass counts its
share of that (its training part over the split's) - and the wall seconds, by part:

- ``trials``: every trial's fine-tune epochs, stopped and screened trials included (exploration);
- ``halving``: the final stage's successive-halving rungs (exploration: they only choose);
- ``final``: the final fine-tunes of the chosen set (and its latency repairs);
- ``rank_sample``: the extra fine-tunes that only measure how well trial scores rank (``--rank-sample``);
- ``crossval``: the cross-validation fine-tunes (``--final-folds``); ``crossval_bases``: the bases of the
  folds (trained once and cached, counted whether cached or not: the choice needs them);
- ``baseline``: the uniform configuration's fine-tune (:mod:`search.final`), not part of the search.

The base model's own training (``base_epochs``) is shared by the search and its baseline and kept apart.

    ledger = Ledger(device="cpu", base_epochs=30)
    ledger.add("trials", epochs=2, seconds=41.0)
    ledger.search_epochs(), ledger.exploration_share()
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

__all__ = ["Ledger", "PARTS", "EXPLORATION", "trials_ledger", "trial_epochs"]

#: The parts, in the order a search spends them.
PARTS = ("trials", "halving", "final", "rank_sample", "crossval", "crossval_bases", "baseline")
#: The parts that explore (find candidates and choose between them) rather than train the model shipped.
EXPLORATION = ("trials", "halving")


@dataclass
class Ledger:
    """Epoch-equivalents and wall seconds by part (:data:`PARTS`), the device trained on, the base's epochs."""

    device: str = "cpu"
    base_epochs: int = 0
    epochs: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, part: str, *, epochs: float = 0.0, seconds: float = 0.0) -> None:
        if part not in PARTS:
            raise ValueError(f"unknown compute part {part!r}; known: {', '.join(PARTS)}")
        self.epochs[part] = self.epochs.get(part, 0.0) + float(epochs or 0.0)
        self.seconds[part] = self.seconds.get(part, 0.0) + float(seconds or 0.0)

    def search_epochs(self) -> float:
        """Every epoch-equivalent the search spent to reach its model and its choice (the baseline's apart)."""
        return sum(v for k, v in self.epochs.items() if k != "baseline")

    def search_seconds(self) -> float:
        return sum(v for k, v in self.seconds.items() if k != "baseline")

    def matched_epochs(self) -> float:
        """The epochs a compute-matched baseline gets: the trials, halving rungs and final fine-tunes (what the
        search spent to reach its model; the rank sample only measures, cross-validation only re-scores)."""
        return sum(self.epochs.get(k, 0.0) for k in (*EXPLORATION, "final"))

    def exploration_share(self) -> float | None:
        """The share of the search's epochs spent exploring (trials, halving rungs); None before any."""
        total = self.search_epochs()
        return sum(self.epochs.get(k, 0.0) for k in EXPLORATION) / total if total else None

    def to_dict(self) -> dict[str, Any]:
        share = self.exploration_share()
        return {"device": self.device, "base_epochs": self.base_epochs,
                "epochs": {k: round(self.epochs[k], 4) for k in PARTS if k in self.epochs},
                "seconds": {k: round(self.seconds[k], 3) for k in PARTS if k in self.seconds},
                "search_epochs": round(self.search_epochs(), 4), "search_seconds": round(self.search_seconds(), 3),
                "exploration_share": None if share is None else round(share, 4)}

    def metrics(self) -> dict[str, float]:
        """The ledger as flat MLflow metrics (``compute_epochs_<part>``, ``compute_seconds_<part>``...)."""
        out = {f"compute_epochs_{k}": v for k, v in self.epochs.items()}
        out.update({f"compute_seconds_{k}": v for k, v in self.seconds.items()})
        out["compute_search_epochs"] = self.search_epochs()
        out["compute_search_seconds"] = self.search_seconds()
        share = self.exploration_share()
        if share is not None:
            out["compute_exploration_share"] = share
        return out

    def line(self) -> str:
        """One line for a person: the search's epochs, their split between exploring and the final fine-tune,
        wall time and device; the baseline's beside it."""
        e, s = self.epochs, self.seconds
        parts = [f"{_n(e[k])} {k.replace('_', ' ')}" for k in PARTS if k != "baseline" and e.get(k)]
        share = self.exploration_share()
        text = (f"compute: {_n(self.search_epochs())} epoch-equivalents of fine-tuning ({', '.join(parts) or 'none'}"
                + (f"; {100 * share:.0f}% exploring" if share is not None else "") + f"), "
                f"{_minutes(self.search_seconds())} on {self.device}")
        if "baseline" in e:
            text += f"; the uniform baseline {_n(e['baseline'])} ({_minutes(s.get('baseline', 0.0))})"
        if self.base_epochs:
            text += f"; the base model trained {self.base_epochs} epoch{'s' if self.base_epochs != 1 else ''} before either"
        return text

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Ledger":
        return cls(device=str(data.get("device", "cpu")), base_epochs=int(data.get("base_epochs", 0)),
                   epochs=dict(data.get("epochs") or {}), seconds=dict(data.get("seconds") or {}))


def _n(v: float) -> str:
    return f"{v:.0f}" if abs(v - round(v)) < 1e-9 else f"{v:.1f}"


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def trial_epochs(t: Any) -> int:
    """The fine-tune epochs a finished trial (:class:`search.engines.base.TrialRecord`) trained: as recorded,
    else - a study written before trials recorded it - the length of its validation curve (0 for a stopped one)."""
    if getattr(t, "epochs_run", None) is not None:
        return int(t.epochs_run)
    return len(getattr(t, "val_history", ()) or ())


def trials_ledger(trials: Iterable[Any], *, device: str, base_epochs: int = 0) -> Ledger:
    """A ledger holding the search's trials (complete, stopped, screened, failed; not the interrupted ones,
    which ``--resume`` runs again): their epochs and wall seconds."""
    ledger = Ledger(device=device, base_epochs=base_epochs)
    for t in trials:
        if t.state not in ("complete", "pruned", "fail") or getattr(t, "interrupted", False):
            continue
        seconds = dict(t.seconds or {})
        total = seconds.get("total", sum(v for v in seconds.values() if isinstance(v, (int, float))))
        ledger.add("trials", epochs=trial_epochs(t), seconds=total)
    return ledger
