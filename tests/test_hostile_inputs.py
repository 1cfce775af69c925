"""Hostile inputs: damaged or tampered weight files, and config overrides of every wrong kind.

Weight files: every reader checks what a file declares (zip members, .npy headers, torch storages and
strides, safetensors offsets) before allocating, so a hostile file is refused in one message naming it,
never a crash, a hang or a runaway allocation. The fuzz reads seeded mutants of small valid files, each in a
forked child with a memory limit and a timeout (tests/weight_fuzz.py).

Config overrides: property-based (hypothesis) over the fields of the default config, with values of every
type and range and fields that do not exist: each refusal names the field and what it allows.
"""

import collections
import contextlib
import io
import os
import re
import struct
import time
import zipfile

import numpy as np
import pytest
from hypothesis import example, given, seed, settings
from hypothesis import strategies as st

from isojax.weights import files, pretrained, torchfile
from tests import weight_fuzz

DATA = os.path.join(os.path.dirname(__file__), 'data', 'timm')


# One small valid file per format. vit_depth1.npz is what google-research/vision_transformer's own
# VisionTransformer (vendored) saves for a 1-block width-32 model: tests.test_faults.official_vit_file(depth=1).
VALID_FILES = {
  '.npz': os.path.join(os.path.dirname(__file__), 'data', 'official', 'vit_depth1.npz'),
  '.pth': os.path.join(DATA, 'convmixer.pth'),
  '.safetensors': os.path.join(DATA, 'vit_token.safetensors'),
}


# --- the harness finds what it is for ------------------------------------------------------------


def _allocates_a_terabyte(path):
  return np.ones(2**40, np.uint8)


def _sleeps(path):
  time.sleep(60)


def _segfaults(path):
  os.kill(os.getpid(), 11)


def _raises_key_error(path):
  return {}['blocks.0.norm1.weight']


def test_every_valid_seed_file_reads():
  for path in VALID_FILES.values():
    assert weight_fuzz.read_in_child(pretrained.describe, path)['outcome'] == 'read', path


@pytest.mark.parametrize(
  'read,outcome',
  [
    (_allocates_a_terabyte, 'memory'),
    (_sleeps, 'hang'),
    (_segfaults, 'crash'),
    (_raises_key_error, 'other'),
    (files.read, 'refused'),
  ],
)
def test_the_fuzz_harness_reports_memory_blowups_hangs_crashes_and_stray_errors(tmp_path, read, outcome):
  (tmp_path / 'w.npz').write_bytes(b'not a zip')
  assert weight_fuzz.read_in_child(read, str(tmp_path / 'w.npz'), timeout_s=1)['outcome'] == outcome


# --- declared sizes are checked before anything is allocated --------------------------------------


def npz_declaring(path, shape, data=b'\0' * 64, dtype='<f4'):
  """An .npz whose one .npy header declares `shape` over `data`."""
  header = io.BytesIO()
  np.lib.format.write_array_header_1_0(header, {'descr': dtype, 'fortran_order': False, 'shape': shape})
  with zipfile.ZipFile(path, 'w') as archive:
    archive.writestr('w.npy', header.getvalue() + data)  # the header starts with the magic
  return str(path)


def test_an_npy_header_declaring_a_terabyte_is_refused_before_allocating(tmp_path):
  path = npz_declaring(tmp_path / 'big.npz', (2**40,))
  outcome = weight_fuzz.read_in_child(files.read, path)
  assert outcome['outcome'] == 'refused', outcome
  assert 'big.npz' in outcome['message'] and 'declares shape (1099511627776,)' in outcome['message']
  assert 'but holds 64 bytes' in outcome['message']


def test_an_npy_member_holding_python_objects_is_refused(tmp_path):
  path = npz_declaring(tmp_path / 'objects.npz', (2,), dtype='|O')
  with pytest.raises(ValueError, match=r'objects.npz.*holds Python objects'):
    files.read(path)


def test_a_zip_member_declaring_more_bytes_than_the_file_holds_is_refused(tmp_path):
  path = npz_declaring(tmp_path / 'w.npz', (16,))
  data = bytearray(open(path, 'rb').read())
  directory = data.rfind(b'PK\x01\x02')  # the central directory entry: compressed size at +20, size at +24
  data[directory + 20 : directory + 28] = struct.pack('<II', 2**32 - 1, 2**32 - 1)
  (tmp_path / 'w.npz').write_bytes(bytes(data))
  with pytest.raises(ValueError, match=r"w.npz.*member 'w.npy' declares 4294967295 bytes at offset 0, past the end"):
    files.read(path)


