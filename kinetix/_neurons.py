"""Leaf ⇄ neuron views and the geometry of neurons for KO.

A parameter leaf is seen as ``L`` independent layers of ``N`` neurons, each a
``D``-vector: ``layer_axes`` (stacked layers from ``nn.scan``/``vmap``) come
first, then ``neuron_axis``, and every remaining axis is flattened into the
neuron's feature vector.  For a Flax ``Dense`` kernel ``(in, out)`` the
neurons are the ``out`` units (``neuron_axis=-1``); for a ``Conv`` kernel
``(kh, kw, in, out)`` the output channels, each with ``kh·kw·in`` features.
"""

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from kinetix import _rng, _utils

HIGHEST = jax.lax.Precision.HIGHEST


# --------------------------------------------------------------------------
# Layouts


class Layout(NamedTuple):
  """How one leaf maps to ``L`` layers of ``N`` neurons with ``D`` features.

  The axes are dimension numbers on the leaf as it is (no transpose):
  ``layer_axes`` are batch dimensions of the Gram products, ``feature_axes``
  their contracting dimensions and ``neuron_axis`` the free one, as Optax's
  Muon describes its matrices with ``MuonDimensionNumbers``.
  """
  perm: tuple[int, ...]          # layer axes, neuron axis, feature axes
  layers: int                    # L
  neurons: int                   # N
  features: int                  # D
  neuron_axis: int = 0           # normalised (non-negative)
  layer_axes: tuple[int, ...] = ()     # normalised, in the given order
  feature_axes: tuple[int, ...] = ()   # normalised, ascending


def _normalize_axis(axis: int, ndim: int, name: str, path: str,
                    shape: tuple[int, ...]) -> int:
  if not -ndim <= axis < ndim:
    raise ValueError(
        f'{name}={axis} is out of range for leaf {path!r} with shape {shape} '
        f'(ndim {ndim}); allowed values are {-ndim}..{ndim - 1}.')
  return axis % ndim


def normalize_layer_axes(layer_axes: Any) -> tuple[int, ...]:
  """``None``/int/sequence of ints → tuple of ints (checked at construction)."""
  if layer_axes is None:
    return ()
  if isinstance(layer_axes, (int, np.integer)) and not isinstance(
      layer_axes, bool):
    return (int(layer_axes),)
  if isinstance(layer_axes, Sequence) and not isinstance(layer_axes, str):
    return tuple(_utils.static_int('layer_axes', a) for a in layer_axes)
  raise TypeError(
      f'layer_axes must be an int, a sequence of ints or None; got '
      f'{layer_axes!r}')


def layout(shape: tuple[int, ...], neuron_axis: int,
           layer_axes: tuple[int, ...], path: str) -> Layout:
  """Validates the axes for one leaf and returns its ``(L, N, D)`` layout."""
  ndim = len(shape)
  n_ax = _normalize_axis(neuron_axis, ndim, 'neuron_axis', path, shape)
  l_axes = tuple(
      _normalize_axis(a, ndim, 'layer_axes', path, shape) for a in layer_axes)
  if len(set(l_axes)) != len(l_axes):
    raise ValueError(f'layer_axes={layer_axes} repeats an axis for leaf '
                     f'{path!r} with shape {shape}.')
  if n_ax in l_axes:
    raise ValueError(
        f'neuron_axis={neuron_axis} is also listed in layer_axes={layer_axes} '
        f'for leaf {path!r} with shape {shape}; they must differ.')
  feat = tuple(a for a in range(ndim) if a != n_ax and a not in l_axes)
  if not feat:
    raise ValueError(
        f'leaf {path!r} with shape {shape} has no feature axis left after '
        f'neuron_axis={neuron_axis} and layer_axes={layer_axes}: a collision '
        f'needs neurons that are vectors. Select leaves with ndim >= 2 (the '
        f'default mask) or exclude this one from the mask.')
  layers = math.prod(shape[a] for a in l_axes)
  features = math.prod(shape[a] for a in feat)
  return Layout((*l_axes, n_ax, *feat), layers, shape[n_ax], features,
                n_ax, l_axes, feat)


def to_neurons(x: jax.Array, lay: Layout, dtype: Any) -> jax.Array:
  """``x`` as an ``(L, N, D)`` array of ``dtype``."""
  return jnp.transpose(x, lay.perm).reshape(
      lay.layers, lay.neurons, lay.features).astype(dtype)


def from_neurons(y: jax.Array, lay: Layout, shape: tuple[int, ...],
                 dtype: Any) -> jax.Array:
  """Inverse of :func:`to_neurons`, cast back to the leaf's ``dtype``."""
  permuted_shape = tuple(shape[a] for a in lay.perm)
  inverse = tuple(np.argsort(lay.perm))
  return jnp.transpose(y.reshape(permuted_shape), inverse).astype(dtype)


