"""benchmarks/side_by_side.py: one table of isojax against timm and a plain-Flax baseline."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'benchmarks'))
import side_by_side  # noqa: E402


def test_table_gives_images_per_second_and_isojax_speed_ratios():
  case = side_by_side.parse_case('ViT-S/16:16:224')
  results = [
    {
      'isojax': {'train_seconds': 1.0, 'inference_seconds': 0.25, 'train_mfu': 0.6, 'inference_mfu': 0.7},
      'plain': {'train_seconds': 2.0, 'inference_seconds': 0.5},
      'timm': {'train_seconds': 0.8, 'inference_seconds': 0.5},
    }
  ]
  row = side_by_side.table([case], results, with_timm=True).splitlines()[2]
  cells = [c.strip() for c in row.strip('|').split('|')]
  assert cells[:3] == ['ViT-S/16', '16', '224']
  assert cells[3:9] == ['16.0', '60%', '8.0', '**2.00x**', '20.0', '**0.80x**']  # train
  assert cells[9:15] == ['64.0', '70%', '32.0', '**2.00x**', '32.0', '**2.00x**']  # inference


def test_a_failed_measurement_is_reported_not_hidden():
  case = side_by_side.parse_case('ConvMixer-256/8:8:32:10')
  assert case['num_classes'] == 10
  results = [{'isojax': {'train_seconds': 1.0, 'inference_seconds': 0.5}, 'plain': {'error': 'exit 1: out of memory'}}]
  text = side_by_side.table([case], results, with_timm=False)
  assert 'n/a' in text.splitlines()[2] and 'plain: exit 1: out of memory' in text


def test_a_malformed_case_names_the_expected_form():
  with pytest.raises(SystemExit, match='NAME:BATCH:IMAGE_SIZE'):
    side_by_side.parse_case('ViT-S/16:16')


@pytest.mark.slow
def test_side_by_side_runs_isojax_and_the_plain_baseline_and_writes_the_table(tmp_path):
  out = tmp_path / 'results.md'
  assert side_by_side.main(['--cases', 'ViT-Ti/16:8:16:10', '--steps', '1', '--out', str(out)]) == 0
  lines = out.read_text().splitlines()
  assert lines[2].startswith('| ViT-Ti/16 | 8 | 16 |')
  assert '**' in lines[2] and 'n/a' not in lines[2]
  assert (tmp_path / 'results.json').exists()


@pytest.mark.slow
@pytest.mark.parametrize('name,image_size', [('Mixer-S/32', 64), ('ConvMixer-256/8', 8)])
def test_the_plain_baseline_builds_every_family_as_the_registry_names_it(name, image_size):
  import jax
  import jax.numpy as jnp
  import plain_flax

  model = plain_flax.build(name, 10)
  images = jnp.zeros((1, image_size, image_size, 3))
  variables = jax.jit(lambda: model.init(jax.random.PRNGKey(0), images, train=False))()
  assert model.apply(variables, images, train=False).shape == (1, 10)
