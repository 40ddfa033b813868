"""The ``--target`` grammar as a whole: a measured target (:mod:`costs.hardware`) or a latency table.

``lut:FILE`` names a latency table (:mod:`costs.latency.table`, built by ``python -m search.profile``):
latency is then *predicted* from it instead of measured. It parses into a :class:`TableTarget`,
a :class:`costs.hardware.Target` with the fields of the target the table was measured on and
``table`` set; its :attr:`~costs.hardware.Target.measured` is that target, where final models are
timed. :meth:`TableTarget.check` refuses a table measured on another target than this machine's
(naming what differs); kernels the table lacks are measured on the fly on that target.

    from costs.targets import parse_target, compare_latency_on
    target = parse_target("lut:lut.json")          # or "cpu", "cuda:0,runtime=torchscript", ...
    compare_latency_on(target, {"base": base, "model": model}, image_size=64)
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from costs.hardware import DEFAULT_SPEC, GRAMMAR, Target, compare_latency_on, parse_hardware
from costs.latency.table import LatencyTable, check_table, load_table
from rsc.errors import ConfigError

__all__ = ["Target", "TableTarget", "parse_target", "compare_latency_on", "GRAMMAR", "DEFAULT_SPEC"]


@dataclass(frozen=True)
class TableTarget(Target):
    """A ``lut:FILE`` target: the fields of the target ``table`` was measured on, and ``table`` itself."""

    def load_table(self) -> LatencyTable:
        """The table (:func:`costs.latency.table.load_table`; ConfigError if unreadable)."""
        return load_table(self.table)

    def check(self) -> TableTarget:
        """The table's target exists here and the table was measured on it (TableMismatch naming what differs)."""
        table = self.load_table()
        self.measured.check()
        check_table(table, fingerprint=self.measured.fingerprint())
        return self

    def fingerprint(self) -> dict[str, Any]:
        """The table's fingerprint, with the table's path and the target it was measured on."""
        table = self.load_table()
        return {**table.fingerprint, "spec": self.spec, "table": self.table, "measured_on": table.target}


def parse_target(spec: str | Target | None) -> Target:
    """Parse a ``--target`` string: ``lut:FILE`` (a :class:`TableTarget`) or a measured target
    (:func:`costs.hardware.parse_hardware`); a :class:`Target` passes through, None is ``cpu``.

    Raises:
        ConfigError: one line naming the bad part and what is allowed.
    """
    if isinstance(spec, Target):
        return spec
    text = DEFAULT_SPEC if spec is None else str(spec).strip()
    if text[:4].lower() != "lut:":
        return parse_hardware(text)
    path = text[4:].strip()  # the rest is a path (commas and colons included)
    if not path:
        raise ConfigError(f"target {text!r}: lut: takes a latency table file, e.g. lut:lut.json (build one with "
                          f"python -m search.profile) (grammar: {GRAMMAR})")
    try:
        inner = parse_hardware(load_table(path).target)
    except ConfigError as exc:
        raise ConfigError(f"target {text!r}: {exc}") from None
    return TableTarget(**{f.name: getattr(inner, f.name) for f in fields(Target) if f.name != "table"}, table=path)
