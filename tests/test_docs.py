"""The API site, built as .ci/run builds it, has every public name and reads
well offline."""

import importlib
import pathlib
import re

import pytest

import kinetix

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Sphinx extensions' own deprecation notices are not kinetix's.
pytestmark = pytest.mark.filterwarnings('ignore::DeprecationWarning',
                                        'ignore::PendingDeprecationWarning')

MODULES = ('kinetic', 'aliases', 'annealing', 'hamiltonian', 'masks',
           'metrics', 'plotting')


@pytest.fixture(scope='module')
def site(tmp_path_factory):
  """The HTML site, built with warnings as errors (the docs extra)."""
  pytest.importorskip('sphinx', reason='the API site needs the docs extra')
  from sphinx.cmd.build import build_main  # pylint: disable=g-import-not-at-top
  out = tmp_path_factory.mktemp('site')
  assert build_main(['-W', '--keep-going', '-q', '-b', 'html',
                     str(ROOT / 'docs'), str(out)]) == 0
  return out


def _inventory(site):
  from sphinx.util.inventory import InventoryFile  # pylint: disable=g-import-not-at-top
  with open(site / 'objects.inv', 'rb') as f:
    inv = InventoryFile.load(f, '', lambda *parts: '/'.join(parts))
  return {name for entries in inv.data.values() for name in entries} \
      if hasattr(inv, 'data') else {
          name for entries in inv.values() for name in entries}


def test_every_public_name_is_on_the_site(site):
  names = _inventory(site)
  public = set()
  for module_name in MODULES:
    module = importlib.import_module(f'kinetix.{module_name}')
    public |= {f'kinetix.{module_name}.{n}' for n in module.__all__}
  for name in kinetix.__all__:
    obj = getattr(kinetix, name)
    module = getattr(obj, '__module__', None)
    if module and module.startswith('kinetix.') and not name.startswith('_'):
      public.add(f'{module}.{name}')
  missing = sorted(n for n in public if n not in names)
  assert not missing, missing


def test_signatures_name_the_aliases_and_functions_come_first(site):
  page = (site / 'api' / 'kinetic.html').read_text()
  text = re.sub(r'<[^>]+>', '', page)
  assert 'optax.ScalarOrSchedule' in text
  assert 'Callable[[Array' not in text          # no expanded union
  assert text.index('kinetix.kinetic.soft_collision(') < text.index(
      'class kinetix.kinetic.SoftCollisionState')
  assert 'Alias for field number' not in text
  assert 'steps taken' in text                  # a field's own comment


def test_math_renders_without_a_network(site):
  page = (site / 'api' / 'kinetic.html').read_text()
  scripts = re.findall(r'<script[^>]*src="([^"]*mathjax[^"]*)"', page,
                       re.IGNORECASE)
  assert scripts and not any('//' in s for s in scripts), scripts
  for src in scripts:
    assert (site / 'api' / src.split('?')[0]).resolve().is_file(), src


def test_results_pages_come_from_the_json(site):
  bench = re.sub(r'<[^>]+>', '', (site / 'benchmark.html').read_text())
  assert 'Device: ' in bench and 'targets hold' in bench
  experiments = re.sub(r'<[^>]+>', '', (site / 'experiments.html').read_text())
  for caption in ('Condensation of the hidden layer', 'scikit-learn digits',
                  'byte-level GPT'):
    assert caption in experiments, caption
