"""Figures for condensation studies: similarity heat maps and training curves.

Needs matplotlib (``pip install "kinetix-optax[examples]"``); it is not
imported by ``import kinetix``. Figures are built with
:class:`matplotlib.figure.Figure` directly, not ``pyplot``, so nothing here
depends on (or changes) the active backend: save them with
``fig.savefig(...)``; in Jupyter they display as the value of a cell.

>>> import numpy as np
>>> from kinetix import plotting
>>> cos = np.array([[1., -1.], [-1., 1.]])
>>> ax = plotting.similarity_heatmap(cos, order=None, title='two neurons')
>>> ax.get_title()
'two neurons'
"""

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

try:
  import matplotlib
  from matplotlib import colors as mcolors
  from matplotlib.figure import Figure
except ImportError as e:  # pragma: no cover - exercised only without the extra
  raise ImportError(
      'kinetix.plotting needs matplotlib: pip install '
      '"kinetix-optax[examples]" (or pip install matplotlib).') from e

__all__ = [
  'SIMILARITY_CMAP',
  'mean_std_bars',
  'similarity_grid',
  'similarity_heatmap',
  'similarity_order',
  'training_curves',
]

#: The KO paper's colours: navy for opposite directions (cos = -1), beige
#: for the same direction (cos = +1), white for orthogonal neurons.
SIMILARITY_CMAP = mcolors.LinearSegmentedColormap.from_list(
    'kinetix_similarity', ['#0b1f4b', '#3b5b92', '#f7f7f2', '#e9cf9a',
                           '#c9954a'])


def _as_numpy(x: Any) -> np.ndarray:
  return np.asarray(x, dtype=np.float64)


def similarity_order(cos: Any) -> np.ndarray:
  r"""A neuron order that puts condensed neurons next to each other.

  Spectral ordering: each neuron :math:`i` is placed at the angle
  :math:`\operatorname{atan2}(\sqrt{\lambda_2} v_{2i}, \sqrt{\lambda_1}
  v_{1i})` of its coordinates on the two leading eigenvectors of the
  cosine matrix, and neurons are sorted by it. Neurons on one direction share
  coordinates (one block), and neurons on the opposite direction sit half a
  turn away (a separate block), as in the paper's figures. Deterministic;
  reordering changes the picture, never ``max``/``mean`` ``|cos|``.

  Args:
    cos: an ``N×N`` cosine matrix (e.g. :func:`kinetix.metrics.neuron_cosine`).

  Returns:
    An int array, a permutation of ``range(N)``.

  Examples:
    >>> import numpy as np
    >>> from kinetix import plotting
    >>> d = np.array([[1., 0.], [0., 1.], [1., 0.], [0., 1.]]).T  # 4 neurons
    >>> order = plotting.similarity_order(d.T @ d)
    >>> sorted(order[:2].tolist()) in ([0, 2], [1, 3])
    True
  """
  c = _as_numpy(cos)
  n = c.shape[0]
  if c.shape != (n, n):
    raise ValueError(f'cos must be a square matrix; got shape {c.shape}')
  if n < 3:
    return np.arange(n)
  vals, vecs = np.linalg.eigh((c + c.T) / 2)
  top = np.argsort(vals)[::-1][:2]
  coords = vecs[:, top] * np.sqrt(np.maximum(vals[top], 0.0))
  angle = np.arctan2(coords[:, 1], coords[:, 0])
  angle = np.round(angle, 6)  # ties (identical neurons) keep index order
  return np.lexsort((np.arange(n), angle))


