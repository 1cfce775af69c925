"""The sweep driver: asks the study for trials, runs each as its own `isojax.main` process in SWEEP_DIR/<trial>/
(a few at a time, each pinned to its share of the GPUs or TPU chips), reports its evaluations to the pruner and
tells the study how it ended.

Resumable: a finished trial is never run again; an interrupted one resumes from its checkpoints in its folder.
A trial the pruner rejects gets SIGTERM: it checkpoints, exits 75 and is recorded as pruned. A failing trial is
reported with its error and the others go on. On SIGTERM or SIGINT the driver stops its trials the same way,
re-queues them and exits 75; the same command resumes them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import IO, Any, Optional

import optuna
from optuna.trial import TrialState

from isojax.core import workdir as workdir_lib
from isojax.sweeps import results, spec
from isojax.sweeps import study as study_lib
from isojax.training import preemption

TRAINER = ('-m', 'isojax.main')  # after the Python executable


class Interrupted(Exception):
  """The driver received SIGTERM or SIGINT: its trials are stopped, checkpointed and queued again."""


def _flag_value(value) -> str:
  return repr(value) if isinstance(value, float) else str(value)


def command(
  trial: spec.Trial, trial_dir: str, python: str = sys.executable, trainer: Sequence[str] = TRAINER
) -> list[str]:
  """The `isojax.main` command line of one trial."""
  return [
    python,
    *trainer,
    f'--config={trial.config}',
    f'--workdir={trial_dir}',
    *(f'--config.{field}={_flag_value(value)}' for field, value in trial.overrides.items()),
  ]


def _visible_gpus() -> list[str]:
  visible = os.environ.get('CUDA_VISIBLE_DEVICES')
  if visible:
    return [g for g in visible.split(',') if g]
  try:
    listing = subprocess.run(['nvidia-smi', '-L'], capture_output=True, text=True, timeout=20).stdout
  except (OSError, subprocess.TimeoutExpired):
    return []
  return [str(i) for i, line in enumerate(listing.splitlines()) if line.startswith('GPU')]


def _tpu_chips() -> list[str]:
  visible = os.environ.get('TPU_VISIBLE_CHIPS')
  if visible:
    return [c for c in visible.split(',') if c]
  return [str(i) for i in range(len(glob.glob('/dev/accel[0-9]*') or glob.glob('/dev/vfio/[0-9]*')))]


def accelerator_env(parallel: int) -> list[dict[str, str]]:
  """The environment of each of `parallel` slots: its own GPUs (CUDA_VISIBLE_DEVICES) or TPU chips (the TPU
  runtime's visibility and bounds variables, and a mesh controller port of its own); {} where nothing splits."""
  if parallel == 1:
    return [{}]
  gpus, chips = _visible_gpus(), _tpu_chips()
  if len(gpus) >= parallel:
    per = len(gpus) // parallel
    return [{'CUDA_VISIBLE_DEVICES': ','.join(gpus[i * per : (i + 1) * per])} for i in range(parallel)]
  if len(chips) >= parallel:
    per = len(chips) // parallel
    slots = []
    for i in range(parallel):
      mine = ','.join(chips[i * per : (i + 1) * per])
      port = str(8476 + i)
      slots.append(
        {
          'TPU_VISIBLE_CHIPS': mine,
          'TPU_VISIBLE_DEVICES': mine,
          'TPU_CHIPS_PER_PROCESS_BOUNDS': f'1,{per},1',
          'TPU_PROCESS_BOUNDS': '1,1,1',
          'TPU_MESH_CONTROLLER_ADDRESS': f'localhost:{port}',
          'TPU_MESH_CONTROLLER_PORT': port,
        }
      )
    return slots
  return [{}] * parallel


# Runs a trial's command after asking Linux for SIGTERM when the driver dies (PR_SET_PDEATHSIG survives exec),
# so a killed driver's trial checkpoints and exits instead of running on as an orphan. A step of its own rather
# than Popen's preexec_fn: forking the JAX-threaded driver to run Python before exec can deadlock.
DIE_WITH_DRIVER = """import ctypes, os, signal, sys
try:
  ctypes.CDLL('libc.so.6').prctl(1, signal.SIGTERM)
except (OSError, AttributeError):
  pass
if os.getppid() != int(sys.argv[1]):
  sys.exit(75)
os.execv(sys.argv[2], sys.argv[2:])"""


@dataclasses.dataclass
class Running:
  """One trial's process and what the driver has told the study of it."""

  trial: optuna.Trial
  chosen: spec.Trial
  process: subprocess.Popen
  log: IO
  started: float
  reported_step: int = -1
  pruned_at: Optional[int] = None
  metrics_offset: int = 0  # bytes of the trial's metrics.jsonl already read
  ended_elsewhere: bool = False  # another worker took it for dead (missed heartbeats) and ended it: its retry
  # waits for this process to release the folder, then takes the result from it

  def new_metrics(self, trial_dir: str) -> list[dict]:
    """The metric lines written since the last call (whole lines only: a half-written one waits)."""
    try:
      with open(workdir_lib.metrics_path(trial_dir), 'rb') as f:
        if os.fstat(f.fileno()).st_size < self.metrics_offset:  # a resuming run dropped lines past its checkpoint
          self.metrics_offset = 0
        f.seek(self.metrics_offset)
        chunk = f.read()
    except FileNotFoundError:
      return []
    complete = chunk[: chunk.rfind(b'\n') + 1]
    self.metrics_offset += len(complete)
    records = []
    for line in complete.splitlines():
      with contextlib.suppress(json.JSONDecodeError):
        records.append(json.loads(line))
    return records


def objective(sweep: spec.Sweep, trial_dir: str) -> Optional[float]:
  """The trial's result: the best value of the sweep's metric over its evaluations, in the sweep's direction."""
  evaluator, key = sweep.metric.split('/')
  values = [m[key] for m in workdir_lib.eval_records(workdir_lib.read_metrics(trial_dir), evaluator) if key in m]
  finite = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
  if not finite:
    return None
  return max(finite) if sweep.direction == 'maximize' else min(finite)


def _write_launch(trial_dir: str, **fields: Any) -> None:
  path = os.path.join(trial_dir, workdir_lib.LAUNCH)
  launch = workdir_lib.read_json(path) if os.path.exists(path) else {}
  workdir_lib.write_json(path, {**launch, **fields})


@dataclasses.dataclass
class Driver:
  """One worker of a sweep: its study, its slots and the trials it is running."""

  sweep: spec.Sweep
  sweep_dir: str
  study: optuna.Study
  storage: optuna.storages.RDBStorage
  parallel: int = 1
  trainer: Sequence[str] = TRAINER
  say: Callable[[str], None] = print
  heartbeat_sec: float = study_lib.HEARTBEAT_SEC
  running: dict[int, Running] = dataclasses.field(default_factory=dict)
  stop_signal: Optional[str] = None  # set by SIGTERM/SIGINT: the loop stops its trials and ends
  counts: dict[str, int] = dataclasses.field(default_factory=lambda: {'complete': 0, 'pruned': 0, 'failed': 0})
  last_beat: float = 0.0

  def tell(self, trial: optuna.Trial, value: Optional[float] = None, state: Optional[TrialState] = None) -> bool:
    """Tells the study; False when another worker already ended the trial (it missed this worker's heartbeats
    and retried it: the retry waits for the folder, then takes this run's result from it)."""
    try:
      self.study.tell(trial, value, state=state)
    except (optuna.exceptions.UpdateFinishedTrialError, ValueError):  # Optuna 5: "Cannot tell a FAIL trial."
      if not study_lib.frozen(self.study, trial.number).state.is_finished():
        raise
      self.say(f'trial {trial.number} was ended by another worker (heartbeats missed); its retry takes the result')
      return False
    return True

  def trial_dir(self, chosen: spec.Trial) -> str:
    return os.path.join(self.sweep_dir, chosen.name)

  def start(self, slot: int, env: dict[str, str]) -> bool:
    """Asks the study for a trial and starts it in `slot`; False when the sweep has no more to give."""
    asked = study_lib.ask(self.sweep, self.study)
    if asked is None:
      return False
    trial, chosen = asked
    trial_dir = self.trial_dir(chosen)
    while (
      workdir_lib.is_locked(trial_dir) and not self.stop_signal
    ):  # a killed driver's orphan finishing its checkpoint
      self.beat(force=True, extra=[trial])
      time.sleep(1)
    if self.settle_from_folder(trial, chosen):
      return True
    os.makedirs(trial_dir, exist_ok=True)
    cmd = command(chosen, trial_dir, trainer=self.trainer)
    worker = f'{socket.gethostname()}:{os.getpid()}'
    _write_launch(trial_dir, command=cmd, returncode=None, trial_number=trial.number, state='running', worker=worker)
    log = open(os.path.join(trial_dir, workdir_lib.LOG), 'a')
    guarded = [sys.executable, '-c', DIE_WITH_DRIVER, str(os.getpid()), *cmd]
    process = subprocess.Popen(guarded, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env})
    self.running[slot] = Running(trial, chosen, process, log, time.time())
    self.say(f'[{self.progress()}] start {chosen.name} (trial {trial.number})')
    return True

  def settle_from_folder(self, trial: optuna.Trial, chosen: spec.Trial) -> bool:
    """A trial whose folder already finished (its driver died before telling) or was pruned: told, not run."""
    trial_dir = self.trial_dir(chosen)
    launch_path = os.path.join(trial_dir, workdir_lib.LAUNCH)
    launch = workdir_lib.read_json(launch_path) if os.path.exists(launch_path) else {}
    if launch.get('state') in ('pruned', 'pruning'):  # 'pruning': its driver died after the SIGTERM
      self.tell(trial, state=TrialState.PRUNED)
      self.counts['pruned'] += 1
      return True
    if results.trial_status(trial_dir)[0] != 'done':
      return False
    value = objective(self.sweep, trial_dir)
    self.tell(trial, value) if value is not None else self.tell(trial, state=TrialState.FAIL)
    _write_launch(trial_dir, trial_number=trial.number, state='complete' if value is not None else 'failed')
    self.counts['complete' if value is not None else 'failed'] += 1
    self.say(f'[{self.progress()}] done {chosen.name} (trial {trial.number}): finished before, not run again')
    return True

  def progress(self) -> str:
    """'finished or running / all' over the whole study (every worker's trials)."""
    trials = study_lib.counted(self.study.get_trials(deepcopy=False))
    started = sum(1 for t in trials if t.state != TrialState.WAITING)
    return f'{started}/{self.sweep.total_trials()}'

  def beat(self, force: bool = False, extra: Sequence[optuna.Trial] = ()) -> None:
    """Heartbeats of this worker's trials, so other workers do not take them for dead."""
    if not force and time.time() - self.last_beat < self.heartbeat_sec:
      return
    study_id = self.storage.get_study_id_from_name(self.study.study_name)
    for trial in [r.trial for r in self.running.values()] + list(extra):
      self.storage.record_heartbeat(self.storage.get_trial_id_from_study_id_trial_number(study_id, trial.number))
    self.last_beat = time.time()

  def report(self, run: Running, may_prune: bool = True) -> None:
    """Reports the trial's new evaluations of the metric; SIGTERM when the pruner rejects it."""
    if run.pruned_at is not None or run.ended_elsewhere:
      return
    evaluator, key = self.sweep.metric.split('/')
    for record in workdir_lib.eval_records(run.new_metrics(self.trial_dir(run.chosen)), evaluator):
      if record['step'] > run.reported_step and key in record and math.isfinite(record[key]):
        try:
          run.trial.report(record[key], int(record['step']))
        except optuna.exceptions.UpdateFinishedTrialError:
          run.ended_elsewhere = True
          self.say(f'trial {run.trial.number} was ended by another worker (heartbeats missed): it runs on here')
          return
        run.reported_step = int(record['step'])
    if may_prune and run.reported_step >= 0 and run.trial.should_prune():
      run.pruned_at = run.reported_step
      _write_launch(self.trial_dir(run.chosen), state='pruning', pruned_at=run.pruned_at)
      run.process.send_signal(signal.SIGTERM)
      self.say(f'[{self.progress()}] pruning {run.chosen.name} at step {run.pruned_at}')

  def finish(self, run: Running) -> None:
    """Tells the study how the trial's process ended."""
    run.log.close()
    trial_dir, code = self.trial_dir(run.chosen), run.process.returncode
    if code == 0:
      self.report(run, may_prune=False)  # the evaluations written since the last poll
    elapsed = f'{time.time() - run.started:.0f}s'
    if run.pruned_at is not None:
      self.tell(run.trial, state=TrialState.PRUNED)
      _write_launch(trial_dir, returncode=code, state='pruned', pruned_at=run.pruned_at)
      self.counts['pruned'] += 1
      self.say(f'[{self.progress()}] pruned {run.chosen.name} at step {run.pruned_at} after {elapsed}')
    elif code == preemption.EXIT_CODE:  # stopped by someone else's SIGTERM: queued again, resumes from its folder
      self.requeue(run)
      _write_launch(trial_dir, returncode=code, state='interrupted')
      self.say(f'[{self.progress()}] interrupted {run.chosen.name} after {elapsed}: queued again')
    elif code == 0 and (value := objective(self.sweep, trial_dir)) is not None:
      self.tell(run.trial, value)
      _write_launch(trial_dir, returncode=0, error=None, state='complete')
      self.counts['complete'] += 1
      self.say(f'[{self.progress()}] done {run.chosen.name} in {elapsed}: {self.sweep.metric} {value:.4g}')
    else:
      self.fail(run, code, elapsed)

  def requeue(self, run: Running) -> None:
    """Ends the trial as FAIL and queues its retry (same values, same folder: it resumes from its checkpoints)."""
    if not self.tell(run.trial, state=TrialState.FAIL):
      return
    frozen = next(t for t in self.study.get_trials(deepcopy=False) if t.number == run.trial.number)
    study_lib.retry(self.study, frozen)

  def fail(self, run: Running, code: int, elapsed: str) -> None:
    trial_dir = self.trial_dir(run.chosen)
    with open(os.path.join(trial_dir, workdir_lib.LOG)) as f:
      lines = [line for line in f.read().splitlines() if line.strip()]
    error = '\n'.join(lines[-15:]) if code else f'no {self.sweep.metric} in the evaluations of {trial_dir}'
    with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):  # ended by another worker
      run.trial.set_user_attr(study_lib.ERROR, results.error_line(error))
    self.tell(run.trial, state=TrialState.FAIL)
    _write_launch(trial_dir, returncode=code, error=error, state='failed')
    self.counts['failed'] += 1
    self.say(f'[{self.progress()}] FAILED {run.chosen.name} after {elapsed}: {results.error_line(error)}')

  def poll(self) -> None:
    self.beat()
    for slot, run in list(self.running.items()):
      if run.process.poll() is None:
        self.report(run)
      else:
        del self.running[slot]
        self.finish(run)

  def stop_all(self) -> None:
    """SIGTERM to every trial (each checkpoints and exits 75), then each queued again for the next driver."""
    for run in self.running.values():
      run.process.send_signal(signal.SIGTERM)
    for slot, run in list(self.running.items()):
      run.process.wait()
      del self.running[slot]
      if run.pruned_at is not None:  # already rejected: it stays pruned
        self.finish(run)
        continue
      run.log.close()
      self.requeue(run)
      _write_launch(self.trial_dir(run.chosen), returncode=run.process.returncode, state='interrupted')

  def others_running(self) -> bool:
    """Whether other workers hold running trials (they may die: their trials come back as retries)."""
    mine = {run.trial.number for run in self.running.values()}
    trials = study_lib.counted(self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
    return any(t.number not in mine for t in trials)

  def loop(self, slots: list[dict[str, str]], embedded: bool, poll_sec: float) -> None:
    """Keeps every slot busy until the study has no trial left (on a server: until no other worker's trial runs,
    so a dead worker's trial is retried here), or a stop signal came (then raises Interrupted)."""
    while not self.stop_signal:
      if not embedded:
        study_lib.fail_stale(self.study)
      exhausted = False
      for slot, env in enumerate(slots):
        while slot not in self.running and not exhausted and not self.stop_signal:
          exhausted = not self.start(slot, env)
      if exhausted and not self.running and (embedded or not self.others_running()):
        break
      time.sleep(poll_sec)
      self.poll()
    if self.stop_signal:
      self.stop_all()
      raise Interrupted(self.stop_signal)


@contextlib.contextmanager
def _stop_signals(driver: Driver) -> Any:
  """SIGTERM/SIGINT ask the driver to stop (it stops its trials, which checkpoint, and queues them again)."""

  def handle(signum, frame):
    driver.stop_signal = driver.stop_signal or signal.Signals(signum).name

  previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)}
  try:
    yield
  finally:
    for sig, handler in previous.items():
      signal.signal(sig, handler)


