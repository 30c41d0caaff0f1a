"""The notebooks in notebooks/ run top to bottom in SMOKE mode and are stored
without outputs."""

import pathlib

import pytest

nbformat = pytest.importorskip('nbformat')
nbclient = pytest.importorskip('nbclient')

NOTEBOOK_DIR = pathlib.Path(__file__).resolve().parents[1] / 'notebooks'
EXPECTED = ['01_quickstart.ipynb', '02_condensation.ipynb', '04_lm.ipynb',
            '03_resnet18_cifar10.ipynb']
NOTEBOOKS = sorted(p.name for p in NOTEBOOK_DIR.glob('*.ipynb'))


def test_the_expected_notebooks_exist():
  assert set(EXPECTED) <= set(NOTEBOOKS), NOTEBOOKS


@pytest.mark.parametrize('name', NOTEBOOKS)
def test_notebook_is_stored_without_outputs(name):
  nb = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
  nbformat.validate(nb)
  code = [c for c in nb.cells if c.cell_type == 'code']
  assert code
  for cell in code:
    assert cell.outputs == [], (name, cell.source[:60])
    assert cell.execution_count is None, (name, cell.source[:60])


@pytest.mark.parametrize('name', NOTEBOOKS)
def test_notebook_colab_preamble(name):
  """Install cell first (Colab only), then device detection and SMOKE."""
  nb = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
  code = [c.source for c in nb.cells if c.cell_type == 'code']
  assert "'google.colab' in sys.modules" in code[0]
  assert '!pip install -q "kinetix-optax[examples]"' in code[0]
  assert any('jax.devices()' in s for s in code[:3])
  assert any("os.environ.get('KINETIX_SMOKE', '0') == '1'" in s
             for s in code[:4])


@pytest.mark.parametrize('name', NOTEBOOKS)
def test_notebook_runs_in_smoke_mode(name, tmp_path, monkeypatch):
  # The kernel inherits this environment: SMOKE mode, no downloads.
  monkeypatch.setenv('KINETIX_SMOKE', '1')
  nb = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
  client = nbclient.NotebookClient(
      nb, timeout=300, kernel_name='python3',
      resources={'metadata': {'path': str(tmp_path)}})
  client.execute()  # raises CellExecutionError on the first failing cell
  errors = [o for c in nb.cells if c.cell_type == 'code'
            for o in c.outputs if o.output_type == 'error']
  assert not errors
  text = ''.join(o.get('text', '') for c in nb.cells if c.cell_type == 'code'
                 for o in c.outputs if o.output_type == 'stream')
  assert 'SMOKE mode' in text
  images = [o for c in nb.cells if c.cell_type == 'code' for o in c.outputs
            if 'image/png' in o.get('data', {})]
  assert images, 'no figure was displayed'
