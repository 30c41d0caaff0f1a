"""KO collisions: soft and hard collisions between the neurons of a layer.

Both are gradient *pre-processors*: chain them before an ordinary optimizer,

>>> import optax
>>> from kinetix import kinetic
>>> tx = optax.chain(kinetic.soft_collision(0.1), optax.adamw(1e-3))

and pass ``params`` to ``update`` (the collision needs the weights).

References:
  Feng, Huang, Fu, Wang, Yan, `KO: Kinetics-inspired Neural Optimizer with PDE
  Simulation Approaches <https://arxiv.org/abs/2505.14777>`_, 2025.
"""

import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from kinetix import _neurons
from kinetix import _rng
from kinetix import _sharding
from kinetix import _utils
from kinetix import masks

PAIRINGS = ('all', 'disjoint')



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
                                #   last step.
  accepted_fraction: jax.Array  # shape=(), float32: accepted / tested pairs.
  mean_abs_cos: jax.Array       # shape=(), float32: mean off-diagonal |cos| of
                                #   the selected layers (disjoint: over the
                                #   matched pairs, an unbiased estimate).
  relative_change: jax.Array    # shape=(), float32: |Δg| / |g| last step.


# --------------------------------------------------------------------------
# Shared plumbing


class _Leaf(NamedTuple):
  index: int
  path: str
  layout: _neurons.Layout