def test_a_torch_tensor_repeating_its_storage_with_stride_zero_is_refused(tmp_path):
  weight_fuzz.crafted_torch_file(tmp_path / 'w.pth', 16, (2**40,), stride=(0,))  # 2**40 copies of element 0
  outcome = weight_fuzz.read_in_child(torchfile.read_torch, str(tmp_path / 'w.pth'))
  assert outcome['outcome'] == 'refused', outcome
  assert 'w.pth' in outcome['message'] and 'more than its storage holds (16)' in outcome['message']


def test_a_tensor_holding_nan_or_inf_is_refused_by_name_unless_allowed(tmp_path):
  values = np.arange(6, dtype=np.float32).reshape(2, 3)
  values[1, 2] = np.inf
  np.savez(tmp_path / 'w.npz', **{'Transformer/encoder_norm/scale': values})
  with pytest.raises(ValueError, match=r"w.npz.*tensor 'Transformer/encoder_norm/scale' holds 1 NaN or inf value"):
    files.read(str(tmp_path / 'w.npz'))
  _, tensors = files.read(str(tmp_path / 'w.npz'), allow_non_finite=True)
  assert np.isinf(tensors['Transformer/encoder_norm/scale'][1, 2])


def test_a_timm_file_missing_a_tensor_its_family_needs_names_the_file_and_the_tensor(tmp_path):
  from safetensors.numpy import load_file, save_file

  tensors = load_file(os.path.join(DATA, 'vit_token.safetensors'))
  del tensors['blocks.1.attn.qkv.weight']
  save_file(tensors, str(tmp_path / 'cut.safetensors'))
  with pytest.raises(ValueError, match=r"cut.safetensors' has no tensor 'blocks.1.attn.qkv.weight'"):
    pretrained.describe(str(tmp_path / 'cut.safetensors'))


def test_a_pickle_that_is_not_a_state_dict_is_refused_naming_the_file(tmp_path):
  with zipfile.ZipFile(tmp_path / 'list.pth', 'w') as archive:
    archive.writestr('archive/data.pkl', b'\x80\x02]q\x00.')  # pickle.dumps([], protocol=2)
  with pytest.raises(ValueError, match=r"list.pth' holds a pickled list, not a state dict"):
    files.read(str(tmp_path / 'list.pth'))


# --- the fuzz --------------------------------------------------------------------------------------


def fuzz_outcomes(suffix, tmp_path, count):
  valid = open(VALID_FILES[suffix], 'rb').read()
  return weight_fuzz.fuzz(pretrained.describe, valid, suffix, str(tmp_path), seed=0, count=count, fresh=count > 50)


def assert_every_mutant_is_read_or_refused_by_name(outcomes):
  counts = collections.Counter(o['outcome'] for o in outcomes)
  failures = [o for o in outcomes if o['outcome'] in weight_fuzz.FAILURES]
  assert not failures, (counts, failures[:3])
  unnamed = [o for o in outcomes if o['outcome'] == 'refused' and os.path.basename(o['path']) not in o['message']]
  assert not unnamed, unnamed[:3]
  long = [
    o
    for o in outcomes
    if o['outcome'] == 'refused' and (len(o['message'].replace(o['path'], '')) > 320 or '\n' in o['message'])
  ]
  assert not long, long[:3]  # one short line each (besides the file's path, however long it is)
  vague = [o for o in outcomes if o['outcome'] == 'refused' and 'Errno' in o['message']]
  assert not vague, vague[:3]  # says what was wrong ("starts at offset -20, before the start of the file")
  assert counts['refused'] > len(outcomes) // 2, counts  # the mutants really are damaged


@pytest.mark.parametrize('suffix', ['.npz', '.pth', '.safetensors'])
def test_a_sample_of_damaged_weight_files_is_refused_by_name_without_crash_hang_or_memory_blowup(suffix, tmp_path):
  assert_every_mutant_is_read_or_refused_by_name(fuzz_outcomes(suffix, tmp_path, 12))


@pytest.mark.slow
@pytest.mark.parametrize('suffix', ['.npz', '.pth', '.safetensors'])
def test_five_hundred_damaged_files_per_format_are_refused_by_name_without_crash_hang_or_memory_blowup(
  suffix, tmp_path
):
  outcomes = fuzz_outcomes(suffix, tmp_path, 500)
  assert collections.Counter(o['mutation'] for o in outcomes) == dict.fromkeys(weight_fuzz.MUTATIONS, 100)
  assert_every_mutant_is_read_or_refused_by_name(outcomes)


# --- config overrides of every wrong kind (hypothesis) --------------------------------------------

DEFAULT = os.path.join(os.path.dirname(os.path.dirname(__file__)), 'configs', 'default.py')


