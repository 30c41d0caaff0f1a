"""KO collisions: soft and hard collisions between the neurons of a layer.

Both are gradient *pre-processors*: chain them before an ordinary optimizer,

>>> import optax
>>> from kinetix import kinetic
>>> tx = optax.chain(kinetic.soft_collision(0.1), optax.adamw(1e-3))

and pass ``params`` to ``update`` (the collision needs the weights).

Each collision is one equation in one small function (its *leaf function*);
:mod:`kinetix._engine` runs it over the selected leaves, grouped by layout,
and keeps the state and the statistics.

References:
  Feng, Huang, Fu, Wang, Yan, `KO: Kinetics-inspired Neural Optimizer with PDE
  Simulation Approaches <https://arxiv.org/abs/2505.14777>`_, 2025.
"""

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from kinetix import _engine
from kinetix import _neurons
from kinetix import _rng
from kinetix import _sharding
from kinetix import _utils

__all__ = [
    'soft_collision',
    'hard_collision',
    'SoftCollisionState',
    'HardCollisionState',
    'DISTANCE_SCALE',
    'PAIRINGS',
    'PARTNERS',
]

#: The values of :func:`hard_collision`'s ``pairing``.
PAIRINGS = ('all', 'disjoint')
#: The values of :func:`soft_collision`'s ``partners``.
PARTNERS = ('all', 'higher')

#: :func:`hard_collision`'s default κ in ``exp(−κ |w_i − w_j|)``: the
#: authors' code, which produced the paper's results (the paper writes κ = 1).
DISTANCE_SCALE = 0.05

# Entries of the largest pair-space block a hard collision holds at once
# (64 MiB of float32): layers with N² above it test their pairs in row
# blocks, and a chunk of accepted pairs holds at most this many D-vectors.
_BLOCK_ENTRIES = 1 << 24
_INT32_MAX = 2 ** 31 - 1


class SoftCollisionState(NamedTuple):
  """State of :func:`soft_collision`."""
  count: jax.Array            # shape=(), int32: steps taken.
  key: jax.Array              # shape=(), typed PRNG key (noise), split each
                              #   step.
  mean_abs_cos: jax.Array     # shape=(), float32: mean off-diagonal
                              #   |cos(w_i, w_j)| over the selected layers at
                              #   the last step.
  relative_change: jax.Array  # shape=(), float32: |Δg| / |g| over the selected
                              #   leaves at the last step (collision strength).


class HardCollisionState(NamedTuple):
  """State of :func:`hard_collision`."""
  count: jax.Array              # shape=(), dtype=int32: steps taken.
  key: jax.Array                # shape=(), typed PRNG key, split each step.
  accepted_pairs: jax.Array     # shape=(), int32: pairs that collided at the
                                #   last step (saturates at 2^31 - 1).
  accepted_fraction: jax.Array  # shape=(), float32: accepted / tested pairs
                                #   (from the exact count).
  mean_abs_cos: jax.Array       # shape=(), float32: mean off-diagonal |cos| of
                                #   the selected layers (disjoint: over the
                                #   matched pairs, an unbiased estimate).
  relative_change: jax.Array    # shape=(), float32: |Δg| / |g| last step.


# --------------------------------------------------------------------------
# Shared by the collisions


def _exponent(p: jax.Array) -> jax.Array:
  """``e`` (int32) with ``p = 2^e``, for a power of two ``p``."""
  _, e = jnp.frexp(p)
  return e.astype(jnp.int32) - 1


# The band of Σ|u|² (and the ceiling of Σ|new − u|²) summed as it is:
# below 2^-40 squares that underflow could matter; above 2^100 the sums of
# several leaves in the relative change could overflow. Outside it, rescale.
_SQ_SUM_FLOOR = 2.0 ** -40
_SQ_SUM_CEIL = 2.0 ** 100


def _scaled_sq_sums(new, u):
  """``(e, |new − u|²/4^e, |u|²/4^e)``, float32, on a power-of-two scale.

  Summed as they are (``e = 0``) when ``|u|²`` lies in ``[2^-40, 2^100]``
  and ``|new − u|²`` is at most ``2^100``; otherwise (overflow, NaN or
  underflow included) summed again on the max-abs scale ``2^e`` of ``u``
  (a ``lax.cond``: the usual step pays no max-abs pass).
  """
  u = jnp.asarray(u)
  fast = (jnp.sum(jnp.square(new - u)).astype(jnp.float32),
          jnp.sum(u * u).astype(jnp.float32))
  # Comparisons with inf or NaN are False: both take the rescaled branch.
  ok = ((fast[0] <= _SQ_SUM_CEIL) & (fast[1] >= _SQ_SUM_FLOOR)
        & (fast[1] <= _SQ_SUM_CEIL))

  def rescaled(_):
    # |new − u| is at most ~N·max|u| (Σ of N bounded terms): u's scale is
    # enough, and saves a pass over ``new``.
    scale = _neurons.max_abs_scale(u).reshape(())
    dd, x = (new - u) / scale, u / scale
    return (_exponent(scale), jnp.sum(dd * dd).astype(jnp.float32),
            jnp.sum(x * x).astype(jnp.float32))

  # The shared switch: inside shard_map, the fast branch's constant
  # exponent then varies like the rescaled branch's.
  return _sharding.switch(ok, [rescaled,
                               lambda f: (jnp.zeros([], jnp.int32), *f)],
                          fast, u, new)


def _per_layer(fn, *stacked):
  """``fn`` on each layer of ``(L, ...)`` arrays, outputs stacked.

  One layer (the common case) is a direct call; several use ``lax.map``,
  which keeps one layer's temporaries live at a time.
  """
  if stacked[0].shape[0] == 1:
    out = fn(*(x[0] for x in stacked))
    return jax.tree.map(lambda y: y[None], out)
  return jax.lax.map(lambda xs: fn(*xs), stacked)