# --------------------------------------------------------------------------
# Scale-safe norms


def pow2_floor(m: jax.Array) -> jax.Array:
  """``2^floor(log2 m)`` for positive finite ``m``; 1 elsewhere.

  Dividing by a power of two is exact, so rescaling by it changes no result
  bit while keeping squares of huge (> 1e19) or tiny (< 1e-19) float32
  values from overflowing or underflowing.
  """
  _, e = jnp.frexp(m)
  s = jnp.ldexp(jnp.ones_like(m), e - 1)
  return jax.lax.stop_gradient(
      jnp.where((m > 0) & jnp.isfinite(m), s, jnp.ones_like(m)))


def max_abs_scale(x: jax.Array, axis: Any = None) -> jax.Array:
  """:func:`pow2_floor` of ``max|x|`` over ``axis`` (kept as size-1 axes).

  A scalar for ``axis=None``.
  """
  return pow2_floor(jnp.max(jnp.abs(x), axis=axis,
                            keepdims=axis is not None))


def safe_norm(x: jax.Array, axis: Any = -1, keepdims: bool = False):
  """``|x|`` over ``axis`` with a finite gradient at 0 (double ``where``).

  ``x`` must already be scaled to O(1) (e.g. by :func:`max_abs_scale`).
  """
  return _utils.safe_sqrt(jnp.sum(x * x, axis=axis, keepdims=keepdims))


# --------------------------------------------------------------------------
# The leaf's own layout: dimension numbers instead of transposes


def _unit(x: jax.Array, axis: Any) -> jax.Array:
  """``x`` divided by its norm over ``axis``; zero vectors stay 0.

  First divided by the power of two below the max-abs over ``axis``, so the
  result does not depend on the overall scale (no over/underflow of the
  squares) and a zero vector gives 0 with finite gradients, never a NaN.
  """
  y = x / max_abs_scale(x, axis)
  n = safe_norm(y, axis, keepdims=True)
  return y / jnp.where(n > 0, n, jnp.ones_like(n))


def scaled_rows(x: jax.Array, lay: Layout) -> tuple[jax.Array, jax.Array]:
  """``(x / s, s)``: each neuron of ``x`` over a power of two ``s``.

  ``s`` (leaf layout, size-1 feature axes) is the power of two below the
  neuron's max-abs (:func:`max_abs_scale`), so each scaled neuron has its
  max-abs in ``[1, 2)`` (or is 0): dividing is exact, and the Gram matrix of
  the scaled neurons neither overflows nor underflows, whatever the scale of
  ``x``. Their cosines are :func:`cosines` of that Gram matrix: one pass
  over the leaf fewer than normalising the neurons before the product.
  """
  s = max_abs_scale(x, lay.feature_axes)
  return x / s, s


def row_values(v: jax.Array, lay: Layout) -> jax.Array:
  """A per-neuron array in the leaf layout as ``(*layer dims, N)``.

  ``v`` has size-1 feature axes (e.g. a ``keepdims`` reduction over them);
  the result is ordered like the rows of :func:`gram`.
  """
  order = (*lay.layer_axes, lay.neuron_axis, *lay.feature_axes)
  t = jnp.transpose(v, order)
  return t.reshape(t.shape[:len(lay.layer_axes) + 1])


def inverse_norms(sq: jax.Array) -> jax.Array:
  """``1/sqrt(sq)`` where ``sq > 0``, else 0 (finite gradients at 0)."""
  pos = sq > 0
  safe = jnp.where(pos, sq, jnp.ones_like(sq))
  return jnp.where(pos, 1.0 / jnp.sqrt(safe), jnp.zeros_like(sq))


def cosines(g: jax.Array, inv_rows: jax.Array,
            inv_cols: jax.Array) -> jax.Array:
  """Cosines from a Gram matrix ``(..., R, C)`` and inverse neuron norms.

  A zero neuron (inverse norm 0) has cosine 0 with every neuron.
  """
  return g * (inv_rows[..., :, None] * inv_cols[..., None, :])


def gram(a: jax.Array, b: jax.Array, lay: Layout,
         precision: Any = None) -> jax.Array:
  """``a_i · b_j`` over the feature axes, batched over the layer axes.

  ``a`` and ``b`` are in the leaf layout (``a`` may hold a slice of the
  neurons). Returns ``(*layer dims, N_a, N_b)``: one ``dot_general``, no
  transpose of either operand.
  """
  dims = ((lay.feature_axes, lay.feature_axes),
          (lay.layer_axes, lay.layer_axes))
  return jax.lax.dot_general(a, b, dims, precision=precision)


