"""Name -> space class. Adding a compression method = one module + ``@register_space(name)``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from spaces.errors import SpaceError

_SPACES: dict[str, type] = {}

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


def resolve_space(name: str) -> str:
    """The registered space named ``name``, or whose ``aliases`` hold it (``prune`` -> ``prune.channel``).

    A unique ``<name>.`` prefix also resolves (``decompose`` -> ``decompose.tucker``).

    Raises:
        SpaceError: unknown or ambiguous name (the message lists the known names and aliases).
    """
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
    return sorted(_SPACES)


def space_class(name: str) -> type:
    """The class registered as ``name`` (SpaceError listing the known names when absent)."""
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
