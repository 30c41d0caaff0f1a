"""Sphinx configuration of the kinetix API site (``docs/``).

Build: ``pip install -e ".[docs]" && sphinx-build -W -b html docs
docs/_build/html``; the site is then ``docs/_build/html/index.html``.
"""

import pathlib
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
]

# The notebooks are rendered from their stored form (no outputs), never run.
nb_execution_mode = 'off'
myst_enable_extensions = ['dollarmath', 'colon_fence']
myst_heading_anchors = 3
source_suffix = {'.rst': 'restructuredtext', '.md': 'myst-nb',
                 '.ipynb': 'myst-nb'}

autosummary_generate = False
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
exclude_patterns = ['_build', 'figures', 'pypi.md', 'Thumbs.db', '.DS_Store']
suppress_warnings = ['myst.header']


# The stored notebooks (notebooks/*.ipynb, kept without outputs) are copied
# next to the page that lists them; docs/notebooks/ is not tracked.
_NB_DST = ROOT / 'docs' / 'notebooks'
_NB_DST.mkdir(exist_ok=True)
for _nb in sorted((ROOT / 'notebooks').glob('*.ipynb')):
  shutil.copyfile(_nb, _NB_DST / _nb.name)