def _eq7(speed, dist, speed_max, coef, distance_scale):
  """Eq. 7: a pair collides iff ``g_r·exp(−κ w_r)/max g_r > 1 − c``.

  ``speed = |g_i − g_j|``, ``dist = |w_i − w_j|``; nothing collides when
  every speed is 0.
  """
  pos = speed_max > 0
  ratio = jnp.where(pos, speed / jnp.where(pos, speed_max, 1.0), 0.0)
  return ratio * jnp.exp(-distance_scale * dist) > 1.0 - coef


def _eq8(diff, speed, direction):
  r"""Eq. 8, the hard-sphere change of :math:`g_i` in pair :math:`(i, j)`.

  :math:`\tfrac12 (g_j - g_i) + \tfrac12 |g_i - g_j|\, n_{ij}` for
  ``diff`` :math:`= g_j - g_i`, ``speed`` :math:`= |g_i - g_j|` and a unit
  ``direction`` :math:`n_{ij}`; partner :math:`j` changes by its negative.
  """
  return 0.5 * diff + 0.5 * speed * direction


# --------------------------------------------------------------------------
# Soft collision (Alg. 2)


class _SoftOptions(NamedTuple):
  include_self: bool
  min_similarity: Any            # float, None or (injected) traced
  partners: str
  normalize: bool
  noise_scale: Any               # float or (injected) traced
  noise: bool                    # whether noise is drawn at all
  block_size: int | None


def _soft_coefficients(cw, cg, rows, cols, opts: _SoftOptions):
  """``S = C_w ∘ C_g`` for rows ``rows`` against columns ``cols``.

  Products below ``min_similarity`` are zeroed (the authors' ``thres``);
  ``partners="higher"`` keeps only ``j > i`` off the diagonal; the
  diagonal stays only with ``include_self``.
  """
  s = cw * cg
  if opts.min_similarity is not None:
    s = jnp.where(s < opts.min_similarity, 0.0, s)
  diagonal = rows[:, None] == cols[None, :]
  if not opts.include_self:
    s = jnp.where(diagonal, 0.0, s)
  if opts.partners == 'higher':
    s = jnp.where(diagonal | (cols[None, :] > rows[:, None]), s, 0.0)
  return s


def _row_squares(y, lay: _neurons.Layout):
  """``|y_i|²`` of each neuron, ordered like the rows of a Gram matrix."""
  return _neurons.row_values(
      jnp.sum(y * y, axis=lay.feature_axes, keepdims=True), lay)


def _soft_dense(yw, yg, g, lay: _neurons.Layout, opts: _SoftOptions):
  """``(S·g, Σ|cos_w| off-diagonal, |ŷ_g|²)`` with all of ``S`` at once.

  ``yw``, ``yg``: the neurons scaled by powers of two
  (:func:`kinetix._neurons.scaled_rows`). The Grams contract the feature
  axes in place and ``S·g`` the neuron axis (``dot_general`` with the layer
  axes as batch dimensions): the leaf is never transposed. The norms are
  summed apart, not read off the Grams' diagonals, and the diagonal of
  ``|C_w|`` is subtracted from its sum, not masked: no ``N×N`` mask or
  gather is built (in a group's loop XLA would hoist and keep them), and
  one ``N×N`` temporary less lives.
  """
  cols = jnp.arange(lay.neurons, dtype=jnp.int32)
  qw, qg = _row_squares(yw, lay), _row_squares(yg, lay)
  iw, ig = _neurons.inverse_norms(qw), _neurons.inverse_norms(qg)
  cw = _neurons.cosines(_neurons.gram(yw, yw, lay), iw, iw)
  s = _soft_coefficients(cw, _neurons.cosines(_neurons.gram(yg, yg, lay),
                                              ig, ig), cols, cols, opts)
  # |cos(w_i, w_i)| is 1 (0 for a zero neuron) up to rounding: clamp the
  # difference, a sum of non-negative terms, at 0.
  abs_cos = jnp.maximum(
      jnp.sum(jnp.abs(cw)) - jnp.sum(jnp.abs(qw * (iw * iw))), 0.0)
  return _neurons.to_leaf_order(_neurons.mix(s, g, lay), lay), abs_cos, qg


