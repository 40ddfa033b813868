"""Settings dataclasses as command lines: one field = one flag, its name, default and help said once.

A settings field declared with :func:`opt` and a ``help`` text is also a command-line flag;
:func:`add_options` adds one flag per such field to an argparse parser and :func:`options_from_args`
reads back the fields the user gave (flags left out stay ``None`` in the namespace, so the
dataclass's own default applies). ``search.run``, ``search.study`` and ``rsc.train`` build their
parsers this way, so a default is written once, in the dataclass.

    @dataclass(frozen=True, kw_only=True)
    class Settings:
        epochs: int = opt(30, "training epochs (default {default})")
        methods: tuple[str, ...] = opt(("a", "b"), "comma list (default {default})", list=True)

    p = argparse.ArgumentParser(); add_options(p, Settings)
    Settings(**options_from_args(p.parse_args(argv), Settings))
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["opt", "add_options", "options_from_args", "value_type"]


def opt(default: Any, help: str | None = None, **meta: Any) -> Any:
    """A settings field; with ``help`` it is also a command-line flag (:func:`add_options`).

    ``meta``: ``flag`` (the flag's name when not ``--field-name``), ``aliases`` (more flag names),
    ``deprecated`` (flag names still accepted with a warning naming the flag), ``choices``,
    ``metavar``, ``list`` (a comma list on the command line, parsed by ``item`` - a callable, default
    ``str`` - and checked against ``choices``), ``repeat`` (the flag repeats: ``--budget``), ``type``
    (a parser of the value; default: from the annotation), ``switch`` (a bool flag that sets the
    opposite of the default). ``{default}`` in ``help`` is replaced by the default. A mutable default
    (a dict) is given as ``factory``.
    """
    metadata = {"help": help, **meta} if help else meta
    if callable(meta.get("factory")):
        return dataclasses.field(default_factory=meta["factory"], metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def value_type(annotation: str) -> Callable[[str], Any]:
    """The argparse type of a field from its annotation (``int``, ``float``, else ``str``)."""
    for name, kind in (("int", int), ("float", float)):
        if annotation.split("|")[0].strip() == name:
            return kind
    return str


def _shown(default: Any) -> str:
    if isinstance(default, tuple):
        return ",".join(str(v) for v in default) or "none"
    return str(default)


class _Deprecated(argparse.Action):
    """A deprecated flag name: stores like the new one, after a one-line warning on stderr naming both."""

    def __init__(self, *args: Any, new: str = "", inner: str = "store", **kwargs: Any) -> None:
        self.new, self.inner = new, inner
        super().__init__(*args, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        print(f"warning: {option_string} is deprecated and will be removed in the next release; use {self.new}",
              file=sys.stderr)
        setattr(namespace, self.dest, values)


def _list_parser(item: Callable[[str], Any], choices: Sequence[Any] | None) -> Callable[[str], tuple]:
    def parse(text: str) -> tuple:
        items = [t.strip() for t in text.split(",") if t.strip()]
        try:
            values = tuple(item(t) for t in items)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma list of {getattr(item, '__name__', 'values')}, "
                                             f"got {text!r}") from None
        bad = [str(v) for v in values if choices is not None and v not in choices]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {', '.join(bad)}; choose from {', '.join(map(str, choices))}")
        return values

    return parse


def add_options(parser: argparse.ArgumentParser, cls: type, *, defaults: Any = None,
                skip: Sequence[str] = ()) -> None:
    """One flag per field of dataclass ``cls`` that has help (defaults stay in the dataclass: every flag's
    parsed default is None). ``defaults``: an instance whose values the help shows (default ``cls()``)."""
    defaults = cls() if defaults is None else defaults
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if not meta.get("help") or f.name in skip:
            continue
        default = getattr(defaults, f.name)
        text = meta["help"].replace("{default}", _shown(default).replace("%", "%%"))
        flag = meta.get("flag") or "--" + f.name.replace("_", "-")
        names = [flag, *meta.get("aliases", ())]
        common: dict[str, Any] = {"dest": f.name, "default": None}
        if isinstance(default, bool) and not meta.get("type"):  # a switch away from the default
            parser.add_argument(*names, action="store_false" if default else "store_true", help=text, **common)
            continue
        if meta.get("repeat"):
            kw: dict[str, Any] = {"action": "append", "metavar": meta.get("metavar")}
        elif meta.get("list"):
            kw = {"type": _list_parser(meta.get("item", str), meta.get("choices")), "metavar": meta.get("metavar")}
        else:
            kw = {"choices": meta.get("choices"), "metavar": meta.get("metavar"),
                  "type": meta.get("type") or value_type(str(f.type))}
        parser.add_argument(*names, help=text, **kw, **common)
        for old in meta.get("deprecated", ()):
            parser.add_argument(old, action=_Deprecated, new=flag, help=argparse.SUPPRESS,
                                **{k: v for k, v in kw.items() if k != "action"}, **common)


def options_from_args(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The fields of ``cls`` the parsed command line gives (None means not given); repeated flags as tuples."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        value = getattr(args, f.name, None)
        if value is None:
            continue
        out[f.name] = tuple(value) if f.metadata.get("repeat") else value
    return out