@pytest.fixture(autouse=True, scope='module')
def _in_a_scratch_folder(tmp_path_factory):
  """The fuzzed overrides hold relative paths (data.data_dir='None' prepares the digits in ./None): they land in
  a scratch folder, never in the checkout."""
  previous = os.getcwd()
  os.chdir(tmp_path_factory.mktemp('cwd'))
  yield
  os.chdir(previous)


def _leaf_fields():
  from isojax.core import loading

  def walk(node, prefix):
    for key, value in node.items():
      if hasattr(value, 'items'):
        yield from walk(value, f'{prefix}{key}.')
      else:
        yield f'{prefix}{key}'

  return sorted(walk(loading.load(DEFAULT), ''))


FIELDS = _leaf_fields()
fields = st.one_of(
  st.sampled_from(FIELDS),
  st.sampled_from(FIELDS).map(lambda f: f + 'x'),  # a typo of a real field
  st.text(alphabet='abcdefghijklmnopqrstuvwxyz._', min_size=1, max_size=16),  # anything at all
)
values = st.one_of(
  st.integers(min_value=-(2**62), max_value=2**62),
  st.floats(allow_nan=True, allow_infinity=True),
  st.booleans(),
  st.none(),
  st.text(max_size=12),
  st.tuples(st.integers(-3, 3), st.integers(-3, 3)),
  st.lists(st.text(alphabet='abc/', max_size=4), max_size=3),
)
SPLIT_FIELDS = ('data.train_split', 'data.eval_split', 'evals.val.split', 'evals.fewshot.test_split')
split_strings = st.one_of(  # TFDS split grammar's pieces, well and badly formed
  st.text(alphabet='traintesv[]:%+-0123 ', max_size=14),
  st.sampled_from(['train', 'test']).flatmap(lambda s: st.from_regex(rf'\A{s}\[-?\d{{0,4}}%?:-?\d{{0,4}}%?\]\Z')),
)
# What once got past a check, kept as examples for good (hypothesis runs them before its own draws).
PINNED = [
  ('optimizer.lr', -1.0),  # the right type, a wrong value: validation's refusal
  ('model.name', 'ViT-Q/16'),  # no such model: the model layer's refusal
  ('optimizer.lrr', 0.1),  # no such field
  ('batch_size', 'big'),  # the wrong type
  ('data.eval_split', "['/bcb', 'c', '']"),  # not a TFDS split: was TFDS's traceback
  ('data.train_split', 'train[:0]'),  # no examples
  ('data.eval_split', 'validation'),  # a split the dataset lacks
  ('data.name', ''),  # not a TFDS name: was TFDS's traceback
  ('data.train_pp', 'None'),  # not a preprocessing op: was a traceback at the first batch
  ('batch_size', '\x1e'),  # a control character str.splitlines breaks at: the refusal shows it escaped
]


def override_examples(max_examples, field_strategy=None, value_strategy=None):
  """@given over (field, value) with the pinned examples, derandomized (CI sees what a developer sees);
  ISOJAX_HYPOTHESIS_SEED=N draws another stream, to search further than CI does."""
  other_seed = os.environ.get('ISOJAX_HYPOTHESIS_SEED')

  def decorate(test):
    for field, value in PINNED:
      test = example(field=field, value=value)(test)
    test = given(
      field=fields if field_strategy is None else field_strategy,
      value=values if value_strategy is None else value_strategy,
    )(test)
    if other_seed:
      test = seed(int(other_seed))(test)
    return settings(max_examples=max_examples, deadline=None, derandomize=not other_seed, database=None)(test)

  return decorate


def names_the_field(message, field):
  """A refusal names the field (its dotted path, or its last part for the model layer's checks), in one line."""
  return '\n' not in message.strip() and (field in message or field.rsplit('.', 1)[-1] in message)


def checked(field, value):
  """The override applied and the config checked as isojax.main checks it; the refusal, or None."""
  from isojax import models
  from isojax.core import loading, validation
  from isojax.data import input_pipeline

  try:
    config = loading.load(DEFAULT, {field: value})
    validation.validate(config)
    models.check_config(config)
    input_pipeline.check_config(config)
  except ValueError as e:
    return str(e)
  return None


def exit_code_and_stderr(command, argv):
  """(exit code, stderr) of an in-process command; an exception other than SystemExit propagates (a traceback)."""
  err = io.StringIO()
  with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
    try:
      code = command(argv)
    except SystemExit as e:
      code = e.code
  return code, err.getvalue()


