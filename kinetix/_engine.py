"""The collision engine: one leaf function, run over every selected leaf.

A collision of :mod:`kinetix.kinetic` is a *leaf function*: the physics of
one leaf (all of its stacked layers) in the leaf's own layout, returning a
:class:`LeafResult`. Everything the collisions have in common lives here:

* validation of the shared arguments (``coll_coef``, ``key``, the axes, the
  layer selection) at construction, and of the leaves at ``init``;
* the state: a step count, the typed PRNG key (split carry-first each
  step) and the statistics of the last step;
* leaf selection (masks), neuron layouts and per-leaf keys folded from the
  leaf's path, so that a leaf's collision never depends on the other
  leaves of the tree;
* **grouping**: leaves with the same layout (shape, dtype, axes, sharding)
  are collided by one loop over the group, so a model compiles one copy
  of each collision per layout, not one per leaf, and holds the
  temporaries of one leaf at a time;
* sharding (Explicit mesh axes run with Auto axes, ``shard_map`` checks);
* the statistics: ``mean_abs_cos``, ``relative_change`` and, for hard
  collisions, exact pair counts (two 32-bit words: no overflow at any
  vocabulary size, without x64).
"""

import warnings
from collections.abc import Callable, Sequence
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


# --------------------------------------------------------------------------
# Exact pair counts: two uint32 words, hi·2^32 + lo


def count(x: Any) -> jax.Array:
  """A count ``[hi, lo]`` (uint32) from a non-negative int32 ``x``."""
  x = jnp.asarray(x)
  return jnp.stack([jnp.zeros_like(x, jnp.uint32), x.astype(jnp.uint32)],
                   axis=-1)


def count_plus(a: jax.Array, b: jax.Array) -> jax.Array:
  """The sum of two counts (the carry of the low words into the high)."""
  lo = a[..., 1] + b[..., 1]
  carry = (lo < a[..., 1]).astype(jnp.uint32)
  return jnp.stack([a[..., 0] + b[..., 0] + carry, lo], axis=-1)


def count_add(c: jax.Array, x: Any) -> jax.Array:
  """``c + x`` for a count ``c`` and a non-negative int32 ``x``."""
  return count_plus(c, count(x))


def count_sum(c: jax.Array) -> jax.Array:
  """The sum of counts ``c`` of shape ``(..., 2)`` (fewer than 65,536).

  The low words are summed as two 16-bit halves, so no partial sum wraps.
  """
  c = c.reshape(-1, 2)
  lo16 = jnp.sum(c[:, 1] & jnp.uint32(0xFFFF), dtype=jnp.uint32)
  hi16 = jnp.sum(c[:, 1] >> jnp.uint32(16), dtype=jnp.uint32)
  hi = jnp.sum(c[:, 0], dtype=jnp.uint32)
  mid = hi16 + (lo16 >> jnp.uint32(16))
  lo = ((mid & jnp.uint32(0xFFFF)) << jnp.uint32(16)) | (
      lo16 & jnp.uint32(0xFFFF))
  return jnp.stack([hi + (mid >> jnp.uint32(16)), lo])


def count_float(c: jax.Array) -> jax.Array:
  """A count as float32 (exact up to 2^24, then to float32 rounding)."""
  return (c[..., 0].astype(jnp.float32) * jnp.float32(2.0 ** 32)
          + c[..., 1].astype(jnp.float32))


def count_int32(c: jax.Array) -> jax.Array:
  """A count as int32, saturating at ``2^31 − 1``."""
  big = (c[..., 0] > 0) | (c[..., 1] > jnp.uint32(2 ** 31 - 1))
  return jnp.where(big, jnp.int32(2 ** 31 - 1), c[..., 1].astype(jnp.int32))


# --------------------------------------------------------------------------
# What a collision supplies


class LeafResult(NamedTuple):
  """What a leaf function returns for one leaf (all of its layers)."""
  new: jax.Array          # the collided gradient, the leaf's shape, in the
                          #   compute dtype (at least float32).
  abs_cos: jax.Array      # f32[]: Σ|cos(w_i, w_j)| over `cos_pairs` pairs.
  sq_sums: tuple[jax.Array, jax.Array, jax.Array]
  # (e int32, |Δg|²/4^e f32, |g|²/4^e f32): see `relative_change`.
  accepted: jax.Array     # uint32[2]: pairs accepted (a `count`), or
                          #   `count(0)` for a collision without pairs.


