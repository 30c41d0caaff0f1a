"""Condensation diagnostics: how similar are the neurons of a layer?

*Condensation* (Zhou et al., 2022) is the collapse of a layer's neurons onto a
few directions: their weight vectors become (anti-)parallel. KO's collisions
are meant to counteract it, and these functions measure it, with neurons laid
out exactly as the collisions see them (:mod:`kinetix.kinetic`): the neurons
on ``neuron_axis`` (default ``-1``, the output units of a Flax ``Dense`` or
``Conv`` kernel), every other axis flattened into the neuron's vector.

Everything here is pure ``jax.numpy``: jit-able, no host synchronisation, so
it can be logged from inside a training step or a ``lax.scan``.

>>> import jax.numpy as jnp
>>> from kinetix import metrics
>>> w = jnp.array([[1., 1., 0.], [0., 1., 1.]])  # (in=2, out=3): 3 neurons
>>> metrics.neuron_cosine(w).round(3)
Array([[1.   , 0.707, 0.   ],
       [0.707, 1.   , 0.707],
       [0.   , 0.707, 1.   ]], dtype=float32)

References:
  Zhou, Zhou, Luo, Zhang, Xu, `Towards Understanding the Condensation of
  Neural Networks at Initial Training <https://arxiv.org/abs/2105.11686>`_,
  NeurIPS 2022. Feng et al., `KO: Kinetics-inspired Neural Optimizer with
  PDE Simulation Approaches <https://arxiv.org/abs/2505.14777>`_, 2025
  (Sec. 4.1: "neuron similarity" is the largest off-diagonal ``|cos|``).
"""

from typing import Any

import jax
import jax.numpy as jnp

from kinetix import _neurons
from kinetix import _sharding
from kinetix import _utils
from kinetix import masks

__all__ = [
    'condensation',
    'correlation_rate',
    'neuron_cosine',
]

# Largest coefficient block (entries) held at once by `condensation` when no
# `block_size` is given: 4M float32 = 16 MiB. Layers with N² above it are
# processed in row blocks of `_BLOCK_ENTRIES // N` neurons.
_BLOCK_ENTRIES = 1 << 22

HIGHEST = jax.lax.Precision.HIGHEST


def _unit_rows(x: jax.Array) -> jax.Array:
  """Rows scaled to unit norm; a zero row stays zero (no NaN, no epsilon).

  Unlike ``x / max(|x|, eps)`` this is scale-invariant, so tiny weights (the
  ``N(0, 0.005²)`` initialisations of condensation studies) and huge ones are
  measured correctly: rows are rescaled by a power of two before squaring.
  """
  return _neurons.row_normalize(x)


def _as_neurons(w: Any, neuron_axis: int, layer_axes: tuple[int, ...],
                path: str) -> tuple[jax.Array, _neurons.Layout]:
  w = jnp.asarray(w)
  if not jnp.issubdtype(w.dtype, jnp.floating):
    raise TypeError(f'leaf {path!r} has dtype {w.dtype}; neuron similarities '
                    f'need floating-point weights (exclude it from the mask).')
  lay = _neurons.layout(tuple(w.shape), neuron_axis, layer_axes, path)
  return _neurons.to_neurons(w, lay, _utils.compute_dtype(w.dtype)), lay


