"""A sweep's Optuna study: where it is stored, how it is created once and shared, and the trials it hands out.

One study per sweep directory. Its storage is DIR/optuna.db (SQLite) for one driver on one machine, or a
server database (`--storage=postgresql://...`, any SQLAlchemy URL) that any number of workers share. SQLite
and journal files have one writer here: Optuna's FAQ never recommends SQLite for parallel optimisation,
queued trials can run twice on it (no `SELECT ... FOR UPDATE`, optuna#4002), processes starting together
meet "database is locked" (#820, #4994) and it corrupts on NFS (#815). A second driver on a SQLite study is
refused by a file lock beside the database.

Every trial of the study has the user attribute `isojax_name`, its folder in DIR. The axes' trials are
enqueued once, by the worker that creates the study, with `isojax_fixed`. Trials that must not count are
marked `isojax_skipped` (an enqueued or retried trial whose values a lower-numbered trial has, or a search
trial past `n_trials` when workers asked together, or a search trial given an unfinished trial's values) and
told FAIL; a search trial that the sampler gave a finished trial's values takes that trial's outcome
(`isojax_same_as`) instead of running again; trials
superseded by a retry are named in their retry's `retry_history` (Optuna's RetryHeartbeatStaleTrialCallback).
A worker killed mid-trial stops sending heartbeats; after the grace period any other worker fails its trial
and enqueues the retry, which resumes from the same folder's checkpoints.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import time
import warnings
from collections.abc import Iterator
from typing import Any, Optional

import optuna
import sqlalchemy.engine
import sqlalchemy.exc
from optuna.trial import FrozenTrial, TrialState

from isojax.core import workdir as workdir_lib
from isojax.sweeps import spec

DATABASE = 'optuna.db'  # DIR/optuna.db: the default, embedded storage
STUDY = 'study.json'  # DIR/study.json: {"storage": URL (password hidden), "study_name": NAME}
FIXED, NAME, ERROR = 'isojax_fixed', 'isojax_name', 'isojax_error'
SKIPPED = 'isojax_skipped'  # not the sweep's: an enqueued trial twice, or a search trial past n_trials
SAME_AS = 'isojax_same_as'  # a search trial the sampler gave another trial's values: counted, not run
ENQUEUED = 'isojax_enqueued'  # a study user attribute: the creator has enqueued the axes' trials
SWEEP = 'isojax_sweep'  # a study user attribute: what the sweep is (config, fixed fields, search, metric)
HEARTBEAT_SEC, GRACE_SEC = 20, 60
ASK_AGAIN_SEC = 0.5  # before asking again when the sampler drew a running trial's values (a small space)
TABLE_ATTEMPTS = 5  # opening a fresh server database while other workers create its tables
LIVE = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)

optuna.logging.set_verbosity(optuna.logging.WARNING)


class StorageError(ValueError):
  """A storage that cannot hold this sweep (several writers on SQLite, a journal file, a bad URL)."""


def storage_url(sweep_dir: str, storage: Optional[str]) -> str:
  """The SQLAlchemy URL of the sweep's study: DIR/optuna.db unless `storage` names another database."""
  if not storage:
    return f'sqlite:///{os.path.abspath(os.path.join(sweep_dir, DATABASE))}'
  if storage.startswith('journal') or storage.endswith(('.log', '.jsonl')):
    raise StorageError(
      f'--storage={storage!r} is a journal file: isojax runs one driver per journal-less SQLite study and '
      'several workers only on a server database; use --storage=postgresql://USER@HOST/DB (or none for DIR/optuna.db).'
    )
  try:
    sqlalchemy.engine.make_url(storage)
  except sqlalchemy.exc.ArgumentError as e:
    raise StorageError(
      f'--storage={storage!r} is not an SQLAlchemy URL ({e}); e.g. postgresql://USER@HOST/DB.'
    ) from None
  return storage


def is_embedded(url: str) -> bool:
  """SQLite: one writer, so one driver at a time."""
  return sqlalchemy.engine.make_url(url).get_backend_name() == 'sqlite'


