"""The methods a study compares: every registered space's presets, and the study's own baselines.

A study method is either a space's named starting configuration (:class:`spaces.base.Preset`: ``l1`` is
channel pruning by L1 norm at 5% per group, projected onto each cell's rate, then fine-tuned) or one of
the study's baselines (:data:`BASELINES`): a *searched cell* - the compression search at the cell's rate
over the spaces of some presets - or the network trained from scratch by KD from a larger teacher.

The table is read from the registry whenever it is asked for (:func:`study_methods`), so a space
registered later - a test's - is a method at once, and nothing here names a space: what a method does
comes from its space's capabilities (``rate_cost``, ``distill``, ``pretransform_share``...) and preset.
Methods are listed family by family (:data:`FAMILIES`): within one, the published presets, then the
variants, each by space name, then the family's baselines.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

__all__ = ["Method", "BASELINES", "FAMILIES", "COMPARED", "study_methods", "default_methods", "space_option_default",
           "space_options"]

#: The research taxonomy (weight / local / global compression), the pruning comparison's criteria, the search.
FAMILIES = ("weight", "local", "global", "pruning", "search")
#: The families each comparison compares by default: their published methods and searched cells.
COMPARED = {"families": ("weight", "local", "global"), "pruning": ("weight", "pruning")}


@dataclass(frozen=True)
class Method:
    """A compression method as the study runs it.

    ``kind``: how a cell is run (``plan``: a space's preset projected onto the rate and fine-tuned by
    :func:`spaces.finetune.finetune_plan`; ``search``: the compression search at the rate; ``teacher``: the
    network trained from scratch by KD from the larger ``--teacher``). ``space``/``preset``: a plan method's.
    ``fixed_rate``: the method decides its own rate (EVBMF ranks, a teacher); ``kd_default``: it distils when
    no ``--kd`` variant is asked for (global compression); ``rate_cost``: what its compression rate is
    measured on. A searched cell searches the spaces of the presets ``over`` (``search_methods``: their
    ``search.run --methods`` names) with ``sampler``, its per-layer cuts allocated by ``allocate`` and
    priced by ``allocate_damage`` (``search.run --allocate``, ``--allocate-damage``).
    """

    name: str
    family: str
    kind: str
    what: str
    space: str | None = None
    preset: Any = None
    fixed_rate: bool = False
    kd_default: bool = False
    rate_cost: str = "params"
    variant: bool = False
    over: tuple[str, ...] = ()
    search_methods: tuple[str, ...] = ()
    sampler: str = "nsga2"
    allocate: str | None = None
    allocate_damage: str = "importance"


_BOTH = ("l1", "tucker-vbmf")  # channel pruning and Tucker-2: the search's space
#: The study's own methods, beside the spaces' presets.
BASELINES = (
    Method("tucker-searched", "local", "search", "Tucker-2 with per-layer ranks searched at the rate",
           over=("tucker-vbmf",)),
    Method("distill-teacher", "global", "teacher", "KD from the larger --teacher into the network, from scratch",
           fixed_rate=True, kd_default=True),
    Method("searched", "pruning", "search", "per-layer pruning ratios searched at the rate (AMC-style)", over=("l1",)),
    Method("search-nsga2", "search", "search", "the compression search (NSGA-II) over channel pruning and Tucker-2 "
           "at the rate", over=_BOTH),
    Method("search-random", "search", "search", "random search over the same space, same trials and final stage",
           over=_BOTH, sampler="random"),
    Method("search-alloc", "search", "search", "the compression search (NSGA-II) over channel pruning and Tucker-2 "
           "allocated by params, pruning cuts priced by their measured loss rise (--allocate params "
           "--allocate-damage sensitivity)", over=_BOTH, allocate="params", allocate_damage="sensitivity"),
    Method("search-alloc-random", "search", "search", "random search over search-alloc's allocated space, same "
           "trials and final stage", over=_BOTH, sampler="random", allocate="params", allocate_damage="sensitivity"),
)


def study_methods() -> dict[str, Method]:
    """Every study method by name, in the order the study lists them (module docstring).

    Raises:
        ConfigError: two presets, or a preset and a baseline, share a name.
    """
    from rsc.errors import ConfigError
    from spaces.registry import list_spaces, space_class

    planned: list[tuple[tuple, Method]] = []
    owner: dict[str, str] = {}
    for name in list_spaces():
        cls = space_class(name)
        for i, p in enumerate(cls.presets):
            if p.name in owner:
                raise ConfigError(f"method {p.name!r} is a preset of {owner[p.name]} and of {name}")
            owner[p.name] = name
            planned.append(((p.variant, name, i), Method(
                p.name, p.family, "plan", p.what, space=name, preset=p, fixed_rate=p.fixed_rate,
                kd_default=bool(cls.distill), rate_cost=cls.rate_cost, variant=p.variant)))
    families = list(FAMILIES) + sorted({m.family for _, m in planned} - set(FAMILIES))
    table: dict[str, Method] = {}
    for family in families:
        for _, m in sorted((x for x in planned if x[1].family == family), key=lambda x: x[0]):
            table[m.name] = m
        for m in BASELINES:
            if m.family != family:
                continue
            if m.name in table:
                raise ConfigError(f"method {m.name!r} is a preset of {owner[m.name]} and a study baseline")
            table[m.name] = replace(m, search_methods=tuple(_short_name(owner, p) for p in m.over))
    return table


def _short_name(owner: dict[str, str], preset: str) -> str:
    """``search.run --methods``'s name of the space owning ``preset``: its first alias, else its name."""
    from rsc.errors import ConfigError
    from spaces.registry import space_class

    if preset not in owner:
        raise ConfigError(f"a searched cell searches the space of preset {preset!r}, which no space offers")
    cls = space_class(owner[preset])
    return (cls.aliases or (owner[preset],))[0]


def default_methods(experiment: str) -> tuple[str, ...]:
    """The methods a comparison (``families``, ``pruning``) runs unless told otherwise (:data:`COMPARED`)."""
    return tuple(m.name for m in study_methods().values() if m.family in COMPARED[experiment] and not m.variant)


def space_option_default(option: str) -> Any:
    """The default of constructor option ``option`` of the methods' spaces that take it (None: none does)."""
    import inspect

    from spaces.registry import space_class

    for m in study_methods().values():
        if m.space is not None:
            param = inspect.signature(space_class(m.space)).parameters.get(option)
            if param is not None and param.default is not inspect.Parameter.empty:
                return param.default
    return None


def space_options(method: Method, given: dict[str, Any]) -> dict[str, Any]:
    """A plan method's space options: its preset's, and each of ``given`` (option -> value, None: left
    to the space) that the space's constructor takes."""
    import inspect

    from spaces.registry import space_class

    takes = inspect.signature(space_class(method.space)).parameters
    return {**method.preset.options, **{k: v for k, v in given.items() if v is not None and k in takes}}