def _selected_leaves(name: str, updates: Any, params: Any, mask: Any,
                     neuron_axis: int, layer_axes: tuple[int, ...]):
  """Flattens ``updates``/``params`` and validates the selected leaves."""
  flat_u, treedef = jax.tree_util.tree_flatten_with_path(updates)
  paths = [_utils.path_to_str(p) for p, _ in flat_u]
  try:
    flat_p = treedef.flatten_up_to(params)
  except (ValueError, TypeError) as e:
    raise ValueError(f'{name}: params do not have the structure of the '
                     f'updates: {e}') from e
  flags = masks._resolve(mask, params, treedef, paths, name)
  selected = []
  leaves = zip(flat_u, flat_p, paths, flags, strict=True)
  for i, ((_, u), p, path, on) in enumerate(leaves):
    if not on:
      continue
    p_shape = tuple(getattr(p, 'shape', ()))
    if tuple(u.shape) != p_shape:
      raise ValueError(f'{name}: update and param of leaf {path!r} have '
                       f'different shapes {tuple(u.shape)} and {p_shape}.')
    dtype = getattr(p, 'dtype', None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
      raise TypeError(f'{name}: leaf {path!r} has dtype {dtype}; collisions '
                      f'need floating-point params (exclude it from the mask).')
    lay = _neurons.layout(p_shape, neuron_axis, layer_axes, path)
    if lay.layers * lay.neurons * lay.features == 0:
      continue                # an empty leaf: nothing to collide
    selected.append(_Leaf(i, path, lay))
  _sharding.warn_if_device_local(
      name, [(leaf.path, x) for leaf in selected
             for x in (flat_u[leaf.index][1], flat_p[leaf.index])],
      'its neurons collide only with the neurons of the same block, and '
      "their cosines use the block's features only")
  return flat_u, flat_p, treedef, selected


def _warn_if_empty(name: str, selected, params) -> None:
  """At ``init``: a collision whose mask selects nothing is a no-op."""
  if selected:
    return
  paths = [p for p, _ in _utils.leaves_with_paths(params)[0]]
  warnings.warn(
      f'{name}: the mask selects no leaf (or only empty ones), so this '
      f'collision does nothing (its statistics stay 0). Leaf paths: '
      f'{paths[:20]}'
      f'{" ..." if len(paths) > 20 else ""}. The default mask selects leaves '
      f'with ndim >= 2; kinetix.masks.by_path selects by path.',
      UserWarning, stacklevel=4)


def _check_common(name: str, coll_coef, key, neuron_axis, layer_axes):
  _utils.check_scalar_or_schedule('coll_coef', coll_coef, lo=0.0, hi=1.0)
  _utils.validate_key(key)
  n_ax = -1 if neuron_axis is None else _utils.static_int('neuron_axis',
                                                         neuron_axis)
  return n_ax, _neurons.normalize_layer_axes(layer_axes)


def _check_block(name: str, value: Any) -> int | None:
  if value is None:
    return None
  v = _utils.static_int(name, value)
  if v < 1:
    raise ValueError(f'{name} must be a positive int or None; got {v}')
  return v


def _f32(x) -> jax.Array:
  return jnp.asarray(x, jnp.float32)


# --------------------------------------------------------------------------
# Soft collision


def _soft_leaf(w, g, coef, min_similarity, lay: _neurons.Layout, *,
               include_self: bool, block_size: int | None):
  """Alg. 2 on one leaf in its own layout.

  Returns ``(new g, Σ|cos_w| off-diagonal, s, q)`` with ``s`` the powers of
  two that scale ``g``'s neurons (:func:`kinetix._neurons.scaled_rows`) and
  ``q`` the squared norms of the scaled neurons, for :func:`_soft_sq_sums`.

  The Gram matrices of the scaled neurons contract the feature axes in place
  and ``S·g`` contracts the neuron axis in place (``jax.lax.dot_general``
  with the layer axes as batch dimensions), so the leaf is never
  transposed; the cosines divide each Gram matrix by the norms on its
  diagonal. The cost is the three ``N×N×D`` products plus three O(N·D)
  passes (the max-abs, the scaling, the difference).
  """
  n = lay.neurons
  yw, _ = _neurons.scaled_rows(w, lay)
  yg, sg = _neurons.scaled_rows(g, lay)

  def coefficients(cw, cg, rows, cols):
    s = cw * cg
    if min_similarity is not None:
      s = jnp.where(s < min_similarity, 0.0, s)
    if not include_self:
      s = jnp.where(rows[:, None] == cols[None, :], 0.0, s)
    return s

  cols = jnp.arange(n, dtype=jnp.int32)
  if block_size is None or block_size >= n:
    gram_w = _neurons.gram(yw, yw, lay)
    gram_g = _neurons.gram(yg, yg, lay)
    qw = jnp.diagonal(gram_w, axis1=-2, axis2=-1)
    qg = jnp.diagonal(gram_g, axis1=-2, axis2=-1)
    iw, ig = _neurons.inverse_norms(qw), _neurons.inverse_norms(qg)
    cw = _neurons.cosines(gram_w, iw, iw)
    s = coefficients(cw, _neurons.cosines(gram_g, ig, ig), cols, cols)
    off = cols[:, None] != cols[None, :]
    abs_cos = jnp.sum(jnp.where(off, jnp.abs(cw), 0.0))
    rep = _neurons.mix(s, g, lay)
  else:
    # Row blocks of the coefficient matrix: only (block, N) of it is live.
    # The last block is shifted back to end at N (no padding); rows it
    # shares with the previous block are recomputed identically and left
    # out of the statistics.
    def squares(y):
      return _neurons.row_values(
          jnp.sum(y * y, axis=lay.feature_axes, keepdims=True), lay)

    qw, qg = squares(yw), squares(yg)
    iw, ig = _neurons.inverse_norms(qw), _neurons.inverse_norms(qg)
    order, _ = _neurons.mix_order(lay, g.ndim)
    out_axis = order.index(lay.neuron_axis)
    nb = -(-n // block_size)
    rep_shape = tuple(g.shape[a] for a in order)

    def body(k, carry):
      rep, abs_cos = carry
      nominal = k * block_size
      start = jnp.minimum(nominal, n - block_size)
      rows = start + jnp.arange(block_size, dtype=jnp.int32)

      def block(y, inv):
        yb = jax.lax.dynamic_slice_in_dim(y, start, block_size,
                                          lay.neuron_axis)
        ib = jax.lax.dynamic_slice_in_dim(inv, start, block_size, -1)
        return _neurons.cosines(_neurons.gram(yb, y, lay), ib, inv)

      cw = block(yw, iw)
      s = coefficients(cw, block(yg, ig), rows, cols)
      keep = (rows >= nominal)[:, None] & (rows[:, None] != cols[None, :])
      abs_cos = abs_cos + jnp.sum(jnp.where(keep, jnp.abs(cw), 0.0))
      rep = jax.lax.dynamic_update_slice_in_dim(
          rep, _neurons.mix(s, g, lay), start, out_axis)
      return rep, abs_cos

    rep, abs_cos = jax.lax.fori_loop(
        0, nb, body, (jnp.zeros(rep_shape, g.dtype), jnp.zeros([], g.dtype)))
  return g - coef * _neurons.to_leaf_order(rep, lay), abs_cos, sg, qg


def _exponent(p: jax.Array) -> jax.Array:
  """``e`` (int32) with ``p = 2^e``, for a power of two ``p``."""
  _, e = jnp.frexp(p)
  return e.astype(jnp.int32) - 1


def _soft_sq_sums(new, g, s, q, lay: _neurons.Layout):
  """:func:`_scaled_sq_sums` from the scales ``s`` of ``g``'s neurons.

  ``top``, the largest of ``s``, is the power of two below ``max|g|``:
  ``|g|²/top² = Σ_i (s_i/top)² q_i`` needs no pass over the leaf, and
  ``|new − g|²/top²`` one (without noise ``|new − g| ≤ c·N·max|g|``, so
  it cannot overflow), with no ``lax.cond``.
  """
  top = jnp.max(s)
  rel = _neurons.row_values(s, lay) / top
  d = (new - g) / top
  return (_exponent(top), jnp.sum(d * d).astype(jnp.float32),
          jnp.sum(rel * rel * q).astype(jnp.float32))


# The band of Σ|u|² (and the ceiling of Σ|new − u|²) summed as it is:
# below 2^-40 squares that underflow could matter; above 2^100 the sums of
# several leaves in _relative_change could overflow. Outside it, rescale.
_SQ_SUM_FLOOR = 2.0 ** -40
_SQ_SUM_CEIL = 2.0 ** 100


def _scaled_sq_sums(new, u):
  """``(e, |new − u|²/4^e, |u|²/4^e)``, float32, on a power-of-two scale.

  Summing squares of gradients beyond ~1e19 (or below ~1e-19) overflows (or
  underflows) float32; :func:`_relative_change` adds leaves on one scale.
  The sums are taken as they are (``e = 0``, one pass over ``new`` and
  ``u``) when ``|u|²`` lies in ``[2^-40, 2^100]`` and ``|new − u|²`` is at
  most ``2^100``; only otherwise (overflow, NaN or underflow included) are
  they summed again with ``2^e`` the max-abs scale of ``u`` (a ``lax.cond``:
  the usual step pays no max-abs pass).
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

  return jax.lax.cond(ok, lambda f: (jnp.zeros([], jnp.int32), *f), rescaled,
                      fast)


def _relative_change(parts) -> jax.Array:
  """``sqrt(Σ|Δ|² / Σ|u|²)`` from per-leaf :func:`_scaled_sq_sums`."""
  if not parts:
    return jnp.zeros([], jnp.float32)
  es = jnp.stack([p[0] for p in parts])
  top = jnp.max(es)
  w = jnp.ldexp(jnp.ones_like(es, jnp.float32), 2 * (es - top))
  d2 = jnp.sum(w * jnp.stack([p[1] for p in parts]))
  g2 = jnp.sum(w * jnp.stack([p[2] for p in parts]))
  pos = g2 > 0
  return jnp.where(pos, jnp.sqrt(jnp.where(pos, d2 / jnp.where(pos, g2, 1.0),
                                           1.0)), 0.0)


def soft_collision(
    coll_coef: optax.ScalarOrSchedule = 0.1,
    *,
    mask: Any = None,
    neuron_axis: int | None = None,
    layer_axes: int | tuple[int, ...] = (),
    include_self: bool = True,
    min_similarity: float | None = None,
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
    include_self: keep the diagonal of :math:`S` (paper and code: ``True``).
    min_similarity: if set, coefficients :math:`S_{ij}` below it are zeroed;
      ``0.0`` reproduces the authors' code, which drops negative products.
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
    ``neuron_axis`` and ``layer_axes`` there too when you set them.

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
  name = 'soft_collision'
  n_ax, l_axes = _check_common(name, coll_coef, key, neuron_axis, layer_axes)
  block = _check_block('block_size', block_size)
  if min_similarity is not None:
    _utils.check_scalar_or_schedule('min_similarity', min_similarity, lo=-1.0,
                                    hi=1.0, allow_schedule=False)
  _utils.check_scalar_or_schedule('noise_scale', noise_scale, lo=0.0,
                                  allow_schedule=False)
  if not isinstance(include_self, (bool, np.bool_)):
    raise TypeError(f'include_self must be a bool; got {include_self!r}')
  noise_off = _utils.concrete_float(noise_scale) == 0.0

  def init_fn(params):
    _utils.check_array_leaves(name, params)
    _warn_if_empty(name, _selected_leaves(name, params, params, mask, n_ax,
                                          l_axes)[3], params)
    return SoftCollisionState(
        count=jnp.zeros([], jnp.int32),
        key=_utils.canonicalize_key(key),
        mean_abs_cos=jnp.zeros([], jnp.float32),
        relative_change=jnp.zeros([], jnp.float32))

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    if params is None:
      raise ValueError(f'{name} needs the current params: call '
                       f'tx.update(updates, state, params).')
    flat_u, flat_p, treedef, selected = _selected_leaves(
        name, updates, params, mask, n_ax, l_axes)
    coef_raw = _utils.resolve(coll_coef, state.count)
    new_key, step_key = _rng.split(state.key)
    out = [u for _, u in flat_u]
    cos_sum, cos_n, sums = _f32(0.0), 0, []
    for leaf in selected:
      u, p, lay = out[leaf.index], flat_p[leaf.index], leaf.layout
      leaf_key = _rng.fold_in(step_key, _utils.path_seed(leaf.path))

      def leaf_update(u, p, leaf_key, coef_raw, lay=lay):
        cdt = _utils.compute_dtype(u.dtype)
        g, w = u.astype(cdt), p.astype(cdt)
        new, abs_cos, s, q = _soft_leaf(
            w, g, jnp.asarray(coef_raw, cdt), min_similarity, lay,
            include_self=include_self, block_size=block)
        if not noise_off:
          new = new + jnp.asarray(noise_scale, cdt) * _rng.normal(
              leaf_key, u.shape, cdt)
        return (new.astype(u.dtype), abs_cos.astype(jnp.float32),
                *_soft_sq_sums(new, g, s, q, lay))

      new, cos_leaf, *leaf_sums = _sharding.call_with_auto_axes(
          leaf_update, (u, None, None, None, None), u, p, leaf_key, coef_raw)
      out[leaf.index] = new
      cos_sum += cos_leaf
      cos_n += lay.layers * lay.neurons * (lay.neurons - 1)
      sums.append(leaf_sums)
    new_state = SoftCollisionState(
        count=_utils.increment(state.count),
        key=new_key,
        mean_abs_cos=cos_sum / float(max(cos_n, 1)),
        relative_change=_relative_change(sums))
    return jax.tree_util.tree_unflatten(treedef, out), new_state

  return optax.GradientTransformation(
      *_sharding.with_varying_state(init_fn, update_fn))


# --------------------------------------------------------------------------
# Hard collision, all pairs (Eqs. 5-8)


def _pair_terms(g, key, i, j, valid):
  """Collision changes of pairs ``(i, j)``, ``i < j``, one row per pair.

  For each valid pair, ``g_i`` gains ``t = (g_j − g_i)/2 + ½|g_i − g_j| n_ij``
  and ``g_j`` exactly ``−t``. Invalid (padding) pairs give zero, with finite
  gradients.
  """
  diff = g[j] - g[i]
  speed = _neurons.safe_norm(diff, -1, keepdims=True)
  n = _neurons.unit_directions(_neurons.pair_keys(key, i, j), g.shape[1],
                               g.dtype)
  return jnp.where(valid[:, None], 0.5 * diff + 0.5 * speed * n, 0.0)


def _scatter_pairs(acc, key, g, i, j, valid):
  """``acc = (gains, losses)`` plus the pairs' terms at ``i`` and at ``j``.

  The gains and the losses are summed apart and subtracted once at the
  end: both scatters read the same materialised terms (a negated copy per
  chunk cost as much as a scatter on CPU).
  """
  term = _pair_terms(g, key, i, j, valid)
  return acc[0].at[i].add(term), acc[1].at[j].add(term)


def _acceptance(w, g, coef, distance_scale):
  """Eq. 7: ``g_r·exp(−κ w_r)/max(g_r) > 1 − c`` (diagonal excluded).

  ``w`` and ``g`` are one layer's ``(N, D)`` rows. ``g`` comes scaled by a
  power of two to a max-abs in ``[1, 2)`` (see :func:`_hard_all_layer`);
  ``w`` is rescaled here (exact) so that its distances neither overflow nor
  underflow, and ``w_r`` is scaled back for the distance kernel. Returns
  the acceptance matrix and the sum of the off-diagonal ``|cos(w_i, w_j)|``.
  """
  n = w.shape[0]
  w_scale = _neurons.max_abs_scale(w)
  w_s = w / w_scale
  w_r, wc, gram_w = _neurons.pairwise_distances(w_s)
  w_r = w_r * w_scale
  g_r, _, _ = _neurons.pairwise_distances(g)
  g_max = jnp.max(g_r)
  ratio = jnp.where(g_max > 0, g_r / jnp.where(g_max > 0, g_max, 1.0), 0.0)
  score = ratio * jnp.exp(-distance_scale * w_r)
  off = ~jnp.eye(n, dtype=bool)
  accept = (score > 1.0 - coef) & off
  # One masked sum: the cosines are reduced where they are computed.
  cos = _neurons.cosines_from_centred_gram(w_s, wc, gram_w)
  return accept, jnp.sum(jnp.where(off, jnp.abs(cos), 0.0))


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


def _accepted_chunk(row_end, row_rank, start, capacity: int, n: int):
  """Accepted pairs ``(i, j)`` of ranks ``start + 1 ... start + capacity``.

  ``row_end[i]`` counts the accepted pairs in rows ``<= i`` of the upper
  triangle and ``row_rank[i, j]`` those in row ``i`` up to column ``j``;
  two binary searches find each pair in ``O(capacity·log N)`` with int32
  counts up to ``N ≈ 65k``.
  """
  targets = start + jnp.arange(1, capacity + 1, dtype=jnp.int32)
  valid = targets <= row_end[-1]
  targets = jnp.where(valid, targets, 1)
  i = _first_at_least(lambda k: row_end[k], n, targets)
  before = jnp.where(i > 0, row_end[jnp.maximum(i - 1, 0)], 0)
  j = _first_at_least(lambda k: row_rank[i, k], n, targets - before)
  return i, j, valid & (i < j)


def _hard_all_layer(w, g, key, coef, distance_scale, *, capacity: int):
  """All-pairs hard collision of one ``(N, D)`` layer.

  ``g`` must be scaled by a power of two to a max-abs in ``[1, 2)`` (or be
  zero), as :func:`hard_collision`'s update does; the result is in that
  scale.

  Cost ``O(N²)`` for the acceptance plus ``O(m·D)`` for the ``m`` accepted
  pairs: they are collided in a first chunk of ``max(64, N/4)`` pairs (at
  most ``capacity``), then in chunks of ``capacity`` (static trip count,
  chunks past ``m`` skipped by ``lax.cond``), so there is no cliff past the
  capacity and a few accepted pairs cost ``O(N·D)``. Each ``n_ij`` comes
  from the pair's own key: chunking changes nothing but the rounding of the
  sums.
  """
  n = w.shape[0]
  accept, abs_cos = _acceptance(w, g, coef, distance_scale)
  upper = jnp.triu(accept, 1)
  row_rank = jnp.cumsum(upper, axis=1, dtype=jnp.int32)
  row_end = jnp.cumsum(row_rank[:, -1], dtype=jnp.int32)
  m = row_end[-1]
  n_chunks = -(-(n * (n - 1) // 2) // capacity)

  def collide(start, size, acc):
    i, j, valid = _accepted_chunk(row_end, row_rank, start, size, n)
    return _scatter_pairs(acc, key, g, i, j, valid)

  zeros = (jnp.zeros_like(g), jnp.zeros_like(g))
  if n_chunks == 1:
    # Every pair fits in one chunk: list them directly (compiles faster).
    i, j = jnp.nonzero(upper, size=capacity, fill_value=0)
    valid = jnp.arange(capacity) < m
    gains, losses = _scatter_pairs(zeros, key, g, i.astype(jnp.int32),
                                   j.astype(jnp.int32), valid)
  else:
    # A small first chunk, then chunks of the capacity, each skipped past
    # the m-th pair: a few accepted pairs cost O(N·D), not O(capacity·D).
    first = min(capacity, max(64, n // 4))
    rest = -(-(n * (n - 1) // 2 - first) // capacity)
    acc = jax.lax.cond(m > 0, lambda a: collide(0, first, a),
                       lambda a: a, zeros)
    gains, losses = jax.lax.fori_loop(
        0, rest,
        lambda c, acc: jax.lax.cond(
            first + c * capacity < m,
            lambda a: collide(first + c * capacity, capacity, a),
            lambda a: a, acc),
        acc)
  delta = gains - losses
  return delta, m, abs_cos


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

  The draw sits in a ``lax.cond``: when no pair is accepted nothing is drawn
  (the directions would all be multiplied by 0), and otherwise XLA computes
  the numbers once, in one fusion, into the branch's output buffer, which
  the column norms and the update both read (fused into two consumers, the
  hash and the ``erf_inv`` of :func:`kinetix._rng.normal` were computed up
  to three times on CPU).
  """
  return jax.lax.cond(jnp.any(accept),
                      lambda k: _rng.normal(k, shape, dtype),
                      lambda k: jnp.zeros(shape, dtype), key)


def _scaled_norms(x, axis: int):
  """``|x|`` over ``axis``, summed on the power-of-two scale of ``max|x|``.

  Bitwise ``safe_norm(x)`` wherever that neither overflows nor underflows.
  """
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
  (``N/2 × D`` each) and the pairs' changes ``Δ``; the new gradients return
  to neuron order with one more row gather of ``Δ`` (``+Δ`` for ``a``,
  ``−Δ`` for ``b``: ``Δ_b = −Δ_a`` exactly), not a scatter. The
  temporaries are pair-space arrays (``N/2 × D``).
  """
  n, d = g.shape
  half = n // 2
  perm, position, dir_key = _matching(key, n)
  a, b = perm[0:2 * half:2], perm[1:2 * half:2]
  diff = g[b] - g[a]
  speed = _scaled_norms(diff, 1)
  dist = _scaled_norms(w[b] - w[a], 1)
  accept = _disjoint_accept(speed, dist, coef, distance_scale)
  z = _pair_directions(dir_key, accept, (half, d), g.dtype)
  n_dir = z / jnp.maximum(_neurons.safe_norm(z, 1, keepdims=True),
                          jnp.finfo(g.dtype).tiny)
  # g_a* = g_cm + ½ g_r n, g_b* = g_cm − ½ g_r n.
  delta = jnp.where(accept[:, None],
                    0.5 * diff + 0.5 * speed[:, None] * n_dir, 0.0)
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
  (XLA:CPU runs a gather fused into a column reduction many times slower).
  Every per-pair quantity is computed once per neuron: the two partners get
  bitwise the same speed, distance and verdict. The pair directions are
  drawn as ``(D, N/2)`` columns. The same physics as :func:`_disjoint_rows`,
  not the same random numbers.
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
  accept = _disjoint_accept(speed, dist, coef, distance_scale) & ~odd
  z = _pair_directions(dir_key, accept, (d, half), g.dtype)
  inv = 1.0 / jnp.maximum(_neurons.safe_norm(z, 0), jnp.finfo(g.dtype).tiny)
  along = jnp.where(accept, 0.5 * speed * inv[pair], 0.0)
  along = jnp.where(first, along, -along)
  # Partner b computes −(½(g_b − g_a)) and −along·n: Δ_b = −Δ_a exactly.
  delta = jnp.where(accept, 0.5, 0.0) * diff + along * z[:, pair]
  new = g + delta
  w_scale = _neurons.max_abs_scale(w)
  norms = _neurons.safe_norm(w / w_scale, 0)
  counted = first & ~odd                 # each pair once
  abs_cos = _pair_cosines(jnp.where(counted, norms, 0.0), norms[partner],
                          dist, w_scale)
  return new, jnp.sum(accept & first, dtype=jnp.int32), abs_cos


def _disjoint_accept(speed, dist, coef, distance_scale):
  """Eq. 7 over the matched pairs, the maximum taken over those pairs."""
  s_max = jnp.max(speed)
  ratio = jnp.where(s_max > 0, speed / jnp.where(s_max > 0, s_max, 1.0), 0.0)
  return ratio * jnp.exp(-distance_scale * dist) > 1.0 - coef


def _hard_disjoint_layer(w, g, key, coef, distance_scale, axis: int):
  """A random perfect matching of one layer's neurons, collided elastically.

  ``w`` and ``g`` are 2-D with the neurons along ``axis`` (0: ``(N, D)``;
  1: ``(D, N)``, the Flax layout, used as it is stored).
  Returns ``(new g, accepted pairs, Σ|cos| over the matched pairs)``.
  """
  fn = _disjoint_rows if axis == 0 else _disjoint_columns
  return fn(w, g, key, coef, distance_scale)


def _per_layer(fn, *stacked):
  """``fn`` on each layer of ``(L, ...)`` arrays, outputs stacked.

  One layer (the common case) is a direct call; several use ``lax.map``,
  which keeps each layer's loops and ``lax.cond`` real branches and compiles
  faster than ``vmap`` of the matching and chunk loops.
  """
  if stacked[0].shape[0] == 1:
    out = fn(*(x[0] for x in stacked))
    return jax.tree.map(lambda y: y[None], out)
  return jax.lax.map(lambda xs: fn(*xs), stacked)


def hard_collision(
    coll_coef: optax.ScalarOrSchedule = 0.1,
    *,
    key: _utils.KeyLike = 0,
    mask: Any = None,
    neuron_axis: int | None = None,
    layer_axes: int | tuple[int, ...] = (),
    distance_scale: float = 1.0,
    pairing: str = 'all',
    max_pairs: int | None = None,
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

  ``pairing="all"`` tests every pair, as in the paper. Distances come from
  centred Gram matrices at HIGHEST precision (``O(N²)`` memory, no
  ``N×N×D`` array). The accepted pairs are then collided exactly, in chunks
  of ``max_pairs`` pairs (``O(max_pairs·D)`` memory): the cost is
  ``O(N²)`` for the acceptance plus ``O(m·D)`` for ``m`` accepted pairs,
  with no cliff when ``m`` exceeds ``max_pairs``. Each :math:`n_{ij}` comes
  from a counter-based key of the pair, so the result does not depend on the
  chunking or the sharding.

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
    distance_scale: :math:`\kappa \geq 0` of the distance kernel
      :math:`e^{-\kappa w_r}`. The paper uses ``1.0``; the authors' code uses
      ``0.05``. With ``1.0`` and typical weight scales few pairs pass: log
      ``state.accepted_fraction`` to tune ``coll_coef``.
    pairing: ``"all"`` (paper) or ``"disjoint"`` (random perfect matching).
    max_pairs: accepted pairs collided per chunk (``"all"`` only): memory
      ``O(max_pairs·D)``; more accepted pairs take more chunks. ``None``
      picks ``max(64, 4·N)``.

  Returns:
    An ``optax.GradientTransformation`` whose ``update`` requires ``params``.
    Its state is a :class:`HardCollisionState`. Under
    ``optax.inject_hyperparams`` pass ``static_args=('mask',)`` when
    ``mask`` is a callable, plus ``max_pairs``, ``neuron_axis`` and
    ``layer_axes`` when you set them: Optax treats a callable as a schedule
    and numbers as traced values.

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
  name = 'hard_collision'
  n_ax, l_axes = _check_common(name, coll_coef, key, neuron_axis, layer_axes)
  _utils.check_scalar_or_schedule('distance_scale', distance_scale, lo=0.0,
                                  allow_schedule=False)
  if pairing not in PAIRINGS:
    raise ValueError(f'pairing must be one of {PAIRINGS}; got {pairing!r}')
  capacity_arg = None if max_pairs is None else _utils.static_int(
      'max_pairs', max_pairs)
  if capacity_arg is not None and capacity_arg < 1:
    raise ValueError(f'max_pairs must be a positive int or None; got '
                     f'{capacity_arg}')
  if capacity_arg is not None and pairing == 'disjoint':
    raise ValueError("max_pairs applies to pairing='all' only; "
                     "pairing='disjoint' collides N/2 pairs per layer.")

  def init_fn(params):
    _utils.check_array_leaves(name, params)
    _warn_if_empty(name, _selected_leaves(name, params, params, mask, n_ax,
                                          l_axes)[3], params)
    return HardCollisionState(
        count=jnp.zeros([], jnp.int32),
        key=_utils.canonicalize_key(key),
        accepted_pairs=jnp.zeros([], jnp.int32),
        accepted_fraction=jnp.zeros([], jnp.float32),
        mean_abs_cos=jnp.zeros([], jnp.float32),
        relative_change=jnp.zeros([], jnp.float32))

  def layer_fn(lay: _neurons.Layout, coef, kappa):
    n = lay.neurons
    capacity = max(64, 4 * n) if capacity_arg is None else capacity_arg
    capacity = min(capacity, n * (n - 1) // 2)
    return lambda w, g, k: _hard_all_layer(
        w, g, k, coef, kappa, capacity=capacity)

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    if params is None:
      raise ValueError(f'{name} needs the current params: call '
                       f'tx.update(updates, state, params).')
    flat_u, flat_p, treedef, selected = _selected_leaves(
        name, updates, params, mask, n_ax, l_axes)
    coef_raw = _utils.resolve(coll_coef, state.count)
    new_key, step_key = _rng.split(state.key)
    out = [u for _, u in flat_u]
    accepted, tested = jnp.zeros([], jnp.int32), 0
    cos_sum, cos_n, sums = _f32(0.0), 0, []
    for leaf in selected:
      u, p, lay = out[leaf.index], flat_p[leaf.index], leaf.layout
      if lay.neurons < 2:
        continue
      leaf_key = _rng.fold_in(step_key, _utils.path_seed(leaf.path))

      def leaf_update(u, p, leaf_key, coef_raw, lay=lay):
        cdt = _utils.compute_dtype(u.dtype)
        keys = jax.vmap(lambda i: _rng.fold_in(leaf_key, i))(
            jnp.arange(lay.layers))
        if pairing == 'disjoint':
          # O(N·D) on a per-layer (N, D) or (D, N) matrix: a free reshape
          # when the leaf is stored either way, else a transpose in and out.
          axis, to_view, from_view = _neurons.matrix_view(lay, u.shape)
          g, w = to_view(u.astype(cdt)), to_view(p.astype(cdt))
          new, m, abs_cos = _per_layer(
              lambda w_, g_, k: _hard_disjoint_layer(
                  w_, g_, k, jnp.asarray(coef_raw, cdt),
                  jnp.asarray(distance_scale, cdt), axis), w, g, keys)
          new = from_view(new)
          return (new.astype(u.dtype), jnp.sum(m, dtype=jnp.int32),
                  jnp.sum(abs_cos).astype(jnp.float32),
                  *_scaled_sq_sums(new, u.astype(cdt)))
        # The pair phase gathers rows: materialise the (L, N, D) view once.
        g, w = jax.lax.optimization_barrier(
            (_neurons.to_neurons(u, lay, cdt),
             _neurons.to_neurons(p, lay, cdt)))
        # Per-layer power-of-two scale: exact, and no squares overflow.
        scale = _neurons.max_abs_scale(g, (1, 2))
        fn = layer_fn(lay, jnp.asarray(coef_raw, cdt),
                      jnp.asarray(distance_scale, cdt))
        g_s = g / scale
        delta, m, abs_cos = _per_layer(fn, w, g_s, keys)
        new = _neurons.from_neurons(g + delta * scale, lay, u.shape, cdt)
        # |Δ|² and |g|² on the layers' own scales (no overflow, no lax.cond),
        # brought to the largest one.
        top = jnp.max(scale)
        rel = jnp.square(scale / top)
        sums = (_exponent(top),
                jnp.sum(rel * jnp.square(delta)).astype(jnp.float32),
                jnp.sum(rel * jnp.square(g_s)).astype(jnp.float32))
        return (new.astype(u.dtype), jnp.sum(m, dtype=jnp.int32),
                jnp.sum(abs_cos).astype(jnp.float32), *sums)

      new, m_leaf, cos_leaf, *leaf_sums = _sharding.call_with_auto_axes(
          leaf_update, (u, None, None, None, None, None), u, p, leaf_key,
          coef_raw)
      out[leaf.index] = new
      sums.append(leaf_sums)
      accepted += m_leaf
      pairs = (lay.neurons // 2 if pairing == 'disjoint' else
               lay.neurons * (lay.neurons - 1) // 2)
      tested += lay.layers * pairs
      cos_sum += cos_leaf
      cos_n += lay.layers * (pairs if pairing == 'disjoint' else 2 * pairs)
    new_state = HardCollisionState(
        count=_utils.increment(state.count),
        key=new_key,
        accepted_pairs=accepted,
        # Python floats: pair counts pass int32 at N ≈ 46k (an lm_head).
        accepted_fraction=(accepted.astype(jnp.float32)
                           / float(max(tested, 1))),
        mean_abs_cos=cos_sum / float(max(cos_n, 1)),
        relative_change=_relative_change(sums))
    return jax.tree_util.tree_unflatten(treedef, out), new_state

  return optax.GradientTransformation(
      *_sharding.with_varying_state(init_fn, update_fn))
