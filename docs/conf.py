"""Sphinx configuration of the kinetix API site (``docs/``).

Build: ``pip install -e ".[docs]" && sphinx-build -W -b html docs
docs/_build/html``; the site is then ``docs/_build/html/index.html``.
"""

import inspect
import pathlib
import re
import shutil
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import kinetix  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

project = 'kinetix'
author = 'The kinetix authors'
copyright = '2025-2026, the kinetix authors'  # noqa: A001  pylint: disable=redefined-builtin
release = kinetix.__version__
version = release

extensions = [
    'myst_nb',
    'sphinx.ext.autodoc',
    'sphinx.ext.autosummary',
    'sphinx.ext.napoleon',
    'sphinx.ext.mathjax',
    'sphinx.ext.viewcode',
    # MathJax from the site itself, not a CDN: the math renders offline.
    'sphinx-mathjax-offline',
]

# The notebooks are rendered from their stored form (no outputs), never run.
nb_execution_mode = 'off'
myst_enable_extensions = ['dollarmath', 'colon_fence']
myst_heading_anchors = 3
source_suffix = {'.rst': 'restructuredtext', '.md': 'myst-nb',
                 '.ipynb': 'myst-nb'}

autosummary_generate = False
# With a module's __all__, 'bysource' follows it: functions first, then the
# state classes.
autodoc_member_order = 'bysource'
autodoc_typehints = 'signature'
autodoc_default_options = {'members': True, 'undoc-members': False,
                           'show-inheritance': False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

html_theme = 'sphinx_book_theme'
html_title = f'kinetix {release}'
html_theme_options = {'show_toc_level': 2}
exclude_patterns = ['_build', '_generated', 'figures', 'pypi.md', 'Thumbs.db',
                    '.DS_Store']
suppress_warnings = ['myst.header']


# Results pages are generated from the results' JSON (docs/figures/*.json,
# written by `python -m kinetix COMMAND --out docs/figures`) with the same
# functions that print them, so a page never disagrees with its data.
_GENERATED = ROOT / 'docs' / '_generated'
_GENERATED.mkdir(exist_ok=True)
_FIGURES = ROOT / 'docs' / 'figures'


def _generate_results() -> None:
  import json  # pylint: disable=g-import-not-at-top
  from kinetix.experiments import bench  # pylint: disable=g-import-not-at-top
  from kinetix.experiments import condensation, digits, lm  # pylint: disable=g-import-not-at-top
  modules = {'condensation': condensation, 'digits': digits, 'lm': lm,
             'condensation_2000steps': condensation}
  for name, module in modules.items():
    path = _FIGURES / f'{name}.json'
    if path.is_file():
      text = module.markdown(json.loads(path.read_text()))
      (_GENERATED / f'{name}.md').write_text(text)
  data = json.loads((_FIGURES / 'bench.json').read_text())
  (_GENERATED / 'bench.md').write_text(bench.markdown_report(data, compact=True))


_generate_results()

# The stored notebooks (notebooks/*.ipynb, kept without outputs) are copied
# next to the page that lists them; docs/notebooks/ is not tracked.
_NB_DST = ROOT / 'docs' / 'notebooks'
_NB_DST.mkdir(exist_ok=True)
for _nb in sorted((ROOT / 'notebooks').glob('*.ipynb')):
  shutil.copyfile(_nb, _NB_DST / _nb.name)


# NamedTuple fields are documented by the comment beside them in the class
# body (``count: jax.Array  # shape=(), int32: steps taken.``); autodoc would
# otherwise print "Alias for field number 0".
_FIELD = re.compile(r'^\s+(\w+):[^#]*#\s?(.*)$')
_MORE = re.compile(r'^\s+#\s*(.*)$')


def _field_comments(cls):
  comments, current = {}, None
  for line in inspect.getsource(cls).splitlines()[1:]:
    field, more = _FIELD.match(line), _MORE.match(line)
    if field:
      current = field.group(1)
      comments[current] = [field.group(2).strip()]
    elif more and current:
      comments[current].append(more.group(1).strip())
    else:
      current = None
  return {k: ' '.join(v) for k, v in comments.items()}


def _document_fields(app, what, name, obj, options, lines):
  del app, obj, options
  if what not in ('attribute', 'property') or not lines or not lines[
      0].startswith('Alias for field number'):
    return
  module_name, cls_name, field = name.rsplit('.', 2)
  cls = getattr(sys.modules[module_name], cls_name)
  text = _field_comments(cls).get(field)
  if text:  # a literal |x| would be a reST substitution
    lines[:] = [text.replace('|', r'\|')]


# Annotations are the real objects (Optax's contrib battery checks
# `annotation is optax.ScalarOrSchedule`), which autodoc would print as their
# expanded unions; signatures name the aliases instead.
def _aliases():
  import optax  # pylint: disable=g-import-not-at-top
  from kinetix import _utils, masks  # pylint: disable=g-import-not-at-top
  return {'optax.ScalarOrSchedule': optax.ScalarOrSchedule,
          'KeyLike': _utils.KeyLike, 'MaskFn': masks.MaskFn}


def _alias_signature(app, what, name, obj, options, signature,
                     return_annotation):
  del app, what, name, obj, options
  from sphinx.util.typing import stringify_annotation  # pylint: disable=g-import-not-at-top
  for alias, value in _aliases().items():
    for mode in ('smart', 'fully-qualified-except-typing',
                 'fully-qualified'):
      text = stringify_annotation(value, mode)
      if signature:
        signature = signature.replace(text, alias)
      if return_annotation:
        return_annotation = return_annotation.replace(text, alias)
  return signature, return_annotation


def setup(app):
  app.connect('autodoc-process-docstring', _document_fields)
  app.connect('autodoc-process-signature', _alias_signature)
