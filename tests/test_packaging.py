"""What ``pip install kinetix-optax`` would get: the built sdist and wheel.

Built with the setuptools of the test environment (the ``test`` extra pins
the version the build backend needs), in a subprocess.
"""

import email
import pathlib
import re
import subprocess
import sys
import tarfile
import tomllib
import zipfile

import pytest

import kinetix

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def dists(tmp_path_factory):
  out = tmp_path_factory.mktemp('dist')
  # build_meta rewrites sys.argv while it builds: read the directory first.
  code = ('import sys; from setuptools import build_meta as b; '
          'd = sys.argv[1]; '
          's = b.build_sdist(d); w = b.build_wheel(d); print("DISTS", s, w)')
  proc = subprocess.run([sys.executable, '-c', code, str(out)], cwd=ROOT,
                        capture_output=True, text=True, timeout=300,
                        check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = [ln for ln in proc.stdout.splitlines() if ln.startswith('DISTS ')]
  _, sdist, wheel = line[-1].split()
  return out / sdist, out / wheel


def _metadata(wheel):
  with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.endswith('.dist-info/METADATA'))
    # Core metadata is UTF-8: headers, a blank line, the long description.
    text = z.read(name).decode('utf-8')
    return email.message_from_string(text), text.split('\n\n', 1)[1], \
        z.namelist()


def test_wheel_metadata(dists):
  meta, _, names = _metadata(dists[1])
  assert meta['Name'] == 'kinetix-optax'
  assert meta['Version'] == kinetix.__version__
  assert meta['License-Expression'] == 'Apache-2.0'
  classifiers = meta.get_all('Classifier')
  assert 'Typing :: Typed' in classifiers
  assert meta.get_all('Project-URL')
  assert 'kinetix/py.typed' in names
  assert not any(n.startswith('tests/') for n in names)


def test_long_description_has_no_relative_links(dists):
  """PyPI shows the long description without the repository: every link
  and image must be absolute."""
  _, body, _ = _metadata(dists[1])
  assert 'kinetix-optax' in body
  targets = re.findall(r'\]\(([^)]*)\)', body)
  assert targets
  assert all(t.startswith('https://') for t in targets), targets
  readme = tomllib.loads((ROOT / 'pyproject.toml').read_text())['project'][
      'readme']
  assert body.strip() == (ROOT / readme).read_text().strip()


def test_sdist_leaves_the_tests_out_and_builds(dists):
  """The sdist holds the package and its metadata; the tests need the
  repository (README, notebooks, CI script), so they are left out."""
  with tarfile.open(dists[0]) as tar:
    names = [n.split('/', 1)[1] for n in tar.getnames() if '/' in n]
  assert 'pyproject.toml' in names and 'LICENSE' in names
  assert 'docs/pypi.md' in names and 'kinetix/py.typed' in names
  assert 'kinetix/kinetic.py' in names
  for prefix in ('tests/', 'notebooks/', 'examples/', '.ci/'):
    assert not any(n.startswith(prefix) for n in names), prefix


def test_declared_floors_are_the_versions_ci_installs():
  """Every ``>=`` floor of jax, jaxlib, optax, numpy and flax in
  pyproject.toml is pinned by ``.ci/floors.txt``, which .ci/run installs in
  a second venv to run the tests marked ``floors``: no floor goes
  untested."""
  project = tomllib.loads((ROOT / 'pyproject.toml').read_text())['project']
  declared = {}
  requirements = list(project['dependencies']) + [
      r for extra in ('flax', 'examples') for r in
      project['optional-dependencies'][extra]]
  for req in requirements:
    name, op, version = re.match(r'([A-Za-z0-9_.-]+)\s*(>=)\s*([^,;\s]+)',
                                 req).groups()
    if name in ('jax', 'jaxlib', 'optax', 'numpy', 'flax'):
      assert declared.setdefault(name, version) == version, req
  pinned = dict(re.findall(r'^([A-Za-z0-9_.-]+)==(\S+)$',
                           (ROOT / '.ci' / 'floors.txt').read_text(), re.M))
  assert pinned == declared
  ci = (ROOT / '.ci' / 'run').read_text()
  assert '-c .ci/floors.txt' in ci and '-m floors' in ci
