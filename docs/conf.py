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
# Type aliases by name, not expanded into their unions (the modules use
# `from __future__ import annotations`, so annotations reach Sphinx as text).
autodoc_type_aliases = {
    'optax.ScalarOrSchedule': 'optax.ScalarOrSchedule',
    'optax.GradientTransformation': 'optax.GradientTransformation',
    'optax.GradientTransformationExtraArgs':
        'optax.GradientTransformationExtraArgs',
    '_utils.KeyLike': 'KeyLike',
    'MaskFn': 'MaskFn',
    'jax.Array': 'jax.Array',
}
autodoc_default_options = {'members': True, 'undoc-members': False,
                           'show-inheritance': False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

html_theme = 'sphinx_book_theme'
html_title = f'kinetix {release}'
html_theme_options = {'show_toc_level': 2}
exclude_patterns = ['_build', 'figures', 'pypi.md', 'Thumbs.db', '.DS_Store']
suppress_warnings = ['myst.header']


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


def setup(app):
  app.connect('autodoc-process-docstring', _document_fields)