def similarity_heatmap(cos: Any, ax: Any = None, *, order: Any = 'spectral',
                       title: str | None = None, colorbar: bool = True,
                       cmap: Any = None, ticks: bool = True) -> Any:
  r"""One neuron-similarity heat map, as in the KO paper's Fig. 2 and 4.

  Pixel :math:`(i, j)` is :math:`\cos(w_i, w_j)` on a fixed ``[-1, 1]``
  scale: beige blocks are neurons with the same direction, navy blocks
  opposite directions.

  Args:
    cos: an ``N×N`` cosine matrix (NumPy or JAX).
    ax: a matplotlib ``Axes`` to draw into; ``None`` makes a new figure.
    order: ``'spectral'`` (group condensed neurons, see
      :func:`similarity_order`), ``None`` (keep the neuron index order) or an
      explicit permutation.
    title: the axes title.
    colorbar: draw a colour bar next to the axes.
    cmap: a colormap (default :data:`SIMILARITY_CMAP`).
    ticks: label the axes with neuron indices.

  Returns:
    The ``Axes`` (``ax.figure`` is its figure).
  """
  c = _as_numpy(cos)
  if order is None:
    perm = np.arange(c.shape[0])
  elif isinstance(order, str):
    if order != 'spectral':
      raise ValueError(f"order must be 'spectral', None or a permutation; "
                       f'got {order!r}')
    perm = similarity_order(c)
  else:
    perm = np.asarray(order, dtype=int)
  if ax is None:
    fig = Figure(figsize=(3.6, 3.0), layout='constrained')
    ax = fig.add_subplot()
  image = ax.imshow(c[np.ix_(perm, perm)], vmin=-1.0, vmax=1.0,
                    cmap=cmap or SIMILARITY_CMAP, interpolation='nearest')
  if title is not None:
    ax.set_title(title, fontsize=9)
  if ticks:
    ax.set_xlabel('neuron', fontsize=8)
    ax.set_ylabel('neuron', fontsize=8)
    ax.tick_params(labelsize=7)
  else:
    ax.set_xticks([])
    ax.set_yticks([])
  if colorbar:
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04,
                       ticks=[-1, 0, 1]).ax.tick_params(labelsize=7)
  return ax


def similarity_grid(matrices: Sequence[Sequence[Any]],
                    row_labels: Sequence[str], col_labels: Sequence[str], *,
                    title: str | None = None, order: Any = 'spectral',
                    cell_size: float = 2.2,
                    annotations: Sequence[Sequence[str]] | None = None) -> Any:
  """A grid of heat maps: rows (e.g. optimizers) × columns (e.g. activations).

  Args:
    matrices: ``matrices[r][c]`` is the ``N×N`` cosine matrix of row ``r``,
      column ``c``.
    row_labels: one label per row (drawn as the y label of the first column).
    col_labels: one label per column (drawn as titles of the first row).
    title: the figure's suptitle (state the settings here).
    order: as in :func:`similarity_heatmap`, applied to each matrix.
    cell_size: inches per heat map.
    annotations: optional ``annotations[r][c]`` text drawn under each map
      (e.g. ``"max 0.99 / mean 0.71"``).

  Returns:
    The ``Figure``, with one shared colour bar.
  """
  rows, cols = len(row_labels), len(col_labels)
  if not rows or not cols:
    raise ValueError('similarity_grid needs at least one row and one column '
                     'label')
  if len(matrices) != rows or any(len(r) != cols for r in matrices):
    raise ValueError(f'matrices must be {rows} rows × {cols} columns to match '
                     f'the labels')
  fig = Figure(figsize=(cell_size * cols + 0.9, cell_size * rows + 0.5 +
                        (0.35 if title else 0.0)), layout='constrained')
  axes = np.atleast_2d(fig.subplots(rows, cols, squeeze=False))
  image: Any = None
  for r in range(rows):
    for c in range(cols):
      ax = axes[r, c]
      similarity_heatmap(matrices[r][c], ax, order=order, colorbar=False,
                         ticks=False,
                         title=col_labels[c] if r == 0 else None)
      image = ax.images[-1]
      if c == 0:
        ax.set_ylabel(row_labels[r], fontsize=9)
      if annotations is not None:
        ax.set_xlabel(annotations[r][c], fontsize=7)
  fig.colorbar(image, ax=axes, shrink=0.6, ticks=[-1, 0, 1],
               label='cos(w_i, w_j)')
  if title:
    fig.suptitle(title, fontsize=9)
  return fig