@contextlib.contextmanager
def single_driver(url: str) -> Iterator[None]:
  """Holds an OS lock beside a SQLite database for this driver's lifetime: a second driver is refused."""
  if not is_embedded(url):
    yield
    return
  database = sqlalchemy.engine.make_url(url).database or ''
  os.makedirs(os.path.dirname(os.path.abspath(database)), exist_ok=True)
  with open(database + '.lock', 'a') as handle:
    try:
      fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise StorageError(
        f'Another isojax.sweep driver is using {database}: a SQLite study has one writer (Optuna never recommends '
        'SQLite for parallel optimisation; queued trials can run twice on it, optuna#4002). Give it more trials at '
        'a time with --parallel=N, or share a server database between workers: --storage=postgresql://USER@HOST/DB.'
      ) from None
    try:
      yield
    finally:
      fcntl.flock(handle, fcntl.LOCK_UN)


def open_storage(
  url: str, heartbeat_sec: int = HEARTBEAT_SEC, grace_sec: int = GRACE_SEC
) -> optuna.storages.RDBStorage:
  """The RDB storage with heartbeats: a trial whose worker stopped beating for `grace_sec` is retried.

  Workers that start together on an empty database race to create Optuna's tables, and the losers' CREATE
  fails (PostgreSQL: a duplicate `studydirection` type); they try again, and then find the tables made."""
  engine_kwargs = {'connect_args': {'timeout': 60}} if is_embedded(url) else {'pool_pre_ping': True}
  for attempt in range(TABLE_ATTEMPTS):
    try:
      with warnings.catch_warnings():
        warnings.simplefilter('ignore', optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(
          url,
          engine_kwargs=engine_kwargs,
          heartbeat_interval=heartbeat_sec,
          grace_period=grace_sec,
          heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(),
        )
    except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError, sqlalchemy.exc.OperationalError):
      if attempt == TABLE_ATTEMPTS - 1:
        raise
      time.sleep(0.2 + random.random())
  raise AssertionError('unreachable')


def sampler(sweep: spec.Sweep, offset: int = 0) -> optuna.samplers.BaseSampler:
  """Optuna's sampler of the sweep, seeded with `seed + offset`. `ask` seeds what samplers draw at `suggest`
  (TPE, random) by the trial's number and what they choose at `ask` (grid, CMA-ES) by the count of trials
  before it: one driver gets the same suggestions from the same seed, and workers do not draw with one seed
  as they would with one sampler each (TPE and random never; grid and CMA-ES only when they ask at once)."""
  seed = sweep.seed + offset
  if sweep.sampler == 'grid':
    return optuna.samplers.GridSampler({f: list(d.values) for f, d in sweep.search.items()}, seed=seed)
  if sweep.sampler == 'cmaes':
    return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
  if sweep.sampler == 'random':
    return optuna.samplers.RandomSampler(seed=seed)
  return optuna.samplers.TPESampler(seed=seed)


def pruner(sweep: spec.Sweep) -> optuna.pruners.BasePruner:
  """'median' (MedianPruner), 'asha' (SuccessiveHalvingPruner), 'hyperband' (HyperbandPruner), or as given."""
  if isinstance(sweep.pruner, optuna.pruners.BasePruner):
    return sweep.pruner
  if sweep.pruner == 'median':
    return optuna.pruners.MedianPruner()
  if sweep.pruner == 'asha':
    return optuna.pruners.SuccessiveHalvingPruner()
  if sweep.pruner == 'hyperband':
    return optuna.pruners.HyperbandPruner()
  return optuna.pruners.NopPruner()


def default_name(sweep_dir: str) -> str:
  return os.path.basename(os.path.abspath(sweep_dir))


def open_study(sweep: spec.Sweep, storage: optuna.storages.BaseStorage, name: str) -> optuna.Study:
  """Creates the study (and enqueues the axes' trials) or, when another worker did, loads it."""
  kwargs: dict[str, Any] = dict(study_name=name, storage=storage, sampler=sampler(sweep), pruner=pruner(sweep))
  try:
    study = optuna.create_study(direction=optuna.study.StudyDirection[sweep.direction.upper()], **kwargs)
    study.set_user_attr(SWEEP, identity(sweep))
    _enqueue(study, sweep, [])
    study.set_user_attr(ENQUEUED, True)
    return study
  except optuna.exceptions.DuplicatedStudyError:
    study = optuna.load_study(**kwargs)
  for _ in range(60):  # a worker that created it a moment ago is still describing it and enqueueing
    if study.user_attrs.get(ENQUEUED):
      break
    time.sleep(1)
  recorded = study.user_attrs.get(SWEEP)
  if recorded != identity(sweep) or study.direction.name.lower() != sweep.direction:
    raise StorageError(
      f'Study {name!r} in this storage belongs to another sweep ({recorded}, {study.direction.name.lower()}), not '
      f'this one ({identity(sweep)}, {sweep.direction}); give this sweep its own --study_name or --workdir.'
    )
  _enqueue(study, sweep, [t.user_attrs.get(NAME) for t in study.get_trials(deepcopy=False)])
  return study