class Collision(NamedTuple):
  """A collision as the engine runs it.

  ``leaf(w, g, key, layer_index, coef, lay)`` collides one leaf: ``w`` and
  ``g`` in the compute dtype and the leaf's layout ``lay``, ``key`` the
  leaf's key for this step, ``layer_index`` the indices of its layers
  (fold them into ``key`` for per-layer streams: a selected layer keeps the
  key it has when every layer collides), ``coef`` the coefficient.
  """
  name: str
  leaf: Callable[..., LeafResult]
  cos_pairs: Callable[[_neurons.Layout], int]   # per leaf
  tested_pairs: Callable[[_neurons.Layout], int] | None = None  # hard only
  min_neurons: int = 1       # leaves with fewer neurons pass through


class _Stats(NamedTuple):
  """Statistics summed over leaves (the engine's running totals)."""
  abs_cos: jax.Array     # f32[]: Σ|cos|
  e: jax.Array           # int32[]: the scale 4^e of d2 and g2
  d2: jax.Array          # f32[]: Σ|Δg|²/4^e
  g2: jax.Array          # f32[]: Σ|g|²/4^e
  accepted: jax.Array    # uint32[2]: a count


def _no_stats() -> _Stats:
  zero = jnp.zeros([], jnp.float32)
  return _Stats(zero, jnp.asarray(-(1 << 20), jnp.int32), zero, zero,
                count(jnp.zeros([], jnp.int32)))


def _merge_stats(a: _Stats, b: _Stats) -> _Stats:
  """``a + b``, on the larger of their two scales."""
  top = jnp.maximum(a.e, b.e)
  wa = jnp.ldexp(jnp.float32(1.0), 2 * (a.e - top))
  wb = jnp.ldexp(jnp.float32(1.0), 2 * (b.e - top))
  return _Stats(a.abs_cos + b.abs_cos, top, a.d2 * wa + b.d2 * wb,
                a.g2 * wa + b.g2 * wb, count_plus(a.accepted, b.accepted))


def _add_stats(a: _Stats, res: LeafResult) -> _Stats:
  """``a`` plus one leaf's result."""
  e, d2, g2 = res.sq_sums
  return _merge_stats(a, _Stats(res.abs_cos, e, d2, g2, res.accepted))


def _relative_change(st: _Stats) -> jax.Array:
  """``sqrt(Σ|Δg|² / Σ|g|²)``; 0 when every gradient is 0."""
  pos = st.g2 > 0
  return jnp.where(pos, jnp.sqrt(jnp.where(
      pos, st.d2 / jnp.where(pos, st.g2, 1.0), 1.0)), 0.0)


class _Leaf(NamedTuple):
  index: int                       # position among the flattened leaves
  path: str
  layout: _neurons.Layout          # of the collided view
  layer_index: tuple[int, ...]     # the collided layers
  full: _neurons.Layout            # of the whole leaf


# --------------------------------------------------------------------------
# Arguments


def check_arguments(coll_coef: Any, key: Any, neuron_axis: Any,
                    layer_axes: Any, layers: Any):
  """Validates the shared arguments; returns the normalised axes/layers."""
  _utils.check_scalar_or_schedule('coll_coef', coll_coef, lo=0.0, hi=1.0)
  _utils.validate_key(key)
  n_ax = -1 if neuron_axis is None else _utils.static_int('neuron_axis',
                                                         neuron_axis)
  l_axes = _neurons.normalize_layer_axes(layer_axes)
  if layers is None:
    return n_ax, l_axes, None
  if isinstance(layers, (int, np.integer)) and not isinstance(layers, bool):
    sel: tuple[int, ...] = (int(layers),)
  elif isinstance(layers, Sequence) and not isinstance(layers, str) and (
      len(layers) > 0):
    sel = tuple(_utils.static_int('layers', i) for i in layers)
  else:
    raise TypeError(f'layers must be an int, a non-empty sequence of ints or '
                    f'None; got {layers!r}')
  if not l_axes:
    raise ValueError(
        f'layers={layers!r} selects stacked layers, but layer_axes is empty: '
        f'say which axes stack the layers, e.g. layer_axes=0 for nnx.vmap or '
        f'nn.scan kernels (L, in, out).')
  return n_ax, l_axes, sel


def check_block(name: str, value: Any) -> int | None:
  """A positive static int, or ``None``."""
  if value is None:
    return None
  v = _utils.static_int(name, value)
  if v < 1:
    raise ValueError(f'{name} must be a positive int or None; got {v}')
  return v