def mix_order(lay: Layout, ndim: int) -> tuple[tuple[int, ...], bool]:
  """The axis order :func:`mix` produces and whether it is ``s`` first.

  ``S·g`` gives ``(layers, neurons, features)`` and ``g·Sᵀ`` gives
  ``(layers, features, neurons)``: pick the one that is already the leaf's
  order, so that no transpose is needed (Flax ``(in, out)`` kernels and
  PyTorch-style ``(out, in)`` matrices both qualify).
  """
  s_first = (*lay.layer_axes, lay.neuron_axis, *lay.feature_axes)
  g_first = lay.layer_axes + lay.feature_axes + (lay.neuron_axis,)
  if s_first == tuple(range(ndim)):
    return s_first, True
  return g_first, False


def mix(s: jax.Array, g: jax.Array, lay: Layout) -> jax.Array:
  """``Σ_j s_ij g_j`` for ``s`` of shape ``(*layer dims, N_i, N)``.

  Returned in :func:`mix_order` (the leaf's order whenever possible; see
  :func:`to_leaf_order`).
  """
  nl = len(lay.layer_axes)
  batch_s = tuple(range(nl))
  if mix_order(lay, g.ndim)[1]:
    dims = (((s.ndim - 1,), (lay.neuron_axis,)), (batch_s, lay.layer_axes))
    return jax.lax.dot_general(s, g, dims)
  dims = (((lay.neuron_axis,), (s.ndim - 1,)), (lay.layer_axes, batch_s))
  return jax.lax.dot_general(g, s, dims)


def to_leaf_order(y: jax.Array, lay: Layout) -> jax.Array:
  """Moves an array in :func:`mix_order` back to the leaf's axis order."""
  order, _ = mix_order(lay, y.ndim)
  if order == tuple(range(y.ndim)):
    return y
  return jnp.transpose(y, tuple(np.argsort(order)))


def matrix_view(lay: Layout, shape: tuple[int, ...]):
  """A 3-D view of a leaf, one 2-D matrix per layer: ``(axis, to, back)``.

  ``axis`` is where the neurons lie in each layer's matrix: ``0`` for an
  ``(L, N, D)`` view, ``1`` for ``(L, D, N)``. A leaf stored in either order
  (layer axes first; a Flax ``(in, out)`` or ``(kh, kw, in, out)`` kernel is
  ``(D, N)``, a PyTorch-style ``(out, in)`` matrix ``(N, D)``) gets a free
  reshape; any other order is transposed to ``(L, N, D)`` and back.
  """
  ndim = len(shape)
  identity = tuple(range(ndim))
  if lay.perm == identity:
    view = (lay.layers, lay.neurons, lay.features)
    return (0, lambda x: x.reshape(view), lambda y: y.reshape(shape))
  if lay.layer_axes + lay.feature_axes + (lay.neuron_axis,) == identity:
    view = (lay.layers, lay.features, lay.neurons)
    return (1, lambda x: x.reshape(view), lambda y: y.reshape(shape))
  return (0, lambda x: to_neurons(x, lay, x.dtype),
          lambda y: from_neurons(y, lay, shape, y.dtype))


# --------------------------------------------------------------------------
# Geometry of (N, D) rows, one row block at a time


class Centred(NamedTuple):
  """Rows of an ``(N, D)`` layer about their mean, for pair distances.

  Distances are translation invariant, and centring removes most of the
  cancellation in ``|x_i|² + |x_j|² − 2 x_i·x_j`` for the near-duplicate
  neurons KO is about. ``x`` must be scaled to O(1) by the caller (see
  :func:`max_abs_scale`).
  """
  rows: jax.Array     # (N, D): x − mean
  sq: jax.Array       # (N,): |x_i − mean|²
  mean: jax.Array     # (D,)


def centre(x: jax.Array) -> Centred:
  """:class:`Centred` rows of ``x``."""
  mean = jnp.mean(x, axis=0)
  xc = x - mean
  return Centred(xc, jnp.sum(xc * xc, axis=1), mean)


