"""Checkpoints keep the last K and the best, never hold NaNs; the workdir guards its run."""

import json

import numpy as np
import pytest

from isojax.core import checkpoint, workdir
from isojax.core.config import base


def state(value):
  return {'step': np.array(value, np.int32), 'params': {'w': np.full((2, 3), float(value), np.float32)}}


def test_keeps_the_last_k_and_the_best_by_eval_accuracy(tmp_path):
  ckpt = checkpoint.Checkpointer(str(tmp_path / 'ckpt'), keep=2, async_save=True)
  accuracies = {10: 0.5, 20: 0.9, 30: 0.6, 40: 0.7, 50: 0.65}
  for step, accuracy in accuracies.items():
    ckpt.save(step, state(step), metrics={'accuracy': accuracy})
  ckpt.wait()
  assert ckpt.all_steps() == [20, 40, 50] and ckpt.best_step() == 20 and ckpt.latest_step() == 50
  _, restored = ckpt.restore(state(0), step=20)
  np.testing.assert_array_equal(restored['params']['w'], state(20)['params']['w'])
  ckpt.close()


def test_refuses_to_write_non_finite_parameters(tmp_path):
  ckpt = checkpoint.Checkpointer(str(tmp_path / 'ckpt'))
  bad = state(1)
  bad['params']['w'][0, 0] = np.nan
  with pytest.raises(FloatingPointError, match=r"step 7: non-finite values in \[\"\['params'\]\['w'\]\"\]"):
    ckpt.save(7, bad)
  ckpt.wait()
  assert ckpt.all_steps() == []


def test_restoring_an_empty_directory_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match='No checkpoint in'):
    checkpoint.Checkpointer(str(tmp_path / 'none')).restore(state(0))


def test_an_empty_listing_of_a_directory_being_written_is_listed_again_not_taken_for_no_checkpoint(
  tmp_path, monkeypatch
):
  # keep=1 under a live writer: the listing began before the new step was renamed in and checked the old
  # one after its deletion, so it came back empty (seen once in CI reading a training run).
  ckpt = checkpoint.Checkpointer(str(tmp_path / 'ckpt'))
  ckpt.save(10, state(10))
  ckpt.wait()
  reader = checkpoint.Checkpointer(str(tmp_path / 'ckpt'), read_only=True)
  listings = iter([[], []])  # twice empty, then what is on disk
  real = reader.all_steps
  monkeypatch.setattr(reader, 'all_steps', lambda: next(listings) if listings.__length_hint__() else real())
  step, restored = reader.restore_raw()
  assert step == 10 and restored['params']['w'][0, 0] == 10.0
  ckpt.close()


def test_workdir_records_the_config_and_refuses_an_incompatible_run(tmp_path):
  config = base()
  workdir.prepare(str(tmp_path), config)
  assert json.load(open(tmp_path / 'config.json'))['model']['name'] == 'ViT-S/16'
  config.num_epochs = 20  # training longer is compatible
  workdir.prepare(str(tmp_path), config)
  config.model.name = 'Mixer-S/16'
  with pytest.raises(ValueError, match=r'holds a run with model=.*ViT-S/16.*Use a new --workdir'):
    workdir.prepare(str(tmp_path), config)


def test_an_unwritable_workdir_is_a_clear_error(tmp_path):
  blocker = tmp_path / 'file'
  blocker.write_text('not a directory')
  with pytest.raises(ValueError, match=r'is not writable.*choose a --workdir'):
    workdir.prepare(str(blocker / 'run'), base())


def test_a_config_write_cut_off_midway_leaves_the_previous_config_whole(tmp_path, monkeypatch):
  # The other processes of a multi-process run read config.json while process 0 writes it: written in
  # place, a reader could meet an empty or half file (a JSONDecodeError that killed process 1 in CI).
  config = base()
  workdir.prepare(str(tmp_path), config)
  before = (tmp_path / 'config.json').read_text()

  def dump_half(value, f, **kwargs):
    f.write(json.dumps(value)[:10])
    raise OSError('disk full')

  monkeypatch.setattr(workdir.json, 'dump', dump_half)
  config.num_epochs = 20
  with pytest.raises(OSError, match='disk full'):
    workdir.prepare(str(tmp_path), config)
  assert (tmp_path / 'config.json').read_text() == before
  assert sorted(p.name for p in tmp_path.iterdir()) == ['config.json']


def test_metrics_reader_skips_a_half_written_last_line(tmp_path):
  with open(workdir.metrics_path(str(tmp_path)), 'w') as f:
    f.write('{"step": 1, "split": "train", "loss": 2.0}\n{"step": 2, "spl')
  assert workdir.read_metrics(str(tmp_path)) == [{'step': 1, 'split': 'train', 'loss': 2.0}]


def test_resuming_after_a_kill_mid_write_drops_the_half_line_so_the_next_record_stays_whole(tmp_path):
  with open(workdir.metrics_path(str(tmp_path)), 'w') as f:
    f.write('{"step": 1, "split": "train", "loss": 2.0}\n{"step": 2, "spl')
  assert workdir.discard_metrics_after(str(tmp_path), 1) == 1
  with open(workdir.metrics_path(str(tmp_path)), 'a') as f:  # what MetricWriter does next
    f.write('{"step": 2, "split": "train", "loss": 1.0}\n')
  assert [m['step'] for m in workdir.read_metrics(str(tmp_path))] == [1, 2]


def test_the_best_checkpoint_survives_a_restart(tmp_path):
  directory = str(tmp_path / 'ckpt')
  first = checkpoint.Checkpointer(directory, keep=1)
  first.save(10, state(10), metrics={'accuracy': 0.9})
  first.save(20, state(20), metrics={'accuracy': 0.1})
  first.wait()
  first.close()
  second = checkpoint.Checkpointer(directory, keep=1)  # as after a crash
  second.save(30, state(30), metrics={'accuracy': 0.2})
  second.save(40, state(40))  # a save between evaluations
  second.wait()
  assert second.all_steps() == [10, 40] and second.best_step() == 10
  second.close()