def _layer_selection(layers: tuple[int, ...] | None, lay: _neurons.Layout,
                     path: str, shape: tuple[int, ...]) -> tuple[int, ...]:
  if layers is None:
    return tuple(range(lay.layers))
  out = []
  for i in layers:
    if not -lay.layers <= i < lay.layers:
      raise ValueError(
          f'layers={layers} is out of range for leaf {path!r} with shape '
          f'{shape}: it stacks {lay.layers} layers along layer_axes='
          f'{lay.layer_axes}; allowed indices are '
          f'{-lay.layers}..{lay.layers - 1}.')
    out.append(i % lay.layers)
  if len(set(out)) != len(out):
    raise ValueError(f'layers={layers} repeats a layer for leaf {path!r}.')
  return tuple(out)


# --------------------------------------------------------------------------
# Views: the collided layers of a leaf


def stacked_first(lay: _neurons.Layout) -> tuple[int, ...]:
  """The leaf's axes with the layer axes first, the others in order."""
  rest = tuple(a for a in range(len(lay.perm)) if a not in lay.layer_axes)
  return lay.layer_axes + rest


def _sub_layout(full: _neurons.Layout, shape: tuple[int, ...],
                n_sel: int, path: str) -> _neurons.Layout:
  """The layout of the ``(n_sel, *rest)`` view of the selected layers."""
  order = stacked_first(full)
  rest = order[len(full.layer_axes):]
  sub_shape = (n_sel, *tuple(shape[a] for a in rest))
  return _neurons.layout(sub_shape, 1 + rest.index(full.neuron_axis), (0,),
                         path)


def _take_layers(x: jax.Array, leaf: _Leaf) -> jax.Array:
  if leaf.layout == leaf.full:
    return x
  moved = jnp.transpose(x, stacked_first(leaf.full))
  nl = len(leaf.full.layer_axes)
  moved = moved.reshape((leaf.full.layers, *moved.shape[nl:]))
  return moved[np.asarray(leaf.layer_index)]


def _put_layers(x: jax.Array, new: jax.Array, leaf: _Leaf) -> jax.Array:
  if leaf.layout == leaf.full:
    return new
  order = stacked_first(leaf.full)
  moved = jnp.transpose(x, order)
  stacked_shape = moved.shape
  nl = len(leaf.full.layer_axes)
  moved = moved.reshape((leaf.full.layers, *stacked_shape[nl:]))
  moved = moved.at[np.asarray(leaf.layer_index)].set(new.astype(x.dtype))
  return jnp.transpose(moved.reshape(stacked_shape), tuple(np.argsort(order)))


# --------------------------------------------------------------------------
# Leaf selection


def _select(name: str, updates: Any, params: Any, mask: Any,
            neuron_axis: int, layer_axes: tuple[int, ...],
            layers: tuple[int, ...] | None, min_neurons: int):
  """Flattens ``updates``/``params`` and validates the selected leaves."""
  flat_u, treedef = jax.tree_util.tree_flatten_with_path(updates)
  paths = [_utils.path_to_str(p) for p, _ in flat_u]
  flat_p = _utils.flatten_like(
      treedef, params, f'{name}: params do not have the structure of the '
      'updates')
  flags = masks._resolve(mask, params, treedef, paths, name)  # pylint: disable=protected-access
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
    full = _neurons.layout(p_shape, neuron_axis, layer_axes, path)
    index = _layer_selection(layers, full, path, p_shape)
    if full.layers * full.neurons * full.features == 0:
      continue                # an empty leaf: nothing to collide
    if full.neurons < min_neurons:
      continue                # no pair of neurons
    lay = (full if layers is None else
           _sub_layout(full, p_shape, len(index), path))
    selected.append(_Leaf(i, path, lay, index, full))
  _sharding.warn_if_device_local(
      name, [(leaf.path, x) for leaf in selected
             for x in (flat_u[leaf.index][1], flat_p[leaf.index])],
      'its neurons collide only with the neurons of the same block, and '
      "their cosines use the block's features only", stacklevel=6)
  return [u for _, u in flat_u], flat_p, treedef, selected


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


def _groups(selected: list[_Leaf], us: list[Any], ps: list[Any]):
  """Selected leaves grouped by what stacking them needs to share."""
  groups: dict[Any, list[_Leaf]] = {}
  for leaf in selected:
    u, p = us[leaf.index], ps[leaf.index]
    key = (tuple(u.shape), jnp.dtype(u.dtype), jnp.dtype(p.dtype),
           leaf.full, leaf.layout, leaf.layer_index,
           _sharding.group_key(u), _sharding.group_key(p))
    groups.setdefault(key, []).append(leaf)
  return list(groups.values())