def training_curves(curves: Mapping[str, Any], ax: Any = None, *,
                    x: Any = None, xlabel: str = 'step',
                    ylabel: str | None = None, title: str | None = None,
                    logy: bool = False, band: bool = True) -> Any:
  """Curves of a logged quantity, mean ± std over seeds.

  Args:
    curves: ``{label: values}`` with ``values`` of shape ``(steps,)`` or
      ``(seeds, steps)``; the mean over seeds is drawn, with a ±1 std band.
    ax: an ``Axes`` to draw into; ``None`` makes a new figure.
    x: the x values (default ``0, 1, ...``), shared by all curves.
    xlabel: the x axis label.
    ylabel: the y axis label (none by default).
    title: the title of the ``Axes`` (none by default).
    logy: logarithmic y axis.
    band: draw the ±1 std band when there are several seeds.

  Returns:
    The ``Axes``.

  Examples:
    >>> import numpy as np
    >>> from kinetix import plotting
    >>> ax = plotting.training_curves({'adam': np.ones((3, 10))},
    ...                               ylabel='loss')
    >>> [line.get_label() for line in ax.get_lines()]
    ['adam']
  """
  if ax is None:
    fig = Figure(figsize=(4.2, 3.0), layout='constrained')
    ax = fig.add_subplot()
  for label, values in curves.items():
    v = np.atleast_2d(_as_numpy(values))
    steps = np.arange(v.shape[1]) if x is None else _as_numpy(x)
    mean = v.mean(axis=0)
    (line,) = ax.plot(steps, mean, label=label, lw=1.5)
    if band and v.shape[0] > 1:
      std = v.std(axis=0)
      ax.fill_between(steps, mean - std, mean + std, color=line.get_color(),
                      alpha=0.2, lw=0)
  if logy:
    ax.set_yscale('log')
  ax.set_xlabel(xlabel, fontsize=8)
  if ylabel:
    ax.set_ylabel(ylabel, fontsize=8)
  if title:
    ax.set_title(title, fontsize=9)
  ax.tick_params(labelsize=7)
  ax.grid(alpha=0.3)
  if curves:
    ax.legend(fontsize=7)
  return ax


def mean_std_bars(groups: Mapping[str, Mapping[str, Any]], ax: Any = None, *,
                  ylabel: str | None = None, title: str | None = None,
                  ylim: tuple[float, float] | None = None,
                  fmt: str = '{:.3f}') -> Any:
  """Grouped bars of mean ± std over seeds, e.g. accuracy per optimizer.

  Args:
    groups: ``{group: {series: values}}``; every group gets one bar per
      series (bars of one series share a colour), ``values`` are per-seed
      numbers.
    ax: an ``Axes``; ``None`` makes a new figure.
    ylabel: the y axis label (none by default).
    title: the title of the ``Axes`` (none by default).
    ylim: the y axis limits (matplotlib's by default).
    fmt: format of the mean printed above each bar (``None``: no labels).

  Returns:
    The ``Axes``.
  """
  if ax is None:
    fig = Figure(figsize=(5.0, 3.0), layout='constrained')
    ax = fig.add_subplot()
  group_names = list(groups)
  series = list(dict.fromkeys(s for g in groups.values() for s in g))
  width = 0.8 / max(len(series), 1)
  prop = matplotlib.rcParams['axes.prop_cycle'].by_key().get('color', [None])
  for k, name in enumerate(series):
    xs, means, stds = [], [], []
    for i, g in enumerate(group_names):
      if name in groups[g]:
        v = _as_numpy(groups[g][name]).ravel()
        xs.append(i + (k - (len(series) - 1) / 2) * width)
        means.append(v.mean())
        stds.append(v.std())
    bars = ax.bar(xs, means, width * 0.92, yerr=stds, capsize=2, label=name,
                  color=prop[k % len(prop)], error_kw={'lw': 0.8})
    if fmt:
      ax.bar_label(bars, labels=[fmt.format(m) for m in means], fontsize=6,
                   padding=2)
  ax.set_xticks(range(len(group_names)), group_names, fontsize=8)
  if ylabel:
    ax.set_ylabel(ylabel, fontsize=8)
  if title:
    ax.set_title(title, fontsize=9)
  if ylim:
    ax.set_ylim(*ylim)
  ax.tick_params(labelsize=7)
  ax.grid(axis='y', alpha=0.3)
  ax.legend(fontsize=7)
  return ax