def block_distances(c: Centred, start: Any, size: int,
                    ) -> tuple[jax.Array, jax.Array]:
  """``|x_i − x_j|`` for rows ``start ... start + size − 1`` against all.

  Returns ``(distances (size, N), centred Gram (size, N))``; the Gram
  product runs at HIGHEST precision (TF32/bf16 passes would otherwise
  dominate the error on GPU/TPU), a row's distance to itself is exactly 0.
  Memory ``O(size·N)``: no ``N×N`` array unless ``size = N``.
  """
  n = c.rows.shape[0]
  xb = jax.lax.dynamic_slice_in_dim(c.rows, start, size)
  sqb = jax.lax.dynamic_slice_in_dim(c.sq, start, size)
  gram = jnp.matmul(xb, c.rows.T, precision=HIGHEST)
  d2 = sqb[:, None] + c.sq[None, :] - 2.0 * gram
  pos = d2 > 0
  d = jnp.where(pos, jnp.sqrt(jnp.where(pos, d2, 1.0)), 0.0)
  rows = start + jnp.arange(size, dtype=jnp.int32)
  same = rows[:, None] == jnp.arange(n, dtype=jnp.int32)[None, :]
  return jnp.where(same, 0.0, d), gram


def uncentred_norms(c: Centred) -> tuple[jax.Array, jax.Array]:
  """``(a, 1/|x_i|)`` with ``a = xc·μ``: what :func:`block_cosines` needs.

  ``|x_i|² = |xc_i|² + 2a_i + |μ|²``; computed once per layer (O(N·D)),
  not once per block.
  """
  a = c.rows @ c.mean
  return a, inverse_norms(jnp.maximum(c.sq + 2.0 * a + jnp.dot(c.mean, c.mean),
                                      0.0))


def block_cosines(c: Centred, norms: tuple[jax.Array, jax.Array], start: Any,
                  size: int, gram: jax.Array) -> jax.Array:
  """``cos(x_i, x_j)`` of the *uncentred* rows, from a centred Gram block.

  ``x_i·x_j = xc_i·xc_j + a_i + a_j + |μ|²``, ``norms`` from
  :func:`uncentred_norms`. A zero row has cosine 0 with every row.
  """
  a, inv = norms
  ab = jax.lax.dynamic_slice_in_dim(a, start, size)
  dots = gram + ab[:, None] + a[None, :] + jnp.dot(c.mean, c.mean)
  return dots * (jax.lax.dynamic_slice_in_dim(inv, start, size)[:, None]
                 * inv[None, :])


def pairwise_distances(
    x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """All ``|x_i − x_j|`` of ``x`` (N×D): :func:`block_distances` of all rows.

  Returns ``(distances (N, N), centred rows, centred Gram)``.
  """
  c = centre(x)
  d, gram = block_distances(c, 0, x.shape[0])
  return d, c.rows, gram


def row_normalize(x: jax.Array) -> jax.Array:
  """Rows of an ``(..., D)`` array divided by their norm.

  Zero rows stay 0 (scale-safe and NaN-free, see :func:`_unit`).
  """
  return _unit(x, -1)


def unit_directions(keys: jax.Array, dim: int, dtype: Any) -> jax.Array:
  """One uniform direction on ``S^{dim-1}`` per key: ``z/|z|``, z Gaussian."""
  z = jax.vmap(lambda k: _rng.normal(k, (dim,), dtype))(keys)
  return z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True),
                         jnp.finfo(dtype).tiny)


def pair_keys(key: jax.Array, i: jax.Array, j: jax.Array) -> jax.Array:
  """Counter-based key of the unordered pair ``(i, j)``, ``i < j``.

  ``fold_in(fold_in(key, i), j)``: the direction ``n_ij`` depends on the pair
  alone, never on how the pairs are blocked, listed or sharded.
  """
  return jax.vmap(lambda a, b: _rng.fold_in(_rng.fold_in(key, a), b))(i, j)


# --------------------------------------------------------------------------
# Blockwise loops


def row_blocks(n: int, block: int) -> tuple[int, int]:
  """``(number of blocks, padded size)`` for row blocks of ``block``."""
  nb = -(-n // block)
  return nb, nb * block


def pad_rows(x: jax.Array, size: int) -> jax.Array:
  return jnp.pad(x, ((0, size - x.shape[0]),) + ((0, 0),) * (x.ndim - 1))


def map_row_blocks(fn: Callable[[jax.Array], Any], n: int,
                   block: int) -> Any:
  """``lax.map`` of ``fn(row_indices)`` over row blocks; results stacked.

  ``fn`` receives the (block,) int32 row indices of one block (rows past
  ``n`` are padding and must be ignored by ``fn``); outputs are concatenated
  along the first axis and trimmed to ``n`` rows where they are row-shaped.
  """
  nb, _ = row_blocks(n, block)
  starts = jnp.arange(nb, dtype=jnp.int32) * block
  out = jax.lax.map(lambda s: fn(s + jnp.arange(block, dtype=jnp.int32)),
                    starts)
  return out