# --------------------------------------------------------------------------
# Running a group


def _after(new: jax.Array, res: LeafResult) -> jax.Array:
  """``new``, as a value that depends on every statistic of ``res``.

  A select on a predicate that is never true (the statistics are sums of
  non-negative terms, or NaN, which compares false): free, and it makes
  the statistics, which read the old gradient, operands of the result, so
  that XLA schedules them before the result is written (less temp memory on
  a large leaf: see the benchmark page).
  """
  e, d2, g2 = res.sq_sums
  never = ((d2 < 0) | (g2 < 0) | (res.abs_cos < 0)
           | (count_float(res.accepted) < 0) | (e < -(1 << 30)))
  return jnp.where(never, jnp.zeros_like(new), new)


def _loop_range(n: int) -> tuple[jax.Array, ...]:
  """``0, …, n − 1`` as int32 scalars, to be carried through a loop."""
  return tuple(jnp.int32(i) for i in range(n))


def _loop_range_step(k: jax.Array, n: int,
                     index: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
  """``index`` unchanged at step ``k < n`` of a loop of ``n`` steps.

  XLA cannot prove it unchanged, so the loop's outputs are runtime
  scalars, not constants folded into every kernel that uses them.
  """
  zero = (k >= n).astype(jnp.int32)
  return tuple(i + zero for i in index)


def _run_group(collision: Collision, group: list[_Leaf], us: list[Any],
               ps: list[Any], keys: jax.Array, coef: Any,
               cache: dict[Any, Any]):
  """Collides the leaves of one group; returns their updates and statistics.

  One leaf is collided directly. Several are collided by one loop over
  the group: one traced and compiled body per layout, the temporaries of
  one leaf live at a time (a ``vmap`` would hold every leaf's ``N×N``
  matrices at once), the statistics summed in the loop's carry. What the
  loop keeps cheap (see the benchmark page):

  * each step reads its leaf's weight and gradient with a ``lax.switch``
    over the group's leaves, not out of stacked copies: stacking them would
    copy the group's weights and gradients into fresh temp memory at every
    update, and the body's kernels read plain arrays;
  * the results are written in place into one stacked buffer, the loop's
    carry (the one copy the group holds), and read back at indices that
    the loop returns (:func:`_loop_range`), not at constants: the kernels
    that read them (AdamW's, next in a chain) are then the same for every
    leaf of the group, and XLA compiles one, not one per leaf;
  * each group starts its statistics from zero and the update adds the
    groups' totals: no group waits for another, so XLA may run them
    side by side.

  The group's computation is one ``jax.jit`` function, kept in ``cache``
  per group: an eager ``update`` runs it as one compiled program (cached
  across steps) rather than op by op; under an outer ``jit`` it is inlined.
  """
  lay, layer_index = group[0].layout, group[0].layer_index
  u_dtype = us[group[0].index].dtype
  cdt = _utils.compute_dtype(u_dtype)

  def one(totals, w, g, key, coef):
    res = collision.leaf(w.astype(cdt), g.astype(cdt), key, layer_index,
                         jnp.asarray(coef, cdt), lay)
    return _add_stats(totals, res), _after(res.new, res).astype(u_dtype)

  def run(u_leaves, p_leaves, keys, coef):
    totals = _no_stats()
    gs = [_take_layers(u, leaf) for u, leaf in zip(u_leaves, group,
                                                   strict=True)]
    ws = [_take_layers(p, leaf) for p, leaf in zip(p_leaves, group,
                                                   strict=True)]
    if len(group) == 1:
      totals, new = one(totals, ws[0], gs[0], keys[0], coef)
      news = [new]
    else:
      n = len(group)
      leaves = tuple(zip(ws, gs, strict=True))
      reads = [lambda ops, j=j: ops[j] for j in range(n)]

      def body(k, carry):
        totals, out, index = carry
        w, g = _sharding.switch(k, reads, leaves)
        totals, new = one(totals, w, g, keys[k], coef)
        out = jax.lax.dynamic_update_index_in_dim(out, new, k, 0)
        return totals, out, _loop_range_step(k, n, index)

      # Zeros like the gradients (their sharding, and inside shard_map
      # their varying axes), to be overwritten.
      out = jnp.broadcast_to(jnp.zeros_like(gs[0]), (n, *gs[0].shape))
      totals, out, index = jax.lax.fori_loop(
          0, n, body, (totals, out, _loop_range(n)))
      news = [_utils.read_row(out, i) for i in index]
    return tuple(_put_layers(u, new, leaf) for u, new, leaf in
                 zip(u_leaves, news, group, strict=True)), totals

  u_leaves = tuple(us[leaf.index] for leaf in group)
  p_leaves = tuple(ps[leaf.index] for leaf in group)
  like = jax.tree.map(lambda _: None, _no_stats())
  # ``run`` closes over the group and the update dtype: both are the key.
  key = (tuple(group), jnp.dtype(u_dtype))
  if key not in cache:
    cache[key] = jax.jit(run)
  jitted = cache[key]
  return _sharding.call_with_auto_axes(
      jitted, (u_leaves, like), u_leaves, p_leaves, keys, coef)


# --------------------------------------------------------------------------
# The transformation


def transformation(collision: Collision, state_cls: Any, *, coll_coef: Any,
                   key: Any, mask: Any, neuron_axis: int,
                   layer_axes: tuple[int, ...],
                   layers: tuple[int, ...] | None
                   ) -> optax.GradientTransformation:
  """The ``GradientTransformation`` of ``collision`` (arguments checked)."""
  name = collision.name
  counted = collision.tested_pairs is not None
  cache: dict[Any, Any] = {}      # one jitted function per group of leaves

  def select(updates, params):
    return _select(name, updates, params, mask, neuron_axis, layer_axes,
                   layers, collision.min_neurons)

  def stats(**fields):
    if not counted:
      fields.pop('accepted_pairs')
      fields.pop('accepted_fraction')
    return fields

  def init_fn(params):
    _utils.check_array_leaves(name, params)
    _warn_if_empty(name, select(params, params)[3], params)
    zero = jnp.zeros([], jnp.float32)
    return state_cls(
        count=jnp.zeros([], jnp.int32), key=_utils.canonicalize_key(key),
        **stats(accepted_pairs=jnp.zeros([], jnp.int32),
                accepted_fraction=zero, mean_abs_cos=zero,
                relative_change=zero))

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    if params is None:
      raise ValueError(f'{name} needs the current params: call '
                       f'tx.update(updates, state, params).')
    us, ps, treedef, selected = select(updates, params)
    coef = _utils.resolve(coll_coef, state.count)
    new_key, step_key = _rng.split(state.key)
    out = list(us)
    totals = _no_stats()
    # Each leaf's key for this step, folded from its path: all hashed at once.
    keys = _rng.fold_in_many(step_key, np.asarray(
        [_utils.path_seed(leaf.path) for leaf in selected], np.uint32))
    position = {leaf.index: i for i, leaf in enumerate(selected)}
    for group in _groups(selected, us, ps):
      group_keys = keys[np.asarray([position[leaf.index] for leaf in group])]
      news, group_totals = _run_group(collision, group, us, ps, group_keys,
                                      coef, cache)
      totals = _merge_stats(totals, group_totals)
      for leaf, new in zip(group, news, strict=True):
        out[leaf.index] = new
    cos_n = sum(collision.cos_pairs(leaf.layout) for leaf in selected)
    tested_pairs = collision.tested_pairs
    tested = 0 if tested_pairs is None else sum(
        tested_pairs(leaf.layout) for leaf in selected)
    new_state = state_cls(
        count=_utils.increment(state.count), key=new_key,
        **stats(
            accepted_pairs=count_int32(totals.accepted),
            # Python floats: pair counts pass 2^31 at N ≈ 65k (an lm_head).
            accepted_fraction=(count_float(totals.accepted)
                               / float(max(tested, 1))),
            mean_abs_cos=totals.abs_cos / float(max(cos_n, 1)),
            relative_change=_relative_change(totals)))
    return jax.tree_util.tree_unflatten(treedef, out), new_state

  return optax.GradientTransformation(
      *_sharding.with_varying_state(init_fn, update_fn))


def pairs_between(lay: _neurons.Layout) -> int:
  """Ordered pairs ``i ≠ j`` of a leaf's layers: ``L·N·(N − 1)``."""
  return lay.layers * lay.neurons * (lay.neurons - 1)


def unordered_pairs(lay: _neurons.Layout) -> int:
  """Unordered pairs of a leaf's layers: ``L·N·(N − 1)/2``."""
  return pairs_between(lay) // 2


def layer_keys(key: jax.Array, layer_index: tuple[int, ...]) -> jax.Array:
  """One key per layer: ``fold_in(key, l)`` for each ``l`` in the index."""
  return _rng.fold_in_many(key, np.asarray(layer_index, np.uint32))

