"""The main job on a core install (no extras): it runs, or says what is missing.

A subprocess whose import system refuses the packages of the ``examples``
extra (tqdm, matplotlib, scikit-learn, Flax) stands for
``pip install kinetix-optax`` without extras: the same interpreter and core
dependencies, none of the optional ones.
"""

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
BLOCKED = ('tqdm', 'matplotlib', 'sklearn', 'flax', 'equinox')

PRELUDE = f'''
import importlib.abc, sys
class _Block(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name.split('.')[0] in {BLOCKED!r}:
      raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
    return None
sys.meta_path.insert(0, _Block())
from kinetix.__main__ import main
sys.exit(main(sys.argv[1:]))
'''


def _run(*args, tmp_path):
  return subprocess.run(
      [sys.executable, '-c', PRELUDE, *args, '--out', str(tmp_path)],
      capture_output=True, text=True, timeout=300, cwd=ROOT,
      env={'JAX_PLATFORMS': 'cpu', 'PATH': '/usr/bin:/bin'}, check=False)


def test_condensation_runs_without_the_extras(tmp_path):
  proc = _run('condensation', '--quick', '--no-plot', '--no-progress',
              '--activations', 'tanh', '--methods', 'adam,soft',
              tmp_path=tmp_path)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert (tmp_path / 'condensation.json').exists()


def test_missing_extras_are_one_line_and_exit_code_2(tmp_path):
  for args in (('condensation', '--quick'), ('digits', '--quick')):
    proc = _run(*args, tmp_path=tmp_path)
    assert proc.returncode == 2, (args, proc.stderr[-2000:])
    assert 'Traceback' not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert 'pip install "kinetix-optax[examples]"' in lines[0]