def identity(sweep: spec.Sweep) -> str:
  """What makes a study this sweep's: its config, fixed fields, search spaces and metric (the axes and n_trials
  may grow: a rerun enqueues the new trials)."""
  search = {field: repr(space) for field, space in sweep.search.items()}
  return f'config={sweep.config} fixed={sweep.fixed} search={search} metric={sweep.metric}'


def _enqueue(study: optuna.Study, sweep: spec.Sweep, known: list) -> None:
  """Enqueues each axis trial the study does not hold yet (an edited sweep file adds its new trials)."""
  for values, trial in zip(sweep.axes, sweep.trials()):
    if trial.name not in known:
      study.enqueue_trial(dict(values), user_attrs={FIXED: True, NAME: trial.name})


def record(sweep_dir: str, url: str, name: str) -> None:
  """DIR/study.json, so that `--summarize=DIR` finds the study (a URL's password is not written)."""
  shown = sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
  workdir_lib.write_json(os.path.join(sweep_dir, STUDY), {'storage': shown, 'study_name': name})


def superseded(trials: list[FrozenTrial]) -> set[int]:
  """Numbers of the trials that a retry replaced."""
  return {n for t in trials for n in t.system_attrs.get('retry_history', [])}


def counted(trials: list[FrozenTrial]) -> list[FrozenTrial]:
  """The trials that are the sweep's: not skipped, not replaced by a retry."""
  replaced = superseded(trials)
  return [t for t in trials if t.number not in replaced and SKIPPED not in t.user_attrs]


def search_trials_left(sweep: spec.Sweep, trials: list[FrozenTrial]) -> int:
  return sweep.n_trials - sum(1 for t in counted(trials) if FIXED not in t.user_attrs)


def trial_name_of(sweep: spec.Sweep, trial: FrozenTrial) -> Optional[str]:
  """A trial's folder name, from its name attribute, its enqueued values or its parameters."""
  if NAME in trial.user_attrs:
    return trial.user_attrs[NAME]
  values = trial.params or trial.system_attrs.get('fixed_params')
  return sweep.trial(values).name if values else None


def frozen(study: optuna.Study, number: int) -> FrozenTrial:
  """The stored record of trial `number` (its system attributes: enqueued values, retry history)."""
  return next(t for t in study.get_trials(deepcopy=False) if t.number == number)


def suggest(sweep: spec.Sweep, trial: optuna.Trial) -> spec.Trial:
  """The trial's values: the search's fields from the sampler, the axes' from its enqueued values."""
  axis_choices = sweep.axis_choices()
  enqueued = frozen(trial.study, trial.number).system_attrs.get('fixed_params', {}) | trial.params
  values = {}
  for field in sweep.fields():
    if field in sweep.search:
      values[field] = _suggest_one(trial, field, sweep.search[field])
    elif field in enqueued:
      values[field] = trial.suggest_categorical(field, axis_choices[field])
  chosen = sweep.trial(values)
  trial.set_user_attr(NAME, chosen.name)
  return chosen


def _suggest_one(trial: optuna.Trial, field: str, space: spec.Distribution) -> Any:
  if space.kind == 'choice':
    return trial.suggest_categorical(field, list(space.values))
  if space.kind == 'int':
    return trial.suggest_int(field, int(space.low), int(space.high), log=space.log)
  return trial.suggest_float(field, space.low, space.high, log=space.log)


