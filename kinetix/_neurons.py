"""Leaf ⇄ neuron views, mask resolution and the blockwise pair loops of KO.

A parameter leaf is seen as ``L`` independent layers of ``N`` neurons, each a
``D``-vector: ``layer_axes`` (stacked layers from ``nn.scan``/``vmap``) come
first, then ``neuron_axis``, and every remaining axis is flattened into the
neuron's feature vector.  For a Flax ``Dense`` kernel ``(in, out)`` the
neurons are the ``out`` units (``neuron_axis=-1``); for a ``Conv`` kernel
``(kh, kw, in, out)`` the output channels, each with ``kh·kw·in`` features.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from kinetix import _utils

HIGHEST = jax.lax.Precision.HIGHEST


# --------------------------------------------------------------------------
# Layouts


class Layout(NamedTuple):
  """How one leaf maps to ``(L, N, D)``: a permutation and the three sizes."""
  perm: tuple[int, ...]       # axes order: layer axes, neuron axis, features
  layers: int                 # L
  neurons: int                # N
  features: int               # D


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
  return Layout(l_axes + (n_ax,) + feat, layers, shape[n_ax], features)


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
# Masks


def default_mask(params: Any) -> Any:
  """Every leaf with ``ndim >= 2`` (weights, not biases or scales)."""
  return jax.tree.map(lambda x: jnp.ndim(x) >= 2, params)


def resolve_mask(mask: Any, params: Any, treedef: Any,
                 paths: Sequence[str], name: str) -> list[bool]:
  """Evaluates ``mask`` on ``params``; one Python bool per leaf of ``treedef``.

  ``mask`` is ``None`` (the default mask), a callable of params, or a pytree
  of bools with the structure of params or a prefix of it, as in
  ``optax.masked``.
  """
  if mask is None:
    mask_tree = default_mask(params)
  elif callable(mask) and not isinstance(mask, (bool, np.bool_)):
    mask_tree = mask(params)
  else:
    mask_tree = mask
  try:
    full = jax.tree.map(
        lambda m, sub: jax.tree.map(lambda _: m, sub), mask_tree, params,
        is_leaf=lambda m: isinstance(m, (bool, np.bool_, np.ndarray,
                                         jax.Array)))
    flags = treedef.flatten_up_to(full)
  except (ValueError, TypeError) as e:
    raise ValueError(
        f'{name}: the mask does not match the structure of params. A mask is '
        f'a pytree of bools with the structure of params (or a prefix of it), '
        f'or a callable params -> such a pytree. Details: {e}') from e
  out = []
  for flag, path in zip(flags, paths):
    if _utils.is_traced(flag):
      raise TypeError(
          f'{name}: the mask value for leaf {path!r} is traced; masks must be '
          f'static (computed from shapes or paths, not from array values).')
    if not isinstance(flag, (bool, np.bool_)) and not (
        isinstance(flag, (np.ndarray, jax.Array)) and np.ndim(flag) == 0
        and np.asarray(flag).dtype == bool):
      raise TypeError(f'{name}: the mask value for leaf {path!r} must be a '
                      f'bool; got {flag!r}')
    out.append(bool(flag))
  return out


# --------------------------------------------------------------------------
# Geometry


def pairwise_distances(x: jax.Array) -> jax.Array:
  """``|x_i − x_j|`` for the rows of ``x`` (N×D) from a Gram matrix.

  Rows are centred first (distances are translation invariant), which removes
  most of the cancellation in ``|x_i|² + |x_j|² − 2 x_i·x_j`` for the
  near-duplicate neurons KO is about; the Gram product runs at HIGHEST
  precision (TF32/bf16 passes would otherwise dominate the error on GPU/TPU).
  Returns ``(distances (N, N) with an exact zero diagonal, centred Gram)``.
  """
  xc = x - jnp.mean(x, axis=0, keepdims=True)
  gram = jnp.matmul(xc, xc.T, precision=HIGHEST)
  sq = jnp.diagonal(gram)
  d2 = jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * gram, 0.0)
  d = jnp.sqrt(d2)
  return d * (1.0 - jnp.eye(x.shape[0], dtype=x.dtype)), xc, gram


def cosines_from_centred_gram(x: jax.Array, xc: jax.Array,
                              gram_c: jax.Array) -> jax.Array:
  """``cos(x_i, x_j)`` recovered from the centred Gram in O(N·D) extra work."""
  mu = jnp.mean(x, axis=0)
  a = xc @ mu
  gram = gram_c + a[:, None] + a[None, :] + jnp.dot(mu, mu)
  norms = jnp.sqrt(jnp.maximum(jnp.diagonal(gram), 0.0))
  denom = jnp.maximum(norms[:, None] * norms[None, :], 1e-30)
  return jnp.where((norms[:, None] > 0) & (norms[None, :] > 0), gram / denom,
                   0.0)


def row_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """Rows divided by ``max(|x_i|, eps)`` (PyTorch ``F.normalize``)."""
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def unit_directions(keys: jax.Array, dim: int, dtype: Any) -> jax.Array:
  """One uniform direction on ``S^{dim-1}`` per key: ``z/|z|``, z Gaussian."""
  z = jax.vmap(lambda k: jax.random.normal(k, (dim,), dtype))(keys)
  return z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True),
                         jnp.finfo(dtype).tiny)


def pair_keys(key: jax.Array, i: jax.Array, j: jax.Array) -> jax.Array:
  """Counter-based key of the unordered pair ``(i, j)``, ``i < j``.

  ``fold_in(fold_in(key, i), j)``: the direction ``n_ij`` depends on the pair
  alone, never on how the pairs are blocked, listed or sharded.
  """
  return jax.vmap(lambda a, b: jax.random.fold_in(jax.random.fold_in(key, a),
                                                  b))(i, j)


# --------------------------------------------------------------------------
# Blockwise loops


def row_blocks(n: int, block: int) -> tuple[int, int]:
  """``(number of blocks, padded size)`` for row blocks of ``block``."""
  nb = -(-n // block)
  return nb, nb * block


def pad_rows(x: jax.Array, size: int) -> jax.Array:
  return jnp.pad(x, ((0, size - x.shape[0]),) + ((0, 0),) * (x.ndim - 1))


def tile_pairs(nb: int) -> tuple[np.ndarray, np.ndarray]:
  """Static lists of block pairs ``(p, q)`` with ``p <= q``."""
  p, q = np.triu_indices(nb)
  return p.astype(np.int32), q.astype(np.int32)


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
