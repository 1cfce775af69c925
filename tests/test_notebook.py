"""The exploration notebook executes end to end against real (short) runs of each family."""

import os

import nbformat
import pytest
from nbclient import NotebookClient

from isojax.core import loading
from isojax.models import model_config
from isojax.training import loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, 'experiments', 'notebooks', 'explore_run.ipynb')

SMALL = {  # one run (suite time): the figure functions of every family are tests/test_explain.py's
  'vit': model_config('ViT-16x2/2-h2-m32')
}


@pytest.mark.slow
@pytest.mark.parametrize('family', sorted(SMALL))
def test_notebook_runs_on_a_finished_run_and_draws_its_figures(family, tmp_path, monkeypatch):
  config = loading.load(
    os.path.join(ROOT, 'configs', 'default.py'),
    {
      'num_steps': 6,
      'eval_every': 3,
      'checkpoint.every': 3,
      'log_every': 1,
      'batch_size': 16,
      'eval_batch_size': 368,
      'data.data_dir': str(tmp_path / 'tfds'),
    },
  )
  config.model = SMALL[family]
  loop.train_and_evaluate(config, str(tmp_path / 'run'))

  monkeypatch.setenv('ISOJAX_WORKDIR', str(tmp_path / 'run'))
  monkeypatch.setenv('PYTHONPATH', os.pathsep.join(filter(None, [ROOT, os.environ.get('PYTHONPATH')])))
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  NotebookClient(
    notebook, timeout=300, kernel_name='python3', resources={'metadata': {'path': os.path.dirname(NOTEBOOK)}}
  ).execute()
  figures = [
    o
    for cell in notebook.cells
    if cell.cell_type == 'code'
    for o in cell.get('outputs', [])
    if 'image/png' in o.get('data', {})
  ]
  assert len(figures) == 4  # curves, predictions, confusion matrix, what the model learned
  printed = ''.join(o.get('text', '') for c in notebook.cells if c.cell_type == 'code' for o in c.outputs)
  assert f'({family})' in printed and 'eval accuracy' in printed