def _soft_blocked(yw, yg, g, lay: _neurons.Layout, opts: _SoftOptions,
                  block: int):
  """:func:`_soft_dense` in row blocks: only ``(block, N)`` of ``S`` lives.

  The last block is shifted back to end at ``N`` (no padding); rows it
  shares with the previous block are recomputed identically and left out
  of the statistics.
  """
  n = lay.neurons
  qw, qg = _row_squares(yw, lay), _row_squares(yg, lay)
  iw, ig = _neurons.inverse_norms(qw), _neurons.inverse_norms(qg)
  order, _ = _neurons.mix_order(lay, g.ndim)
  out_axis = order.index(lay.neuron_axis)
  cols = jnp.arange(n, dtype=jnp.int32)

  def body(k, carry):
    rep, abs_cos = carry
    nominal = k * block
    start = jnp.minimum(nominal, n - block)
    rows = start + jnp.arange(block, dtype=jnp.int32)

    def cosines(y, inv):
      yb = jax.lax.dynamic_slice_in_dim(y, start, block, lay.neuron_axis)
      ib = jax.lax.dynamic_slice_in_dim(inv, start, block, -1)
      return _neurons.cosines(_neurons.gram(yb, y, lay), ib, inv)

    cw = cosines(yw, iw)
    s = _soft_coefficients(cw, cosines(yg, ig), rows, cols, opts)
    keep = (rows >= nominal)[:, None] & (rows[:, None] != cols[None, :])
    abs_cos = abs_cos + jnp.sum(jnp.where(keep, jnp.abs(cw), 0.0))
    rep = jax.lax.dynamic_update_slice_in_dim(
        rep, _neurons.mix(s, g, lay), start, out_axis)
    return rep, abs_cos

  rep_shape = tuple(g.shape[a] for a in order)
  rep, abs_cos = jax.lax.fori_loop(
      0, -(-n // block), body,
      (jnp.zeros(rep_shape, g.dtype), jnp.zeros([], g.dtype)))
  return _neurons.to_leaf_order(rep, lay), abs_cos, qg


def _norm_matched(rep, g, sg, lay: _neurons.Layout):
  """``rep`` rescaled per layer to Frobenius norm ``|g|_F`` (0 stays 0).

  Both norms are summed on each layer's power-of-two scale (the largest
  neuron scale ``sg`` of the layer), so neither overflows.
  """
  axes = tuple(a for a in range(g.ndim) if a not in lay.layer_axes)
  top = jnp.max(sg, axis=axes, keepdims=True)
  g2 = jnp.sum(jnp.square(g / top), axis=axes, keepdims=True)
  r2 = jnp.sum(jnp.square(rep / top), axis=axes, keepdims=True)
  pos = r2 > 0
  return rep * jnp.where(pos, jnp.sqrt(g2 / jnp.where(pos, r2, 1.0)), 0.0)


def _soft_sq_sums(new, g, s, q, lay: _neurons.Layout):
  """:func:`_scaled_sq_sums` from the scales ``s`` of ``g``'s neurons.

  ``top``, the largest of ``s``, is the power of two below ``max|g|``:
  ``|g|²/top² = Σ_i (s_i/top)² q_i`` needs no pass over the leaf, and
  ``|new − g|²/top²`` one, with no ``lax.cond``.
  """
  top = jnp.max(s)
  rel = _neurons.row_values(s, lay) / top
  d = (new - g) / top
  return (_exponent(top), jnp.sum(d * d).astype(jnp.float32),
          jnp.sum(rel * rel * q).astype(jnp.float32))


def _soft_noise(key, layer_index, shape, dtype, lay: _neurons.Layout):
  """Standard normal noise of ``shape``, one stream per stacked layer.

  A leaf without layer axes draws from its key; stacked layers each from
  the key folded with the layer's index, so a layer selected by
  ``layers=`` gets the noise it gets when every layer collides.
  """
  if not lay.layer_axes:
    return _rng.normal(key, shape, dtype)
  order = _engine.stacked_first(lay)
  rest = tuple(shape[a] for a in order[len(lay.layer_axes):])
  z = jax.vmap(lambda k: _rng.normal(k, rest, dtype))(
      _engine.layer_keys(key, layer_index))
  z = z.reshape(tuple(shape[a] for a in lay.layer_axes) + rest)
  return jnp.transpose(z, tuple(np.argsort(order)))


def _soft_leaf(w, g, key, layer_index, coef, lay: _neurons.Layout, *,
               opts: _SoftOptions) -> _engine.LeafResult:
  """Alg. 2 on one leaf, in its own layout: ``g ← g − c·S·g``."""
  yw, _ = _neurons.scaled_rows(w, lay)
  yg, sg = _neurons.scaled_rows(g, lay)
  if opts.block_size is None or opts.block_size >= lay.neurons:
    rep, abs_cos, qg = _soft_dense(yw, yg, g, lay, opts)
  else:
    rep, abs_cos, qg = _soft_blocked(yw, yg, g, lay, opts, opts.block_size)
  if opts.normalize:
    rep = _norm_matched(rep, g, sg, lay)
  new = g - coef * rep
  if opts.noise:
    new = new + jnp.asarray(opts.noise_scale, g.dtype) * _soft_noise(
        key, layer_index, g.shape, g.dtype, lay)
  return _engine.LeafResult(new, abs_cos.astype(jnp.float32),
                            _soft_sq_sums(new, g, sg, qg, lay),
                            _engine.count(jnp.zeros([], jnp.int32)))


def soft_collision(
    coll_coef: optax.ScalarOrSchedule = 0.1,
    *,
    mask: Any = None,
    neuron_axis: int | None = None,
    layer_axes: int | tuple[int, ...] = (),
    layers: int | tuple[int, ...] | None = None,
    include_self: bool = True,
    min_similarity: float | None = None,
    partners: str = 'all',
    normalize: bool = False,
    noise_scale: float = 0.0,
    key: _utils.KeyLike = 0,
    block_size: int | None = None,
) -> optax.GradientTransformation:
  r"""KO soft collision: a repulsion between similar neurons (Alg. 2).

  Each selected leaf is viewed as neurons :math:`w_i` with gradients
  :math:`g_i` (see ``neuron_axis``). With row-normalised :math:`\hat W,
  \hat G`,

  .. math::

    S = (\hat W \hat W^\top) \circ (\hat G \hat G^\top), \qquad
    g \leftarrow g - c\, S\, g,

  a Hadamard product of the weight and gradient cosine matrices: neuron
  :math:`i` is pushed along the gradients of the neurons it resembles in both
  position and velocity. The diagonal (:math:`S_{ii} = 1`) is included, as in
  the paper and the authors' code, which shrinks every gradient by
  :math:`1 - c` on top of the repulsion. A zero row (dead neuron or zero
  gradient) gets zero coefficients, never a NaN.

  With ``normalize=True`` the repulsion :math:`R = S g` of each layer is
  rescaled to :math:`c\,\lVert g \rVert_F\, R / \lVert R \rVert_F`
  (Frobenius norms): the collision then changes the layer's gradient by a
  fixed fraction :math:`c` of its norm, however many neurons are aligned.
  The authors' ``wg_e`` type is ``include_self=False, normalize=True,
  min_similarity=0.0``.

  Cost: three :math:`N{\times}N{\times}D` matrix products per layer,
  :math:`6N^2D` FLOPs, i.e. ``N/B`` times the layer's own forward+backward at
  batch ``B``; apply it to classifier heads and layers of moderate width.

  Args:
    coll_coef: :math:`c \in [0, 1]`, a float or an Optax schedule of the step.
    mask: which leaves collide: a pytree of bools (or a prefix), or a callable
      of params (e.g. :func:`kinetix.masks.by_path`). ``None``: every leaf with
      ``ndim >= 2``.
    neuron_axis: the axis that indexes neurons (static int). ``None`` means
      ``-1``, the output units of Flax ``Dense``/``Conv`` kernels (``None``
      rather than ``-1`` so that ``optax.inject_hyperparams`` does not turn
      it into a traced number); all other axes except ``layer_axes`` are
      flattened into the neuron's vector. ``0`` for PyTorch-style
      ``(out, in)`` matrices.
    layer_axes: axes that index independent stacked layers (``nn.scan`` or
      ``vmap`` over layers, e.g. ``0`` for an ``(L, in, out)`` kernel); each
      layer collides only within itself.
    layers: which of the stacked layers collide: an index or a sequence of
      indices into the layer axes (flattened in order; negative counts from
      the end, e.g. ``-1`` for the last block); the others pass through
      unchanged. ``None``: all. Needs ``layer_axes``.
    include_self: keep the diagonal of :math:`S` (paper and code: ``True``).
    min_similarity: if set, coefficients :math:`S_{ij}` below it are zeroed;
      ``0.0`` reproduces the authors' code, which drops negative products.
    partners: which neurons push neuron :math:`i`: ``"all"`` (the paper) or
      ``"higher"``, only :math:`j > i` (the authors' ``wg_t`` type with
      ``include_self=False``).
    normalize: rescale each layer's repulsion to Frobenius norm
      :math:`c\,\lVert g\rVert_F` (the authors' ``wg_e``).
    noise_scale: standard deviation of Gaussian noise added to the collided
      gradient (authors' code: ``1e-4``; paper: none). Drawn from the state's
      key, fresh each step.
    key: PRNG key for the noise: an int, a ``jax.random.key`` or a legacy
      ``jax.random.PRNGKey``.
    block_size: if set, the coefficient matrix is computed in row blocks of
      this many neurons so that no ``N×N`` matrix is ever held (memory
      ``O(block_size·N)``); results equal the unblocked ones up to rounding.

  Returns:
    An ``optax.GradientTransformation`` whose ``update`` requires ``params``.
    Its state is a :class:`SoftCollisionState`. Under
    ``optax.inject_hyperparams`` pass ``static_args=('mask',)`` when ``mask``
    is a callable (Optax treats every callable as a schedule) and list
    ``neuron_axis``, ``layer_axes``, ``layers`` and ``block_size`` there too
    when you set them.

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> from kinetix import kinetic, masks
    >>> params = {'head': {'kernel': jnp.array([[1., 0.9], [0., 0.1]]),
    ...                    'bias': jnp.zeros(2)}}
    >>> grads = {'head': {'kernel': jnp.array([[1., 1.], [0., 0.]]),
    ...                   'bias': jnp.ones(2)}}
    >>> tx = kinetic.soft_collision(0.5, mask=masks.by_path('head/kernel'))
    >>> state = tx.init(params)
    >>> updates, state = tx.update(grads, state, params)
    >>> updates['head']['kernel'].round(3)  # near-twins: both nearly stopped
    Array([[0.003, 0.003],
           [0.   , 0.   ]], dtype=float32)

  References:
    Feng et al., `KO: Kinetics-inspired Neural Optimizer with PDE Simulation
    Approaches <https://arxiv.org/abs/2505.14777>`_, 2025 (Alg. 2).
  """
  n_ax, l_axes, sel = _engine.check_arguments(coll_coef, key, neuron_axis,
                                              layer_axes, layers)
  block = _engine.check_block('block_size', block_size)
  if min_similarity is not None:
    _utils.check_scalar_or_schedule('min_similarity', min_similarity, lo=-1.0,
                                    hi=1.0, allow_schedule=False)
  _utils.check_scalar_or_schedule('noise_scale', noise_scale, lo=0.0,
                                  allow_schedule=False)
  for flag, value in (('include_self', include_self),
                      ('normalize', normalize)):
    if not isinstance(value, (bool, np.bool_)):
      raise TypeError(f'{flag} must be a bool; got {value!r}')
  if partners not in PARTNERS:
    raise ValueError(f'partners must be one of {PARTNERS}; got {partners!r}')
  opts = _SoftOptions(
      include_self, min_similarity, partners, normalize,
      noise_scale, _utils.concrete_float(noise_scale) != 0.0, block)
  collision = _engine.Collision(
      'soft_collision', functools.partial(_soft_leaf, opts=opts),
      cos_pairs=_engine.pairs_between)
  return _engine.transformation(
      collision, SoftCollisionState, coll_coef=coll_coef, key=key, mask=mask,
      neuron_axis=n_ax, layer_axes=l_axes, layers=sel)


# --------------------------------------------------------------------------
# Hard collision, all pairs (Eqs. 5-8)


def _pair_terms(g, scale, key, i, j, valid):
  """Eq. 8 for pairs ``(i, i < j)``, one row per pair, on ``g``'s scale.

  ``g`` is a layer's ``(N, D)`` rows, ``scale`` the power of two that
  brings them to a max-abs in ``[1, 2)``: the pairs' rows are gathered and
  then scaled (exact), so no scaled copy of the layer is held. Invalid
  (padding) pairs give zero, with finite gradients.
  """
  diff = g[j] / scale - g[i] / scale
  speed = _neurons.safe_norm(diff, -1, keepdims=True)
  n = _neurons.unit_directions(_neurons.pair_keys(key, i, j), g.shape[1],
                               g.dtype)
  return jnp.where(valid[:, None], _eq8(diff, speed, n), 0.0)


def _scatter_pairs(acc, key, g, scale, i, j, valid):
  """``acc = (gains, losses)`` plus the pairs' terms at ``i`` and at ``j``.

  The gains and the losses are summed apart and subtracted once at the
  end: both scatters read the same materialised terms.
  """
  term = _pair_terms(g, scale, key, i, j, valid)
  return acc[0].at[i].add(term), acc[1].at[j].add(term)


def _first_at_least(lookup, size: int, targets):
  """Smallest ``k`` in ``[0, size)`` with ``lookup(k) >= targets``.

  A binary search over a non-decreasing ``lookup``: one gather per step and
  target.
  """
  lo = jnp.zeros_like(targets)
  hi = jnp.full_like(targets, size - 1)

  def step(_, bounds):
    lo, hi = bounds
    mid = (lo + hi) // 2
    ge = lookup(mid) >= targets
    return jnp.where(ge, lo, mid + 1), jnp.where(ge, mid, hi)

  lo, _ = jax.lax.fori_loop(0, max(1, size.bit_length()), step, (lo, hi))
  return lo


def _accepted_chunk(row_end, row_rank, start, capacity: int):
  """Accepted pairs ``(i, j)`` of ranks ``start + 1 ... start + capacity``.

  ``row_end[i]`` counts the accepted pairs in the block's rows ``<= i`` and
  ``row_rank[i, j]`` those in row ``i`` up to column ``j``; two binary
  searches find each pair in ``O(capacity·log N)``. Ranks stay below 2^31:
  a block holds fewer pairs (see :func:`_hard_blocks`). ``i`` is the row
  within the block.
  """
  rows, n = row_rank.shape
  targets = start + jnp.arange(1, capacity + 1, dtype=jnp.int32)
  valid = targets <= row_end[-1]
  targets = jnp.where(valid, targets, 1)
  i = _first_at_least(lambda k: row_end[k], rows, targets)
  before = jnp.where(i > 0, row_end[jnp.maximum(i - 1, 0)], 0)
  j = _first_at_least(lambda k: row_rank[i, k], n, targets - before)
  return i, j, valid


def _collide_accepted(acc, accept, start_row, key, g, scale, *,
                      capacity: int):
  """Eq. 8 for the accepted pairs of one row block, in chunks.

  ``accept`` is the block's ``(rows, N)`` test, upper triangle only. The
  pairs are collided in a first chunk of ``max(64, N/4)`` (at most
  ``capacity``), then in chunks of ``capacity``, with a static trip count
  and chunks past the block's ``m`` pairs skipped by ``lax.cond``: no cliff
  past the capacity, and a few accepted pairs cost ``O(N·D)``. Each
  ``n_ij`` comes from the pair's own key, so chunks and blocks change
  nothing but the rounding of the sums. Returns ``(acc, m)``.
  """
  rows, n = accept.shape
  row_rank = jnp.cumsum(accept, axis=1, dtype=jnp.int32)
  row_end = jnp.cumsum(row_rank[:, -1], dtype=jnp.int32)
  m = row_end[-1]
  bound = min(rows * (n - 1), n * (n - 1) // 2)   # pairs the block can hold
  if bound <= capacity and rows == n:
    # One chunk holds every pair of the layer: list them directly.
    i, j = jnp.nonzero(accept, size=capacity, fill_value=0)
    valid = jnp.arange(capacity) < m
    return _scatter_pairs(acc, key, g, scale, i.astype(jnp.int32),
                          j.astype(jnp.int32), valid), m

  def collide(start, size, acc):
    i, j, valid = _accepted_chunk(row_end, row_rank, start, size)
    return _scatter_pairs(acc, key, g, scale, start_row + i, j, valid)

  first = min(capacity, max(64, n // 4), bound)
  acc = jax.lax.cond(m > 0, lambda a: collide(0, first, a), lambda a: a, acc)
  rest = -(-max(bound - first, 0) // capacity)
  acc = jax.lax.fori_loop(
      0, rest,
      lambda c, acc: jax.lax.cond(
          first + c * capacity < m,
          lambda a: collide(first + c * capacity, capacity, a),
          lambda a: a, acc),
      acc)
  return acc, m


def _hard_blocks(n: int, capacity: int, block_size: int | None) -> int:
  """Rows per block of the pair test: ``N`` when ``N²`` is small enough.

  A block's pair ranks (``block·N + capacity``) stay below 2^31.
  """
  block = block_size or (n if n * n <= _BLOCK_ENTRIES
                         else max(1, _BLOCK_ENTRIES // n))
  return max(1, min(block, n, (_INT32_MAX - capacity) // n))


def _hard_all_layer(w, g, key, coef, distance_scale, *, capacity: int,
                    block: int):
  """All-pairs hard collision of one ``(N, D)`` layer.

  Returns ``(Δ on g's scale, accepted pairs (a count), Σ|cos(w_i, w_j)|,
  g's scale)``. The test (Eq. 7) needs the layer's largest
  ``|g_i − g_j|``: with one block it is read off the block; with several, a
  first pass over the blocks finds it, and the second tests each block's
  pairs and collides those it accepts. Peak memory ``O(block·N +
  capacity·D)``.
  """
  n = w.shape[0]
  scale = _neurons.max_abs_scale(g)
  w_scale = _neurons.max_abs_scale(w)
  wc = _neurons.centre(w / w_scale)      # exact rescaling: no overflow
  gc = _neurons.centre(g / scale)
  w_norms = _neurons.uncentred_norms(wc)
  cols = jnp.arange(n, dtype=jnp.int32)
  nb = -(-n // block)

  def speeds(start):
    return _neurons.block_distances(gc, start, block)[0]

  def test(k, g_r, g_max):
    """Block ``k``: its rows' accepted upper pairs and Σ|cos| (new rows)."""
    nominal = k * block
    start = jnp.minimum(nominal, n - block)
    rows = start + jnp.arange(block, dtype=jnp.int32)
    w_r, gram_w = _neurons.block_distances(wc, start, block)
    new_rows = (rows >= nominal)[:, None]
    accept = (_eq7(g_r, w_r * w_scale, g_max, coef, distance_scale)
              & (cols[None, :] > rows[:, None]) & new_rows)
    cos = _neurons.block_cosines(wc, w_norms, start, block, gram_w)
    off = new_rows & (cols[None, :] != rows[:, None])
    return start, accept, jnp.sum(jnp.where(off, jnp.abs(cos), 0.0))

  zeros = (jnp.zeros_like(g), jnp.zeros_like(g))
  if nb == 1:
    g_r = speeds(0)
    start, accept, abs_cos = test(0, g_r, jnp.max(g_r))
    acc, m = _collide_accepted(zeros, accept, start, key, g, scale,
                               capacity=capacity)
    accepted = _engine.count(m)
  else:
    g_max = jax.lax.fori_loop(
        0, nb, lambda k, mx: jnp.maximum(mx, jnp.max(speeds(
            jnp.minimum(k * block, n - block)))), jnp.zeros([], g.dtype))

    def body(k, carry):
      acc, accepted, abs_cos = carry
      start = jnp.minimum(k * block, n - block)
      start, accept, cos_sum = test(k, speeds(start), g_max)
      acc, m = _collide_accepted(acc, accept, start, key, g, scale,
                                 capacity=capacity)
      return acc, _engine.count_add(accepted, m), abs_cos + cos_sum

    acc, accepted, abs_cos = jax.lax.fori_loop(
        0, nb, body, (zeros, _engine.count(jnp.zeros([], jnp.int32)),
                      jnp.zeros([], g.dtype)))
  return acc[0] - acc[1], accepted, abs_cos, scale


def _hard_all_leaf(w, g, key, layer_index, coef, lay: _neurons.Layout, *,
                   distance_scale: float, capacity: int | None,
                   block_size: int | None) -> _engine.LeafResult:
  """Eqs. 5-8 on every layer of a leaf, on ``(N, D)`` rows."""
  n, d = lay.neurons, lay.features
  cap = (max(64, min(4 * n, _BLOCK_ENTRIES // d)) if capacity is None
         else capacity)
  cap = min(cap, n * (n - 1) // 2)
  block = _hard_blocks(n, cap, block_size)
  # The pair phase gathers rows: the (L, N, D) view of g, once.
  gn = jax.lax.optimization_barrier(_neurons.to_neurons(g, lay, g.dtype))
  wn = _neurons.to_neurons(w, lay, w.dtype)
  layer_fn = functools.partial(_hard_all_layer, coef=coef,
                               distance_scale=jnp.asarray(distance_scale,
                                                          g.dtype),
                               capacity=cap, block=block)
  delta, accepted, abs_cos, scale = _per_layer(
      layer_fn, wn, gn, _engine.layer_keys(key, layer_index))
  scale = scale.reshape(-1, 1, 1)
  new = _neurons.from_neurons(gn + delta * scale, lay, g.shape, g.dtype)
  # |Δ|² and |g|² on the layers' own scales (no overflow, no lax.cond),
  # brought to the largest one.
  top = jnp.max(scale)
  rel = jnp.square(scale / top)
  sums = (_exponent(top), jnp.sum(rel * jnp.square(delta)).astype(jnp.float32),
          jnp.sum(rel * jnp.square(gn / scale)).astype(jnp.float32))
  return _engine.LeafResult(new, jnp.sum(abs_cos).astype(jnp.float32), sums,
                            _engine.count_sum(accepted))


# --------------------------------------------------------------------------
# Hard collision, disjoint pairing (DSMC-style binary collisions)


def _matching(key, n: int):
  """A random perfect matching of ``n`` neurons and the pairs' directions key.

  Returns ``(perm, position, dir_key)``: neurons ``perm[2k]`` and
  ``perm[2k + 1]`` form pair ``k``, for odd ``n`` the last one,
  ``perm[n − 1]``, sits out; ``position`` is the inverse permutation
  (neuron ``i`` is ``perm[position[i]]``).
  """
  perm_key, dir_key = _rng.split(key)
  perm = _rng.permutation(perm_key, n)
  position = jnp.zeros(n, jnp.int32).at[perm].set(
      jnp.arange(n, dtype=jnp.int32))
  return perm, position, dir_key


def _pair_directions(key, accept, shape, dtype):
  """The matched pairs' Gaussian directions, drawn only if one pair collides.

  In a ``lax.cond``: nothing is drawn when no pair is accepted, and
  otherwise the numbers are computed once, into one buffer that the norms
  and the update both read.
  """
  return jax.lax.cond(jnp.any(accept),
                      lambda k: _rng.normal(k, shape, dtype),
                      lambda k: jnp.zeros(shape, dtype), key)


def _scaled_norms(x, axis: int):
  """``|x|`` over ``axis``, summed on the power-of-two scale of ``max|x|``."""
  scale = _neurons.max_abs_scale(x)
  return _neurons.safe_norm(x / scale, axis) * scale


def _pair_cosines(na, nb, dist, w_scale):
  """``|cos(w_a, w_b)|`` summed over pairs, from the law of cosines.

  ``na``, ``nb``: the neurons' norms on the scale ``w_scale``; ``dist``:
  ``|w_a − w_b|``. A statistic: accurate to ~1e-7 absolute without another
  pass over the weights. Pairs with a zero neuron are left out.
  """
  both = (na > 0) & (nb > 0)
  dist = dist / w_scale
  dot = 0.5 * (na * na + nb * nb - dist * dist)
  cos = jnp.clip(dot / jnp.where(both, na * nb, 1.0), -1.0, 1.0)
  return jnp.sum(jnp.where(both, jnp.abs(cos), 0.0))


def _disjoint_rows(w, g, key, coef, distance_scale):
  """Disjoint pairing of an ``(N, D)`` layer (neurons are rows).

  In pair space: row gathers give ``g_b − g_a`` and ``w_b − w_a``
  (``N/2 × D`` each) and the pairs' changes; the new gradients return to
  neuron order with one more row gather of the change (``+Δ`` for ``a``,
  ``−Δ`` for ``b``: ``Δ_b = −Δ_a`` exactly), not a scatter.
  """
  n, d = g.shape
  half = n // 2
  perm, position, dir_key = _matching(key, n)
  a, b = perm[0:2 * half:2], perm[1:2 * half:2]
  diff = g[b] - g[a]
  speed = _scaled_norms(diff, 1)
  dist = _scaled_norms(w[b] - w[a], 1)
  accept = _eq7(speed, dist, jnp.max(speed), coef, distance_scale)
  z = _pair_directions(dir_key, accept, (half, d), g.dtype)
  n_dir = z / jnp.maximum(_neurons.safe_norm(z, 1, keepdims=True),
                          jnp.finfo(g.dtype).tiny)
  delta = jnp.where(accept[:, None], _eq8(diff, speed[:, None], n_dir), 0.0)
  change = delta[jnp.minimum(position // 2, half - 1)]
  new = jnp.where((position % 2 == 0)[:, None], g + change, g - change)
  new = jnp.where((position >= 2 * half)[:, None], g, new)  # sits out
  w_scale = _neurons.max_abs_scale(w)
  norms = _neurons.safe_norm(w / w_scale, 1)
  abs_cos = _pair_cosines(norms[a], norms[b], dist, w_scale)
  return new, jnp.sum(accept, dtype=jnp.int32), abs_cos


def _disjoint_columns(w, g, key, coef, distance_scale):
  """Disjoint pairing of a ``(D, N)`` layer (neurons are columns), in place.

  A Flax ``(in, out)`` kernel is used as it is stored: each neuron reads its
  partner's column, gathered inside the subtraction ``g_partner − g`` (and
  ``w_partner − w``), which is materialised before the reductions read it
  (a gather fused into a column reduction runs many times slower on
  XLA:CPU). Both partners compute bitwise the same speed, distance and
  verdict, and partner ``b`` the negated direction, so ``Δ_b = −Δ_a``
  exactly. The pair directions are drawn as ``(D, N/2)`` columns: the same
  physics as :func:`_disjoint_rows`, not the same random numbers.
  """
  d, n = g.shape
  half = n // 2
  perm, position, dir_key = _matching(key, n)
  odd = position >= 2 * half             # the neuron that sits out, if any
  partner = perm[jnp.where(odd, position, position ^ 1)]
  pair = jnp.minimum(position // 2, half - 1)
  first = position % 2 == 0
  diff = jax.lax.optimization_barrier(g[:, partner] - g)
  dist = _scaled_norms(
      jax.lax.optimization_barrier(w[:, partner] - w), 0)
  speed = _scaled_norms(diff, 0)
  accept = _eq7(speed, dist, jnp.max(speed), coef, distance_scale) & ~odd
  z = _pair_directions(dir_key, accept, (d, half), g.dtype)
  inv = 1.0 / jnp.maximum(_neurons.safe_norm(z, 0), jnp.finfo(g.dtype).tiny)
  sign = jnp.where(first, inv[pair], -inv[pair])
  delta = jnp.where(accept, _eq8(diff, speed, z[:, pair] * sign), 0.0)
  new = g + delta
  w_scale = _neurons.max_abs_scale(w)
  norms = _neurons.safe_norm(w / w_scale, 0)
  counted = first & ~odd                 # each pair once
  abs_cos = _pair_cosines(jnp.where(counted, norms, 0.0), norms[partner],
                          dist, w_scale)
  return new, jnp.sum(accept & first, dtype=jnp.int32), abs_cos


def _hard_disjoint_leaf(w, g, key, layer_index, coef, lay: _neurons.Layout,
                        *, distance_scale: float) -> _engine.LeafResult:
  """A random perfect matching of each layer's neurons, collided elastically.

  Each layer is a 2-D ``(N, D)`` or ``(D, N)`` matrix: a free reshape when
  the leaf is stored either way (the Flax layout is used as stored), else a
  transpose in and out.
  """
  axis, to_view, from_view = _neurons.matrix_view(lay, g.shape)
  fn = _disjoint_rows if axis == 0 else _disjoint_columns
  new, m, abs_cos = _per_layer(
      lambda w_, g_, k: fn(w_, g_, k, coef,
                           jnp.asarray(distance_scale, g.dtype)),
      to_view(w), to_view(g), _engine.layer_keys(key, layer_index))
  new = from_view(new)
  return _engine.LeafResult(new, jnp.sum(abs_cos).astype(jnp.float32),
                            _scaled_sq_sums(new, g),
                            _engine.count_sum(_engine.count(m)))


def _matched_pairs(lay: _neurons.Layout) -> int:
  return lay.layers * (lay.neurons // 2)


def hard_collision(
    coll_coef: optax.ScalarOrSchedule = 0.1,
    *,
    key: _utils.KeyLike = 0,
    mask: Any = None,
    neuron_axis: int | None = None,
    layer_axes: int | tuple[int, ...] = (),
    layers: int | tuple[int, ...] | None = None,
    distance_scale: float = DISTANCE_SCALE,
    pairing: str = 'all',
    max_pairs: int | None = None,
    block_size: int | None = None,
) -> optax.GradientTransformation:
  r"""KO hard collision: elastic DSMC-style collisions of neuron pairs.

  Neurons are particles at positions :math:`w_i` with velocities
  :math:`g_i`. With :math:`(w_r)_{ij} = |w_i - w_j|` and
  :math:`(g_r)_{ij} = |g_i - g_j|`, a pair collides iff (Eq. 7)

  .. math::

    \frac{(g_r)_{ij}\, e^{-\kappa (w_r)_{ij}}}{\max_{kl} (g_r)_{kl}}
    > 1 - c ,

  (max per layer per step; :math:`\kappa` is ``distance_scale``), and every
  accepted pair changes the gradients by (Eqs. 6, 8)

  .. math::

    g_i^* = g_i + \sum_{j\ \text{accepted}}
      \Big[\tfrac{g_j - g_i}{2} + \tfrac12 (g_r)_{ij}\, n_{ij}\Big],

  with :math:`n_{ij}` uniform on the unit sphere, independent across pairs,
  :math:`n_{ji} = -n_{ij}`: the hard-sphere post-collision velocity. Total
  momentum :math:`\sum_i g_i` is conserved exactly.

  **Which knob.** ``coll_coef`` sets how close to the layer's largest
  relative speed a pair must come (the top :math:`c` fraction);
  ``distance_scale`` sets how much the distance between the two neurons'
  weights damps that. Since the speed ratio is at most 1, only pairs closer
  than :math:`-\ln(1 - c)/\kappa` can ever collide: with the paper's
  :math:`\kappa = 1` and :math:`c = 0.1`, closer than 0.105, while neurons of
  real heads are 0.3-3 apart, so nothing collides whatever the gradients.
  The default is the authors' code's :math:`\kappa = 0.05` (closer than
  2.1). Watch
  ``state.accepted_pairs``: if it stays 0, lower ``distance_scale``; if
  ``state.relative_change`` grows above ~1 (neurons in many accepted
  pairs), lower ``coll_coef`` or use ``pairing="disjoint"``.

  ``pairing="all"`` tests every pair, as in the paper: distances from
  centred Gram matrices at HIGHEST precision, in row blocks of
  ``block_size`` neurons (no ``N×N×D`` array, and no ``N×N`` one for a
  vocabulary head), then the accepted pairs collided in chunks of
  ``max_pairs``: ``O(N²)`` for the test plus ``O(m·D)`` for ``m`` accepted
  pairs. Each :math:`n_{ij}` comes from a counter-based key of the pair, so
  the result does not depend on the blocks, the chunks or the sharding.

  ``pairing="disjoint"`` is kinetix's DSMC-faithful variant: each step a
  random perfect matching of the neurons (an odd one sits out); each matched
  pair is tested by the same rule, with the maximum taken over the matched
  pairs, and collided elastically, so momentum *and* kinetic energy
  :math:`\sum_i |g_i|^2` are conserved exactly. Cost ``O(N·D)``.

  Args:
    coll_coef: :math:`c \in [0, 1]`, a float or an Optax schedule; the
      acceptance threshold is :math:`1 - c` (``0``: no collision).
    key: PRNG key for directions (and matchings): an int, a
      ``jax.random.key`` or a legacy ``jax.random.PRNGKey``. Split every step;
      per-leaf streams are folded from the leaf's path.
    mask: which leaves collide (see :func:`soft_collision`).
    neuron_axis: the axis that indexes neurons (see :func:`soft_collision`).
    layer_axes: axes of independent stacked layers.
    layers: which of the stacked layers collide (see :func:`soft_collision`).
    distance_scale: :math:`\kappa \geq 0` of the distance kernel
      :math:`e^{-\kappa w_r}`. Default ``0.05`` (the authors' code); the
      paper writes ``1.0``; ``0.0`` ignores distances.
    pairing: ``"all"`` (paper) or ``"disjoint"`` (random perfect matching).
    max_pairs: accepted pairs collided per chunk (``"all"`` only): memory
      ``O(max_pairs·D)``; more accepted pairs take more chunks. ``None``
      picks ``max(64, min(4·N, 2^24 / D))``.
    block_size: rows of the pair test per block (``"all"`` only): memory
      ``O(block_size·N)``. ``None``: all ``N`` rows at once when ``N² ≤
      2^24``, else ``2^24 / N``. The accepted pairs do not depend on it.

  Returns:
    An ``optax.GradientTransformation`` whose ``update`` requires ``params``.
    Its state is a :class:`HardCollisionState`. Under
    ``optax.inject_hyperparams`` pass ``static_args=('mask',)`` when
    ``mask`` is a callable, plus ``max_pairs``, ``block_size``,
    ``neuron_axis``, ``layer_axes`` and ``layers`` when you set them:
    Optax treats a callable as a schedule and numbers as traced values.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kinetix import kinetic
    >>> params = {'w': jnp.array([[0., 0.], [0., 0.]])}
    >>> grads = {'w': jnp.array([[1., 3.], [0., 0.]])}  # neurons are columns
    >>> tx = kinetic.hard_collision(1.0, key=0)
    >>> state = tx.init(params)
    >>> updates, state = tx.update(grads, state, params)
    >>> print(updates['w'].sum(axis=1))   # total momentum is unchanged
    [4. 0.]
    >>> int(state.accepted_pairs)
    1

  References:
    Feng et al., `KO: Kinetics-inspired Neural Optimizer with PDE Simulation
    Approaches <https://arxiv.org/abs/2505.14777>`_, 2025 (Alg. 1, Eqs. 5-8);
    G. A. Bird, *Molecular Gas Dynamics and the Direct Simulation of Gas
    Flows*, 1994.
  """
  n_ax, l_axes, sel = _engine.check_arguments(coll_coef, key, neuron_axis,
                                              layer_axes, layers)
  _utils.check_scalar_or_schedule('distance_scale', distance_scale, lo=0.0,
                                  allow_schedule=False)
  if pairing not in PAIRINGS:
    raise ValueError(f'pairing must be one of {PAIRINGS}; got {pairing!r}')
  capacity = _engine.check_block('max_pairs', max_pairs)
  block = _engine.check_block('block_size', block_size)
  for arg, value in (('max_pairs', capacity), ('block_size', block)):
    if value is not None and pairing == 'disjoint':
      raise ValueError(f"{arg} applies to pairing='all' only; "
                       "pairing='disjoint' collides N/2 pairs per layer.")
  kappa = _utils.concrete_float(distance_scale)
  kappa = distance_scale if kappa is None else kappa
  if pairing == 'all':
    collision = _engine.Collision(
        'hard_collision',
        functools.partial(_hard_all_leaf, distance_scale=kappa,
                          capacity=capacity, block_size=block),
        cos_pairs=_engine.pairs_between,
        tested_pairs=_engine.unordered_pairs, min_neurons=2)
  else:
    collision = _engine.Collision(
        'hard_collision',
        functools.partial(_hard_disjoint_leaf, distance_scale=kappa),
        cos_pairs=_matched_pairs, tested_pairs=_matched_pairs, min_neurons=2)
  return _engine.transformation(
      collision, HardCollisionState, coll_coef=coll_coef, key=key, mask=mask,
      neuron_axis=n_ax, layer_axes=l_axes, layers=sel)
