"""Hostile inputs: damaged or tampered weight files, and config overrides of every wrong kind.

Weight files: every reader checks what a file declares (zip members, .npy headers, torch storages and
strides, safetensors offsets) before allocating, so a hostile file is refused in one message naming it,
never a crash, a hang or a runaway allocation. The fuzz reads seeded mutants of small valid files, each in a
forked child with a memory limit and a timeout (tests/weight_fuzz.py).

Config overrides: property-based (hypothesis) over the fields of the default config, with values of every
type and range and fields that do not exist: each refusal names the field and what it allows.
"""

import collections
import io
import os
import struct
import time
import zipfile

import numpy as np
import pytest

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
  return weight_fuzz.fuzz(pretrained.describe, valid, suffix, str(tmp_path), seed=0, count=count)


def assert_every_mutant_is_read_or_refused_by_name(outcomes):
  counts = collections.Counter(o['outcome'] for o in outcomes)
  failures = [o for o in outcomes if o['outcome'] in weight_fuzz.FAILURES]
  assert not failures, (counts, failures[:3])
  unnamed = [o for o in outcomes if o['outcome'] == 'refused' and os.path.basename(o['path']) not in o['message']]
  assert not unnamed, unnamed[:3]
  long = [o for o in outcomes if o['outcome'] == 'refused' and (len(o['message']) > 400 or '\n' in o['message'])]
  assert not long, long[:3]  # one short line each
  assert counts['refused'] > len(outcomes) // 2, counts  # the mutants really are damaged


@pytest.mark.parametrize('suffix', ['.npz', '.pth', '.safetensors'])
def test_a_sample_of_damaged_weight_files_is_refused_by_name_without_crash_hang_or_memory_blowup(suffix, tmp_path):
  assert_every_mutant_is_read_or_refused_by_name(fuzz_outcomes(suffix, tmp_path, 25))


@pytest.mark.slow
@pytest.mark.parametrize('suffix', ['.npz', '.pth', '.safetensors'])
def test_five_hundred_damaged_files_per_format_are_refused_by_name_without_crash_hang_or_memory_blowup(
  suffix, tmp_path
):
  outcomes = fuzz_outcomes(suffix, tmp_path, 500)
  assert collections.Counter(o['mutation'] for o in outcomes) == dict.fromkeys(weight_fuzz.MUTATIONS, 100)
  assert_every_mutant_is_read_or_refused_by_name(outcomes)