def assert_ran_or_refused_naming(field, code, err):
  """Exit 0, or exit 2 whose last line names the field; never a traceback or another code."""
  assert code in (0, 2) and 'Traceback' not in err, (field, code, err[-2000:])
  if code == 2:
    assert names_the_field(err.strip().splitlines()[-1], field), (field, err[-2000:])


def main_dry_run(field, value, workdir):
  from isojax import main

  text = value if isinstance(value, str) else repr(value)
  return exit_code_and_stderr(
    main.main, ['--config=' + DEFAULT, f'--workdir={workdir}', '--dry_run', f'--config.{field}={text}']
  )


@override_examples(200)
def test_any_override_is_taken_or_refused_in_one_line_naming_the_field(field, value):
  refusal = checked(field, value)  # any other exception fails the test
  assert refusal is None or names_the_field(refusal, field), (field, value, refusal)


@override_examples(60, st.sampled_from(SPLIT_FIELDS), split_strings)
def test_any_split_string_is_taken_by_tfds_parser_or_refused_naming_the_field(field, value):
  import tensorflow_datasets as tfds

  refusal = checked(field, value)
  assert refusal is None or names_the_field(refusal, field), (field, value, refusal)
  if refusal is None and field in SPLIT_FIELDS:
    tfds.core.ReadInstruction.from_spec(value)  # what passed the check, TFDS can parse


@pytest.mark.parametrize(
  'field,value,message',
  [
    ('data.eval_split', "['/bcb', 'c', '']", r'data.eval_split=.*a TFDS split such as'),
    ('data.train_split', 'train[:bad]', r"data.train_split='train\[:bad\]' \(a TFDS split"),
    ('data.eval_split', 'validation', r"data.eval_split='validation' cannot be read from isojax_digits"),
    ('data.eval_split', 'test[:0]', r"data.eval_split='test\[:0\]' has no examples"),
    ('evals.val.split', 'test[', r"evals.val.split='test\[' \(a TFDS split"),
    ('data.name', 'cifar11', r"data.name='cifar11' is not a dataset here"),
    ('data.train_pp', 'resize(size=8, foo=1)', r"data.train_pp=.*unexpected keyword argument 'foo'; resize takes"),
    ('data.eval_pp', 'normalise(half)', r"data.eval_pp=.*Unknown preprocessing op 'normalise'"),
  ],
)
def test_a_split_dataset_or_preprocessing_that_cannot_be_read_is_a_usage_error_naming_its_field(
  field, value, message, tmp_path
):
  code, err = main_dry_run(field, value, tmp_path)
  assert code == 2 and 'Traceback' not in err, err[-2000:]
  assert re.search(message, err.strip().splitlines()[-1]), err[-2000:]


@override_examples(40)
@pytest.mark.slow
def test_any_command_line_override_runs_or_is_a_usage_error_naming_the_field(field, value, tmp_path_factory):
  code, err = main_dry_run(field, value, tmp_path_factory.mktemp('run'))
  assert_ran_or_refused_naming(field, code, err)


@override_examples(30, st.sampled_from(SPLIT_FIELDS), split_strings)
@pytest.mark.slow
def test_any_split_on_the_command_line_runs_or_is_a_usage_error_naming_the_field(field, value, tmp_path_factory):
  code, err = main_dry_run(field, value, tmp_path_factory.mktemp('run'))
  assert_ran_or_refused_naming(field, code, err)


@override_examples(40)
@pytest.mark.slow
def test_any_sweep_axis_value_is_planned_or_refused_before_any_trial_naming_the_field(field, value, tmp_path_factory):
  from isojax import sweep

  folder = tmp_path_factory.mktemp('sweep')
  sweep_file = folder / 'sweep.py'
  sweep_file.write_text(
    "from isojax.sweeps import Sweep, product\nnan, inf = float('nan'), float('inf')\n"
    f'def get_sweep():\n  return Sweep({DEFAULT!r}, product({{{field!r}: [{value!r}]}}))\n'
  )
  code, err = exit_code_and_stderr(sweep.main, [str(sweep_file), f'--workdir={folder / "out"}', '--dry_run'])
  assert_ran_or_refused_naming(field, code, err)
  assert not os.path.exists(folder / 'out' / 'trials'), err[-2000:]


def test_main_called_again_in_one_process_with_the_same_override_applies_the_new_value(tmp_path):
  first = main_dry_run('data.eval_split', 'nope', tmp_path)
  second = main_dry_run('data.eval_split', 'test[:50%]', tmp_path)  # a notebook's second call: a fresh parse
  assert first[0] == 2 and "data.eval_split='nope'" in first[1]
  assert second == (0, second[1]) and 'Traceback' not in second[1], second[1][-2000:]