def same_values(sweep: spec.Sweep, trials: list[FrozenTrial], trial: optuna.Trial, name: str) -> Optional[FrozenTrial]:
  """The lower-numbered trial of the sweep with this trial's values, if any (lower numbers win, so two workers
  asking together agree on which one runs)."""
  for other in counted(trials):
    if other.number < trial.number and other.state in LIVE and trial_name_of(sweep, other) == name:
      return other
  return None


def _settle_duplicate(study: optuna.Study, trial: optuna.Trial, other: FrozenTrial, is_search: bool) -> None:
  """A search trial with a finished trial's values takes its outcome and counts (the sampler learns it); one
  with an unfinished trial's values, and an enqueued or retried copy, are skipped."""
  if not is_search:
    trial.set_user_attr(SKIPPED, f'duplicate of trial {other.number}')
    study.tell(trial, state=TrialState.FAIL)
    return
  if not other.state.is_finished():  # running or queued: no outcome to take yet; the sampler is asked again
    trial.set_user_attr(SKIPPED, f'values of unfinished trial {other.number}')
    study.tell(trial, state=TrialState.FAIL)
    time.sleep(ASK_AGAIN_SEC)
    return
  trial.set_user_attr(SAME_AS, other.number)
  if other.state == TrialState.COMPLETE:
    study.tell(trial, other.value)
  else:
    study.tell(trial, state=TrialState.PRUNED if other.state == TrialState.PRUNED else TrialState.FAIL)


def ask(sweep: spec.Sweep, study: optuna.Study) -> Optional[tuple[optuna.Trial, spec.Trial]]:
  """The next trial to run (a queued one first, then the sampler's), or None when the sweep has no more."""
  while True:
    trials = study.get_trials(deepcopy=False)
    if not any(t.state == TrialState.WAITING for t in trials) and search_trials_left(sweep, trials) <= 0:
      return None
    study.sampler = sampler(sweep, offset=len(trials))  # what grid and CMA-ES choose at `ask` (the number is not
    # known yet): two workers asking together can still meet there; `same_values` below catches it
    with warnings.catch_warnings():
      warnings.simplefilter('ignore')  # "Heartbeat of storage is supposed to be used with Study.optimize"
      trial = study.ask()
    # Independent samplers draw at `suggest`: seeded by the trial's own number, two workers that asked together
    # (and so saw the same count) draw different values. One driver's number is that count: the same draws.
    study.sampler = sampler(sweep, offset=trial.number)
    chosen = suggest(sweep, trial)
    trials = study.get_trials(deepcopy=False)
    is_search = FIXED not in trial.user_attrs and 'failed_trial' not in frozen(study, trial.number).system_attrs
    other = same_values(sweep, trials, trial, chosen.name)
    if other is not None:
      _settle_duplicate(study, trial, other, is_search)
    elif is_search and search_trials_left(sweep, [t for t in trials if t.number < trial.number]) <= 0:
      trial.set_user_attr(SKIPPED, f'past n_trials={sweep.n_trials}: workers asked together')
      study.tell(trial, state=TrialState.FAIL)
    else:
      return trial, chosen


def retry(study: optuna.Study, trial: FrozenTrial) -> None:
  """Enqueues a copy of `trial` (same values, so the same folder) that supersedes it."""
  with warnings.catch_warnings():
    warnings.simplefilter('ignore', optuna.exceptions.ExperimentalWarning)
    optuna.storages.RetryHeartbeatStaleTrialCallback()(study, trial)


def recover(study: optuna.Study, embedded: bool) -> int:
  """At a driver's start: retries the failed trials and, on SQLite (where this is the only driver), the ones
  left running by a driver that died. On a server, a dead worker's trials are retried by heartbeat."""
  retried = 0
  for trial in counted(study.get_trials(deepcopy=False)):
    if SAME_AS in trial.user_attrs:
      continue
    if trial.state == TrialState.RUNNING and embedded:
      study.tell(trial.number, state=TrialState.FAIL)
    elif trial.state != TrialState.FAIL:
      continue
    retry(study, trial)
    retried += 1
  return retried


def fail_stale(study: optuna.Study) -> None:
  """Fails (and so retries) the trials of workers whose heartbeats stopped."""
  with warnings.catch_warnings():
    warnings.simplefilter('ignore', optuna.exceptions.ExperimentalWarning)
    optuna.storages.fail_stale_trials(study)