def neuron_cosine(w: Any, neuron_axis: int = -1) -> jax.Array:
  r"""The ``N×N`` matrix of cosine similarities between a layer's neurons.

  With the layer viewed as neurons :math:`w_1, \dots, w_N \in \mathbb{R}^D`
  (``neuron_axis`` indexes them, the other axes are flattened into
  :math:`D`),

  .. math::

    C_{ij} = \frac{w_i \cdot w_j}{\lVert w_i \rVert\, \lVert w_j \rVert},

  with :math:`C_{ij} = 0` whenever :math:`w_i` or :math:`w_j` is zero (so the
  diagonal is 1 for non-zero neurons and 0 for zero ones; never NaN). The
  product runs at ``HIGHEST`` precision, in at least float32.

  This holds the whole ``N×N`` matrix (it is what heat maps show); for
  summary numbers of wide layers use :func:`condensation`, which never does.

  Args:
    w: a weight array with at least 2 dimensions, e.g. a Flax ``Dense``
      kernel ``(in, out)`` or ``Conv`` kernel ``(kh, kw, in, out)``.
    neuron_axis: the axis indexing neurons (default ``-1``: output units). Use
      ``0`` for PyTorch-style ``(out, in)`` weights.

  Returns:
    A float array of shape ``(N, N)``, symmetric, entries in ``[-1, 1]``.

  Raises:
    ValueError: ``w`` has fewer than 2 dimensions or ``neuron_axis`` is out of
      range.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kinetix import metrics
    >>> kernel = jnp.array([[1., -1., 0.], [0., 0., 0.]])  # neuron 2 is zero
    >>> metrics.neuron_cosine(kernel)
    Array([[ 1., -1.,  0.],
           [-1.,  1.,  0.],
           [ 0.,  0.,  0.]], dtype=float32)
  """
  x, _ = _as_neurons(w, _utils.static_int('neuron_axis', neuron_axis), (),
                     'w')
  u = _unit_rows(x[0])
  return jnp.matmul(u, u.T, precision=HIGHEST)


