"""Optuna as the search engine: samplers, RDB storage, ask-and-tell, behind :class:`search.engines.base.Engine`.

Ask-and-tell rather than ``study.optimize`` keeps the trial function a plain JSON-in/JSON-out
call (the objective never sees an Optuna object), which is what running it in another process
or on a Ray worker needs, and lets the driver do MLflow bookkeeping between ask and tell.

Optuna's objects stay in this module: the search tells by trial number and reads
:class:`search.engines.base.TrialRecord` s, built here from Optuna's ``FrozenTrial`` s (a record's
attributes are the trial's user attributes, under the same names). Only the asked trial leaves it, to be
suggested on (see :mod:`search.engines.base`).

State lives in an RDB storage (a sqlite file by default), so a killed search resumes: finished
trials stay, trials left RUNNING by the dead process are marked FAIL with ``interrupted=True``
and do not count towards ``--trials``.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from rsc.errors import UserError
from search.engines.base import RECORD_ATTRS, TrialRecord
from tracking.mlflow_log import open_store

__all__ = ["StorageError", "StudyExists", "make_sampler", "OptunaEngine", "INTERRUPTED", "LOST"]

INTERRUPTED = "interrupted"
# a new sqlite file whose tables another driver is creating; "database is locked" is not here:
# the sqlite timeout (``timeout``) already waits for a lock, as long as the user asked
_TABLE_RACE = ("already exists", "unique constraint failed: alembic_version")
LOST = "lost"


class StorageError(UserError):
    """The Optuna storage cannot be opened: locked by another process, corrupt, or unwritable."""


class StudyExists(UserError):
    """A study of that name already holds trials and ``--resume`` was not given."""


def make_sampler(name: str, *, seed: int, population_size: int = 8, startup_trials: int = 8) -> Any:
    """The Optuna sampler for ``name`` (nsga2, tpe, gp, random), seeded."""
    import optuna

    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=population_size, seed=seed)
    if name == "tpe":
        # quiet about parameters sampled independently (conditional ones are); from 4.9 that is
        # the default and passing the flag raises a FutureWarning
        major, minor = (int(x) for x in optuna.__version__.split(".")[:2])
        quiet = {} if (major, minor) >= (4, 9) else {"warn_independent_sampling": False}
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials, multivariate=True, **quiet)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup_trials, warn_independent_sampling=False)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise UserError(f"unknown sampler {name!r}; choose one of nsga2, tpe, gp, random")


def _storage_error(url: str, exc: BaseException) -> StorageError:
    text = str(exc).lower()
    if "locked" in text:
        why = "it is locked by another process (is another search using it?)"
    elif "not a database" in text or "malformed" in text or "corrupt" in text:
        why = "the file is corrupt (not an SQLite database); move it away or pass a new --study"
    elif "unable to open" in text or "readonly" in text or "read-only" in text:
        why = "it cannot be opened for writing"
    else:
        why = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return StorageError(f"cannot use Optuna storage {url}: {why}")


class OptunaEngine:
    """One multi-objective Optuna study, driven by ask-and-tell.

    Args:
        storage: RDB URL (``sqlite:///path/optuna.db``).
        study_name: the study's name in that storage.
        directions: one per objective (``"maximize"``/``"minimize"``).
        sampler: ``nsga2``, ``tpe``, ``gp`` or ``random``.
        seed: sampler seed (shifted by the number of existing trials on resume, so a resumed random
            sampler does not replay its first proposals).
        resume: continue an existing study; without it an existing non-empty study is an error.
        timeout: seconds to wait for a locked sqlite file.
    """

    def __init__(self, *, storage: str, study_name: str, directions: Sequence[str], sampler: str, seed: int,
                 resume: bool = False, population_size: int = 8, startup_trials: int = 8, timeout: float = 10.0) -> None:
        import optuna
        import sqlalchemy.exc

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.storage_url = storage
        self.study_name = study_name
        try:
            engine_kwargs = {"connect_args": {"timeout": timeout}} if storage.startswith("sqlite") else {}

            def open_storage() -> tuple[Any, list[str]]:
                rdb = optuna.storages.RDBStorage(storage, engine_kwargs=engine_kwargs)
                return rdb, [s.study_name for s in rdb.get_all_studies()]

            # several drivers on one new sqlite file race on creating its tables (create_all and
            # the alembic version row are not serialised across processes): one at a time
            self.storage, existing = open_store(storage, open_storage, patterns=_TABLE_RACE)
        except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as exc:
            raise _storage_error(storage, exc) from None
        except Exception as exc:  # noqa: BLE001 - alembic/sqlite errors of a damaged file come in many types
            raise _storage_error(storage, exc) from None
        try:
            if study_name in existing:
                study = optuna.load_study(study_name=study_name, storage=self.storage)
                if study.trials and not resume:
                    raise StudyExists(f"study {study_name!r} already has {len(study.trials)} trial(s) in {storage}; "
                                      "pass --resume to continue it or --study NAME for a new one")
                if list(d.name.lower() for d in study.directions) != [d.lower() for d in directions]:
                    raise StudyExists(f"study {study_name!r} in {storage} optimises "
                                      f"{[d.name.lower() for d in study.directions]}, not {list(directions)}")
            n_existing = len(optuna.load_study(study_name=study_name, storage=self.storage).trials) if study_name in existing else 0
            self.study = optuna.create_study(
                storage=self.storage, study_name=study_name, directions=list(directions), load_if_exists=True,
                sampler=make_sampler(sampler, seed=seed + n_existing, population_size=population_size,
                                     startup_trials=startup_trials))
        except UserError:
            raise
        except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as exc:
            raise _storage_error(storage, exc) from None
        self.directions = list(directions)
        self._open: dict[int, Any] = {}  # asked and not told yet, by number

    # -- state -------------------------------------------------------------------------------

    def recover(self) -> list[int]:
        """Mark trials left RUNNING by a dead process as FAIL (``interrupted``); returns their numbers."""
        from optuna.trial import TrialState

        stale = []
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
            self.storage.set_trial_user_attr(t._trial_id, INTERRUPTED, True)
            self.storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            stale.append(t.number)
        return stale

    def trials(self) -> list[TrialRecord]:
        """Every trial of the study, in any state, as records."""
        return [_record(t) for t in self.study.get_trials(deepcopy=False)]

    def finished(self) -> list[TrialRecord]:
        """Trials that count towards the budget: complete, pruned, or failed by the trial itself (not
        interrupted, not lost with its worker)."""
        return [t for t in self.trials() if t.state in ("complete", "pruned")
                or (t.state == "fail" and not t.interrupted and not t.lost)]

    def complete(self) -> list[TrialRecord]:
        from optuna.trial import TrialState

        return [_record(t) for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]

    def set_attr(self, key: str, value: Any) -> None:
        self.study.set_user_attr(key, value)

    def get_attr(self, key: str, default: Any = None) -> Any:
        return self.study.user_attrs.get(key, default)

    # -- ask and tell --------------------------------------------------------------------------

    def trial_count(self) -> int:
        """Trials the study holds in any state (the next trial's number when none is waiting)."""
        return len(self.study.get_trials(deepcopy=False))

    def ask(self, fixed: Mapping[str, Any] | None = None) -> Any:
        """A new Optuna trial to suggest on; ``fixed`` parameters are set (enqueued) and the sampler picks the rest."""
        if fixed:
            self.study.enqueue_trial(dict(fixed), skip_if_exists=False)
        trial = self.study.ask()
        self._open[trial.number] = trial
        return trial

    def annotate(self, number: int, attrs: Mapping[str, Any]) -> None:
        """Store ``attrs`` (record fields) with the running trial ``number``."""
        trial = self._running(number)
        for key, value in attrs.items():
            if key not in RECORD_ATTRS:
                raise ValueError(f"{key!r} is no trial record attribute; known: {', '.join(sorted(RECORD_ATTRS))}")
            trial.set_user_attr(key, value)

    def tell_complete(self, number: int, values: Sequence[float], constraints: Sequence[float] = (), *,
                      attrs: Mapping[str, Any] | None = None) -> None:
        self.annotate(number, attrs or {})
        trial = self._open.pop(number)
        for i, c in enumerate(constraints):
            trial.set_constraint(f"c{i}", float(c) if math.isfinite(c) else 1e9)
        self.study.tell(trial, list(values))

    def tell_pruned(self, number: int, *, attrs: Mapping[str, Any] | None = None) -> None:
        from optuna.trial import TrialState

        self.annotate(number, attrs or {})
        self.study.tell(self._open.pop(number), state=TrialState.PRUNED)

    def tell_failed(self, number: int, *, interrupted: bool = False, lost: str | None = None,
                    attrs: Mapping[str, Any] | None = None) -> None:
        """A failed trial; ``interrupted`` (Ctrl-C) and ``lost`` (its worker died: the reason) ones do
        not count towards the budget."""
        from optuna.trial import TrialState

        self.annotate(number, {**(attrs or {}), **({INTERRUPTED: True} if interrupted else {}),
                               **({LOST: lost[:2000]} if lost else {})})
        self.study.tell(self._open.pop(number), state=TrialState.FAIL)

    def _running(self, number: int) -> Any:
        try:
            return self._open[number]
        except KeyError:
            raise KeyError(f"trial {number} was not asked by this engine or is already told") from None


def _record(t: Any) -> TrialRecord:
    """An Optuna ``FrozenTrial`` as the project's record: its user attributes become the record's fields."""
    kw = {k: v for k, v in t.user_attrs.items() if k in RECORD_ATTRS and v is not None}
    if "val_history" in kw:
        kw["val_history"] = tuple(kw["val_history"])
    return TrialRecord(number=t.number, state=t.state.name.lower(),
                       values=tuple(t.values) if t.values is not None else None, params=dict(t.params), **kw)