def run(
  sweep: spec.Sweep,
  sweep_dir: str,
  parallel: int = 1,
  storage: Optional[str] = None,
  study_name: Optional[str] = None,
  out: IO = sys.stderr,
  trainer: Sequence[str] = TRAINER,
  heartbeat_sec: float = study_lib.HEARTBEAT_SEC,
  grace_sec: float = study_lib.GRACE_SEC,
  poll_sec: float = 0.5,
  write_results: bool = True,
) -> list[dict]:
  """Runs this worker's share of the sweep until the study has no trial left; returns the results rows (and
  writes DIR/results.* with the plots unless `write_results` is False)."""
  url = study_lib.storage_url(sweep_dir, storage)
  name = study_name or study_lib.default_name(sweep_dir)
  os.makedirs(sweep_dir, exist_ok=True)

  def say(text: str) -> None:
    out.write(text + '\n')
    out.flush()

  with study_lib.single_driver(url):
    rdb = study_lib.open_storage(url, int(heartbeat_sec), int(grace_sec))
    optuna_study = study_lib.open_study(sweep, rdb, name)
    study_lib.record(sweep_dir, url, name)
    retried = study_lib.recover(optuna_study, study_lib.is_embedded(url))
    driver = Driver(sweep, sweep_dir, optuna_study, rdb, parallel, trainer, say, heartbeat_sec)
    say(_header(sweep, optuna_study, parallel, retried))
    with _stop_signals(driver):
      try:
        driver.loop(accelerator_env(parallel), study_lib.is_embedded(url), poll_sec)
      except Interrupted as stop:
        say(f'sweep: stopped on {stop}; its trials are checkpointed and queued; run the same command to resume')
        raise
  table = results.write(sweep_dir, storage=url) if write_results else results.rows(sweep_dir, storage=url)
  complete, pruned, failed = (driver.counts[k] for k in ('complete', 'pruned', 'failed'))
  say(
    f'sweep: {complete} done, {pruned} pruned, {failed} failed by this worker; '
    f'results in {os.path.join(sweep_dir, workdir_lib.RESULTS)}.md/.csv/.png'
  )
  return table


def _header(sweep: spec.Sweep, optuna_study: optuna.Study, parallel: int, retried: int) -> str:
  trials = study_lib.counted(optuna_study.get_trials(deepcopy=False))
  finished = sum(1 for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED))
  return (
    f'sweep: {sweep.total_trials()} trials ({len(sweep.axes)} fixed, {sweep.n_trials} searched), {finished} already '
    f'finished, {retried} to resume or retry, {parallel} at a time'
  )
