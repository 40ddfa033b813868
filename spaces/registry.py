"""Name -> space class. Adding a compression method = one module + ``@register_space(name)``.

The built-in spaces register when their modules are imported; every lookup here imports them first
(:func:`load_spaces`), so ``import spaces.registry`` alone stays cheap (no torch) and a command line
can name :data:`DEFAULT_METHODS` in its ``--help`` at once.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from spaces.errors import SpaceError

__all__ = ["register_space", "unregister_space", "resolve_space", "list_spaces", "space_class", "get_space",
           "load_spaces", "allocated_variant", "uniform_baseline", "DEFAULT_METHODS"]

#: The methods a search explores unless told otherwise, by their short names, in chain order.
DEFAULT_METHODS = ("prune", "tucker", "distill", "quant")
#: Modules of the package that define no space.
_NOT_SPACES = ("registry", "base", "errors")

_SPACES: dict[str, type] = {}
_LOADED: list[str] = []

T = TypeVar("T", bound=type)


def register_space(name: str) -> Callable[[T], T]:
    """Class decorator registering a :class:`spaces.base.Space` subclass under ``name``.

    Raises:
        SpaceError: ``name`` is already registered (two methods must not silently shadow).
    """

    def deco(cls: T) -> T:
        taken = [a for a in getattr(cls, "aliases", ()) for c in _SPACES.values() if a in getattr(c, "aliases", ())]
        if taken:
            raise SpaceError(f"space {name!r}: alias(es) {taken} already name another space")
        if name in _SPACES:
            raise SpaceError(f"space {name!r} is already registered (by {_SPACES[name].__qualname__})")
        cls.name = name  # type: ignore[attr-defined]
        _SPACES[name] = cls
        return cls

    return deco


def unregister_space(name: str) -> None:
    """Forget the space ``name`` (a test's temporary space); unknown names are ignored."""
    _SPACES.pop(name, None)


def load_spaces() -> list[str]:
    """Import every module of the ``spaces`` package once, so that its spaces register; returns the names.

    A module whose optional dependency is missing is skipped: the other methods still work.
    """
    if not _LOADED:
        _LOADED.append("spaces")
        import spaces

        for info in pkgutil.iter_modules(spaces.__path__):
            if not info.name.startswith("_") and info.name not in _NOT_SPACES:
                try:
                    importlib.import_module(f"spaces.{info.name}")
                except ImportError:
                    continue
    return sorted(_SPACES)


def resolve_space(name: str) -> str:
    """The registered space named ``name``, or whose ``aliases`` hold it (``prune`` -> ``prune.channel``).

    A unique ``<name>.`` prefix also resolves (``decompose`` -> ``decompose.tucker``).

    Raises:
        SpaceError: unknown or ambiguous name (the message lists the known names and aliases).
    """
    load_spaces()
    if name in _SPACES:
        return name
    owners = [n for n, cls in _SPACES.items() if name in getattr(cls, "aliases", ())]
    if len(owners) == 1:
        return owners[0]
    prefixed = [n for n in _SPACES if n.startswith(name + ".")]
    if len(prefixed) == 1 and not owners:
        return prefixed[0]
    aliases = sorted(a for cls in _SPACES.values() for a in getattr(cls, "aliases", ()))
    why = f"ambiguous method {name!r} (it names {', '.join(owners or prefixed)})" if owners or prefixed else \
        f"unknown method {name!r}"
    raise SpaceError(f"{why}; known: {', '.join(aliases + list_spaces())}")


def list_spaces() -> list[str]:
    """Names of all registered spaces, sorted."""
    return load_spaces()


def space_class(name: str) -> type:
    """The class registered as ``name`` (SpaceError listing the known names when absent)."""
    load_spaces()
    try:
        return _SPACES[name]
    except KeyError:
        raise SpaceError(f"unknown space {name!r}; known: {', '.join(list_spaces())}") from None


def get_space(name: str, **options: Any) -> Any:
    """An instance of the space registered as ``name``, built with keyword ``options``.

    Raises:
        SpaceError: unknown name (the message lists the known ones) or bad options.
    """
    cls = space_class(name)
    try:
        return cls(**options)
    except TypeError as exc:
        raise SpaceError(f"space {name!r}: bad options {options!r}: {exc}") from exc


def allocated_variant(name: str) -> str | None:
    """The registered space that allocates space ``name``'s per-layer choices by a layer cost (its class
    attribute ``allocates`` is that space's class), or None."""
    cls = space_class(name)
    return next((n for n, c in sorted(_SPACES.items()) if getattr(c, "allocates", None) is cls), None)


def uniform_baseline(names: Sequence[str]) -> tuple[str, Any] | None:
    """The uniform configuration a search over the spaces ``names`` is compared with: ``(space name,
    preset)`` of the first space, in the order given, whose class - or, for an allocated variant, the class
    it allocates - has a preset marked ``uniform`` (uniform L1 channel pruning before uniform Tucker-2 when
    both are searched, in chain order); None when no searched space has one (int8 alone, distillation alone)."""
    for name in names:
        cls = space_class(resolve_space(name))
        owner = getattr(cls, "allocates", None) or cls
        preset = next((p for p in getattr(owner, "presets", ()) if getattr(p, "uniform", False)), None)
        if preset is not None:
            owner_name = next(n for n, c in _SPACES.items() if c is owner)
            return owner_name, preset
    return None