def _offdiag_stats(u: jax.Array, block_size: int | None):
  """``(max |C_ij|, Σ |C_ij|)`` over ``i != j`` for unit rows ``u`` (N, D)."""
  n = u.shape[0]
  if block_size is None:
    block_size = n if n * n <= _BLOCK_ENTRIES else max(1, _BLOCK_ENTRIES // n)
  block_size = min(block_size, n)
  cols = jnp.arange(n, dtype=jnp.int32)
  if block_size >= n:
    c = jnp.abs(jnp.matmul(u, u.T, precision=HIGHEST))
    c = jnp.where(cols[:, None] != cols[None, :], c, 0.0)
    return jnp.max(c), jnp.sum(c)

  # Row blocks: only a (block_size, N) slice of C is ever live.
  nb, padded = _neurons.row_blocks(n, block_size)
  u_p = _neurons.pad_rows(u, padded)

  def block(rows):
    c = jnp.matmul(jax.lax.dynamic_slice_in_dim(u_p, rows[0], block_size),
                   u.T, precision=HIGHEST)
    keep = (rows < n)[:, None] & (rows[:, None] != cols[None, :])
    c = jnp.where(keep, jnp.abs(c), 0.0)
    return jnp.max(c), jnp.sum(c)

  maxes, sums = _neurons.map_row_blocks(block, n, block_size)
  del nb
  return jnp.max(maxes), jnp.sum(sums)


def condensation(
    params: Any,
    mask: Any = None,
    *,
    neuron_axis: int = -1,
    layer_axes: int | tuple[int, ...] = (),
    block_size: int | None = None,
) -> dict[str, dict[str, jax.Array]]:
  r"""Per-leaf condensation: the largest and the mean off-diagonal ``|cos|``.

  For each selected leaf, viewed as neurons :math:`w_1, \dots, w_N` exactly
  as the collisions see them, with :math:`C` as in :func:`neuron_cosine`,

  .. math::

    \text{max\_abs\_cos} = \max_{i \neq j} |C_{ij}|, \qquad
    \text{mean\_abs\_cos} = \frac{1}{N(N-1)} \sum_{i \neq j} |C_{ij}|.

  ``max_abs_cos`` is the KO paper's "neuron similarity" (1 as soon as two
  neurons are parallel or anti-parallel); ``mean_abs_cos`` measures how much
  of the layer has condensed, and equals the ``mean_abs_cos`` that the
  collision states record. For reference, independent random directions in
  :math:`\mathbb{R}^D` give an expected ``mean_abs_cos`` of
  :math:`\Gamma(\tfrac D2) / (\sqrt{\pi}\, \Gamma(\tfrac{D+1}2))
  \approx \sqrt{2/(\pi D)}` (0.375 for ``D = 5``), while their
  ``max_abs_cos`` tends to 1 as ``N`` grows when ``D`` is small: in low
  dimension the max saturates and the mean is the informative number.

  Cost :math:`N^2 D` multiply-adds per leaf. Layers with :math:`N^2` above
  4M entries are processed in row blocks (``lax.map``), so no ``N×N`` matrix
  is ever held: a 50,257×768 ``lm_head`` needs ``O(N·D + block·N)`` memory.
  Zero neurons contribute zeros, never NaN. A leaf with ``N = 1`` gives 0.

  Args:
    params: a pytree of arrays (a params dict, Linen ``variables``, an NNX
      ``nnx.State``), or a single array.
    mask: which leaves to measure, as for the collisions: ``None`` (every
      leaf with ``ndim >= 2``), a pytree of bools (or a prefix of params), or
      a callable of params such as :func:`kinetix.masks.by_path`.
    neuron_axis: the axis indexing neurons (static int, default ``-1``).
    layer_axes: axes of independent stacked layers (``nn.scan``/``vmap``):
      similarities are only taken within a layer; the leaf reports the max
      over its layers and the mean over all their pairs.
    block_size: rows per block; ``None`` picks one automatically (blocks only
      when :math:`N^2 > 4\,\mathrm{M}`).

  Returns:
    ``{path: {'max_abs_cos': f32[], 'mean_abs_cos': f32[]}}`` with ``path``
    the '/'-joined key path of each selected leaf (``''`` for a bare array),
    in tree order. A pytree of scalars: use ``jax.device_get`` to log it.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from kinetix import masks, metrics
    >>> params = {'hidden': {'kernel': jnp.array([[1., 2., -1.], [0., 0., 0.]]),
    ...                      'bias': jnp.zeros(3)},
    ...           'head': {'kernel': jnp.eye(3)}}
    >>> stats = jax.jit(metrics.condensation)(params)
    >>> sorted(stats)
    ['head/kernel', 'hidden/kernel']
    >>> # neurons 0 and 2 are antiparallel
    >>> float(stats['hidden/kernel']['max_abs_cos'])
    1.0
    >>> float(stats['hidden/kernel']['mean_abs_cos'])  # all on one line
    1.0
    >>> float(stats['head/kernel']['mean_abs_cos'])  # orthogonal neurons
    0.0
    >>> list(metrics.condensation(params, mask=masks.by_path('head/*')))
    ['head/kernel']
  """
  n_ax, l_axes, block_size = _check_axes(neuron_axis, layer_axes, block_size)
  out = {}
  for _, path, leaf, lay in _selected('condensation', params, mask, n_ax,
                                   l_axes):
    n = lay.neurons
    if n < 2 or lay.layers * lay.features == 0:     # no pair of neurons
      zero = jnp.zeros([], jnp.float32)
      out[path] = {'max_abs_cos': zero, 'mean_abs_cos': zero}
      continue

    def leaf_stats(leaf, path=path):
      maxes, mean = _abs_cos_stats(leaf, n_ax, l_axes, path, block_size)
      return jnp.max(maxes).astype(jnp.float32), mean.astype(jnp.float32)

    # Under Explicit mesh axes the neuron layout runs with Auto axes.
    max_abs, mean_abs = _sharding.call_with_auto_axes(
        leaf_stats, (None, None), leaf)
    out[path] = {'max_abs_cos': max_abs, 'mean_abs_cos': mean_abs}
  return out


def _check_axes(neuron_axis: Any, layer_axes: Any, block_size: Any):
  n_ax = _utils.static_int('neuron_axis', neuron_axis)
  l_axes = _neurons.normalize_layer_axes(layer_axes)
  if block_size is not None:
    block_size = _utils.static_int('block_size', block_size)
    if block_size < 1:
      raise ValueError(f'block_size must be a positive int or None; got '
                       f'{block_size}')
  return n_ax, l_axes, block_size


def _selected(name: str, params: Any, mask: Any, n_ax: int,
              l_axes: tuple[int, ...]):
  """``(index, path, leaf, layout)`` of each selected leaf, in tree order."""
  flat, treedef = jax.tree_util.tree_flatten_with_path(params)
  paths = [_utils.path_to_str(p) for p, _ in flat]
  flags = masks._resolve(mask, params, treedef, paths, name)  # pylint: disable=protected-access
  for i, ((_, leaf), path, on) in enumerate(
      zip(flat, paths, flags, strict=True)):
    if not on:
      continue
    lay = _neurons.layout(tuple(jnp.shape(leaf)), n_ax, l_axes, path)
    _sharding.warn_if_device_local(
        name, [(path, leaf)],
        "the cosines are those of this block's neurons and features",
        stacklevel=4)
    yield i, path, leaf, lay


def _abs_cos_stats(leaf: Any, n_ax: int, l_axes: tuple[int, ...], path: str,
                   block_size: int | None):
  """Per-layer max off-diagonal ``|cos|`` and the leaf's mean ``|cos|``."""
  x, lay = _as_neurons(leaf, n_ax, l_axes, path)
  n = lay.neurons
  maxes, sums = jax.lax.map(
      lambda layer: _offdiag_stats(_unit_rows(layer), block_size), x)
  # The pair count as a Python float: N(N-1) overflows int32 at N≈46k.
  return maxes, jnp.sum(sums) / float(lay.layers * n * (n - 1))


def correlation_rate(
    params: Any,
    updates: Any,
    mask: Any = None,
    *,
    neuron_axis: int = -1,
    layer_axes: int | tuple[int, ...] = (),
    block_size: int | None = None,
) -> dict[str, jax.Array]:
  r"""How fast an update changes each layer's mean ``|cos|``, per unit step.

  For each selected leaf, with ``mean_abs_cos`` as in :func:`condensation`,

  .. math::

    \text{rate} = \frac{d}{d\eta}\Big|_{\eta = 0}
      \text{mean\_abs\_cos}(w + \eta\, u),

  where :math:`u` is the leaf of ``updates`` in Optax's sign convention
  (``optax.apply_updates`` adds it). Negative: the update decorrelates the
  layer's neurons. Theorem 3.3 of the KO paper says that, to first order in
  the learning rate, both collisions make this more negative: compare
  ``correlation_rate(params, collided)`` with
  ``correlation_rate(params, plain)``, the base optimizer's update with and
  without the collision, to measure the collision's own effect.

  Computed with ``jax.jvp`` through the same (blocked) computation as
  :func:`condensation`: ``O(N·D + block·N)`` memory, no ``N×N×D`` array.
  Zero neurons contribute 0 (their cosines are 0 and stay defined as such),
  never NaN.

  Args:
    params: a pytree of arrays (or one array): the point ``w``.
    updates: a pytree with the structure of ``params``: the direction ``u``.
    mask: which leaves (see :func:`condensation`).
    neuron_axis: the axis indexing neurons (static int, default ``-1``).
    layer_axes: axes of independent stacked layers.
    block_size: rows per block (see :func:`condensation`).

  Returns:
    ``{path: f32[]}``, the paths and order of :func:`condensation`.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kinetix import metrics
    >>> w = jnp.array([[1., 1.], [0., 0.1]])        # two similar neurons
    >>> apart = jnp.array([[0., 0.], [-1., 1.]])    # turns them apart
    >>> float(metrics.correlation_rate(w, apart)['']) < 0
    True
  """
  n_ax, l_axes, block_size = _check_axes(neuron_axis, layer_axes, block_size)
  flat_u = _utils.flatten_like(
      jax.tree_util.tree_structure(params), updates,
      'correlation_rate: updates do not have the structure of params')
  out = {}
  for i, path, leaf, lay in _selected('correlation_rate', params, mask, n_ax,
                                      l_axes):
    u = flat_u[i]
    if tuple(jnp.shape(u)) != tuple(jnp.shape(leaf)):
      raise ValueError(
          f'correlation_rate: update and param of leaf {path!r} have '
          f'different shapes {tuple(jnp.shape(u))} and '
          f'{tuple(jnp.shape(leaf))}.')
    if lay.neurons < 2 or lay.layers * lay.features == 0:
      out[path] = jnp.zeros([], jnp.float32)
      continue

    def rate(leaf, u, path=path):
      w = jnp.asarray(leaf)
      cdt = _utils.compute_dtype(w.dtype)
      _, dm = jax.jvp(
          lambda x: _abs_cos_stats(x, n_ax, l_axes, path, block_size)[1],
          (w.astype(cdt),), (jnp.asarray(u).astype(cdt),))
      return dm.astype(jnp.float32)

    out[path] = _sharding.call_with_auto_axes(rate, None, leaf, u)
  return out
