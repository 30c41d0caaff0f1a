"""The collision engine: grouping, blocked acceptance, exact counts, layers.

A leaf's collision must not depend on which other leaves share its tree
(leaves of one layout are stacked and collided together), the all-pairs
test in row blocks must accept exactly the pairs of the dense test, and
pair counts must stay exact past 2^31 without x64.
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import kinetix
from kinetix import _engine
from kinetix import kinetic

from _references import apply, authors_soft, from_neurons_np, hard_pairs
from _references import distinct_kernels, hard_reference, layer_key
from _references import neurons_np, rand

# One tree, several layouts: two (12, 7) kernels (one group), a (12, 7)
# kernel in bfloat16 (a group of its own) and two stacked (3, 7, 5) leaves.
SHAPES = {'a': (12, 7), 'b': (12, 7), 'half': (12, 7),
          'stack1': (3, 7, 5), 'stack2': (3, 7, 5)}


def _tree(seed, scale=1.0):
  tree = {k: jnp.asarray(rand(s, seed + i, scale))
          for i, (k, s) in enumerate(SHAPES.items())}
  tree['half'] = tree['half'].astype(jnp.bfloat16)
  return tree


# Grouping is the engine's, the same for every collision: the disjoint
# collision's per-leaf keys and layers are checked in test_selected_layers.
COLLISIONS = {
    'soft': lambda **kw: kinetic.soft_collision(0.3, noise_scale=1e-3, **kw),
    'hard': lambda **kw: kinetic.hard_collision(0.5, key=3, **kw),
}


@pytest.mark.parametrize('name', COLLISIONS)
def test_grouped_leaves_equal_each_leaf_alone(name):
  """Every leaf's update is what it is in a tree of its own."""
  params, grads = _tree(0, 0.1), _tree(100)
  stacked = lambda p: p.startswith('stack')  # noqa: E731
  tx = COLLISIONS[name](mask=lambda t: {k: not stacked(k) for k in t})
  tx_stack = COLLISIONS[name](layer_axes=0,
                              mask=lambda t: {k: stacked(k) for k in t})
  both = optax.chain(tx, tx_stack)
  out, (state, state_stack) = apply(both, grads, params)
  accepted = 0
  for k in SHAPES:
    alone = tx_stack if stacked(k) else tx
    one, one_state = apply(alone, {k: grads[k]}, {k: params[k]})
    assert one[k].dtype == grads[k].dtype
    tol = 1e-2 if k == 'half' else 2e-6
    np.testing.assert_allclose(np.asarray(out[k], np.float32),
                               np.asarray(one[k], np.float32),
                               rtol=tol, atol=tol, err_msg=k)
    if name != 'soft':
      accepted += int(one_state.accepted_pairs)
  if name != 'soft':
    assert accepted > 0
    assert (int(state.accepted_pairs) + int(state_stack.accepted_pairs)
            == accepted)


def test_grouped_statistics_are_the_totals_of_the_leaves():
  params, grads = _tree(0, 0.1), _tree(100)
  names = ('a', 'b', 'stack1')
  tx = kinetic.soft_collision(0.3)
  _, state = apply(tx, {k: grads[k] for k in names},
                   {k: params[k] for k in names})
  cos_sum = d2 = g2 = pairs = 0.0
  for k in names:
    one, s = apply(tx, {k: grads[k]}, {k: params[k]})
    n = SHAPES[k][-1]
    cos_sum += float(s.mean_abs_cos) * n * (n - 1)
    pairs += n * (n - 1)
    d2 += float(jnp.sum((one[k] - grads[k]) ** 2))
    g2 += float(jnp.sum(grads[k] ** 2))
  np.testing.assert_allclose(state.mean_abs_cos, cos_sum / pairs, rtol=1e-5)
  np.testing.assert_allclose(state.relative_change, np.sqrt(d2 / g2),
                             rtol=1e-5)


def test_a_group_compiles_one_collision_body():
  """Twelve same-shaped leaves trace the leaf function once, not twelve times."""
  calls = []
  leaf_fn = kinetic._soft_leaf  # pylint: disable=protected-access

  def counting(*args, **kwargs):
    calls.append(1)
    return leaf_fn(*args, **kwargs)

  params = {f'block{i}': jnp.ones((6, 5)) for i in range(12)}
  tx = kinetic.soft_collision(0.1)
  state = tx.init(params)
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(kinetic, '_soft_leaf', counting)
    tx = kinetic.soft_collision(0.1)
    jax.jit(tx.update).lower(params, state, params)
  assert len(calls) == 1


def _blocks(n):
  return {str(i): {'a': jnp.ones((16, 24)), 'b': jnp.ones((24, 16)),
                   'bias': jnp.ones(16)} for i in range(n)}


_MAKE = {'soft': lambda: kinetic.soft_collision(0.1),
         'hard': lambda: kinetic.hard_collision(0.1),
         'disjoint': lambda: kinetic.hard_collision(0.1, pairing='disjoint')}


# The reads are the engine's, the same for every collision: soft collision
# compiles fastest.
def test_more_blocks_compile_no_new_kernel():
  """3 or 6 blocks, collision then AdamW: the same distinct kernels.

  XLA compiles one kernel per distinct fused computation; a leaf read back
  from its group's stack at a constant offset would make every leaf's
  AdamW kernels distinct.
  """
  counts = []
  for n in (3, 6):
    tx = optax.chain(_MAKE['soft'](), optax.adamw(1e-3))
    params = _blocks(n)
    state = tx.init(params)
    compiled = jax.jit(tx.update).lower(params, state, params).compile()
    counts.append(len(distinct_kernels(compiled)))
  assert counts[0] == counts[1]


@pytest.mark.parametrize('name', ['bbi', 'ecdsep'])
def test_loss_optimizers_compile_no_new_kernel_per_block(name):
  """BBI and ECDSep on 3 or 6 blocks: the same distinct kernels.

  Every leaf draws its bounce or rotation from its own key, and every
  leaf's update reads sums over all leaves: a key read at a constant row,
  or the sum's additions fused into each leaf's kernel, would make every
  leaf's kernels distinct (a GPT-2 tree compiled for 20-26 s).
  """
  counts = []
  for n in (3, 6):
    tx = getattr(kinetix, name)(0.1)
    params = _blocks(n)
    state = tx.init(params)
    compiled = jax.jit(functools.partial(tx.update, value=jnp.float32(1.0))
                       ).lower(params, state, params).compile()
    counts.append(len(distinct_kernels(compiled)))
  assert counts[0] == counts[1]


def test_ecdsep_update_recomputes_the_kicked_momentum():
  """ECDSep's kicked momentum is recomputed where read, not stored.

  Its squared norm feeds the drift and the rotation; computed once behind
  a loop (as the other sums are, so that leaves share kernels), XLA would
  store the kicked momentum, a model-size buffer, at every step (+12 % step
  time on a GPT-2 tree).
  """
  params = {str(i): {'w': jnp.ones((128, 256)), 'b': jnp.ones(256)}
            for i in range(4)}
  tx = kinetix.ecdsep(0.1)
  state = tx.init(params)
  compiled = jax.jit(functools.partial(tx.update, value=jnp.float32(2.0))
                     ).lower(params, state, params).compile()
  size = sum(x.nbytes for x in jax.tree.leaves(params))
  assert compiled.memory_analysis().temp_size_in_bytes < 0.75 * size


@pytest.mark.parametrize('name', _MAKE)
def test_a_group_holds_one_stacked_buffer(name):
  """A group of 8 leaves costs one stacked buffer, its results, in place.

  Its weights and gradients are not stacked (each step reads its own leaf),
  and the results' stack is not copied in the loop: the update's temp
  memory is that of one leaf alone plus the 8 results.
  """
  def temp(params):
    tx = _MAKE[name]()
    state = tx.init(params)
    compiled = jax.jit(tx.update).lower(params, state, params).compile()
    return compiled.memory_analysis().temp_size_in_bytes, compiled.as_text()

  shape = (64, 96)
  leaf_bytes = 4 * shape[0] * shape[1]
  alone, _ = temp({'0': jnp.ones(shape)})
  grouped, text = temp({str(i): jnp.ones(shape) for i in range(8)})
  assert not re.findall(r'= f32\[8,64,96\]\{[\d,]*\} copy\(', text)
  assert grouped <= alone + 8.5 * leaf_bytes, (grouped / leaf_bytes,
                                               alone / leaf_bytes)


# --------------------------------------------------------------------------
# Blocked all-pairs acceptance


def _integer_layer(n, d, seed):
  """Small integers: many pairs tie at the largest |g_i − g_j|.

  Neuron ``k``'s gradient is ``±p_{k mod 4}`` for four ±1 patterns, so
  every opposite pair of a pattern is at the maximum ``2·sqrt(d)``.
  """
  rng = np.random.default_rng(seed)
  w = rng.integers(-2, 3, size=(d, n)).astype(np.float32)
  patterns = rng.choice([-1.0, 1.0], size=(4, d))
  signs = np.where(np.arange(n) % 8 < 4, 1.0, -1.0)
  g = (patterns[np.arange(n) % 4] * signs[:, None]).T.astype(np.float32)
  return w, g


@pytest.mark.parametrize('n,block_size,max_pairs', [
    (13, 1, None), (13, 4, 3), (13, 5, None), (13, 13, 2), (16, 7, 5)])
def test_blocked_acceptance_equals_the_dense_test(n, block_size, max_pairs):
  w, g = _integer_layer(n, 6, n)
  ref_pairs = hard_pairs(neurons_np(w), neurons_np(g), 0.3, 0.05)
  g_r = np.linalg.norm(neurons_np(g)[:, None] - neurons_np(g)[None], axis=-1)
  assert np.sum(g_r == g_r.max()) >= 4            # ties at the maximum
  dense, s_dense = apply(kinetic.hard_collision(0.3, key=1), {'k': g},
                         {'k': w})
  blocked, s_blk = apply(
      kinetic.hard_collision(0.3, key=1, block_size=block_size,
                             max_pairs=max_pairs), {'k': g}, {'k': w})
  assert int(s_dense.accepted_pairs) == int(s_blk.accepted_pairs) == len(
      ref_pairs) > 0
  ref, _ = hard_reference(neurons_np(w), neurons_np(g), 0.3, 0.05,
                          layer_key(1, 'k'))
  np.testing.assert_allclose(blocked['k'], ref.T, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(blocked['k'], dense['k'], rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(s_blk.mean_abs_cos, s_dense.mean_abs_cos,
                             rtol=1e-6)
  np.testing.assert_allclose(s_blk.relative_change, s_dense.relative_change,
                             rtol=1e-6)


def test_blocked_acceptance_on_stacked_layers_of_different_scales():
  """Each layer's maximum is its own, across blocks."""
  w, g = rand((3, 5, 11), 7, 0.1), rand((3, 5, 11), 8)
  g[1] *= 1e-3
  full, s_full = apply(kinetic.hard_collision(0.4, layer_axes=0), {'k': g},
                       {'k': w})
  blocked, s_blk = apply(kinetic.hard_collision(0.4, layer_axes=0,
                                                block_size=3), {'k': g},
                         {'k': w})
  expected = sum(len(hard_pairs(neurons_np(w[i]), neurons_np(g[i]), 0.4,
                                0.05)) for i in range(3))
  assert int(s_full.accepted_pairs) == int(s_blk.accepted_pairs) == expected
  np.testing.assert_allclose(blocked['k'], full['k'], rtol=1e-6, atol=1e-9)


def test_vocabulary_head_is_tested_in_bounded_blocks():
  """A 50,257-neuron head: no (N, N) array in the compiled update."""
  shape = jax.ShapeDtypeStruct((64, 50_257), jnp.float32)
  tx = kinetic.hard_collision(0.1)
  state = tx.init({'k': shape})
  compiled = jax.jit(tx.update).lower({'k': shape}, state,
                                      {'k': shape}).compile()
  temp = compiled.memory_analysis().temp_size_in_bytes
  assert temp < 2 * 1024 ** 3, temp / 1024 ** 3   # dense: N² ≈ 10 GB


# --------------------------------------------------------------------------
# Exact counts


def _value(c):
  c = np.asarray(c, np.uint64)
  return (int(c[..., 0]) << 32) + int(c[..., 1])


def test_counts_add_past_two_to_the_31_and_32():
  c = _engine.count(jnp.int32(2 ** 31 - 1))
  total = 2 ** 31 - 1
  for x in (2 ** 31 - 1, 5, 2 ** 31 - 1, 2 ** 30, 2 ** 31 - 1):
    c = _engine.count_add(c, jnp.int32(x))
    total += x
    assert _value(c) == total
  assert total > 2 ** 33
  assert int(_engine.count_int32(c)) == 2 ** 31 - 1          # saturates
  np.testing.assert_allclose(_engine.count_float(c), total, rtol=1e-7)
  small = _engine.count(jnp.int32(12345))
  assert int(_engine.count_int32(small)) == 12345


def test_count_sums_of_many_large_counts_are_exact():
  rng = np.random.default_rng(0)
  hi = rng.integers(0, 4, size=1000, dtype=np.uint32)
  lo = rng.integers(2 ** 31, 2 ** 32, size=1000, dtype=np.uint64).astype(
      np.uint32)
  counts = jnp.stack([jnp.asarray(hi), jnp.asarray(lo)], axis=-1)
  total = sum((int(h) << 32) + int(v) for h, v in zip(hi, lo, strict=True))
  assert _value(_engine.count_sum(counts)) == total
  assert _value(jax.jit(_engine.count_sum)(counts.reshape(10, 100, 2))) == (
      total)


def test_leaf_counts_are_summed_exactly_across_leaves():
  """The engine's running totals carry into the high word."""
  stats = _engine._no_stats()  # pylint: disable=protected-access
  total = 0
  for k in range(5):
    m = 2 ** 31 - 1 - k
    res = _engine.LeafResult(jnp.zeros(()), jnp.zeros(()),
                             (jnp.int32(0), jnp.float32(0), jnp.float32(1)),
                             _engine.count(jnp.int32(m)))
    stats = _engine._add_stats(stats, res)  # pylint: disable=protected-access
    total += m
  assert _value(stats.accepted) == total > 2 ** 33


def test_many_chunks_and_blocks_count_every_pair():
  """Every pair of 40 neurons accepted, in 7-row blocks and 3-pair chunks."""
  w, g = rand((5, 40), 1, 0.01), rand((5, 40), 2)
  out, state = apply(kinetic.hard_collision(1.0, distance_scale=0.0,
                                            block_size=7, max_pairs=3),
                     {'k': g}, {'k': w})
  assert int(state.accepted_pairs) == 780
  np.testing.assert_allclose(state.accepted_fraction, 1.0)
  np.testing.assert_allclose(out['k'].sum(axis=1), g.sum(axis=1), atol=1e-4)


# --------------------------------------------------------------------------
# Layer selection


@pytest.mark.parametrize('make', [
    lambda **kw: kinetic.soft_collision(0.3, noise_scale=1e-3, **kw),
    lambda **kw: kinetic.hard_collision(0.6, key=2, **kw),
    lambda **kw: kinetic.hard_collision(0.6, key=2, pairing='disjoint', **kw),
], ids=['soft', 'hard', 'disjoint'])
def test_selected_layers_collide_as_in_the_full_stack(make):
  """``layers=`` keeps a selected layer's key: its update is unchanged."""
  w, g = rand((4, 6, 8), 10, 0.1), rand((4, 6, 8), 11)
  full, _ = apply(make(layer_axes=0), {'k': g}, {'k': w})
  some, _ = apply(make(layer_axes=0, layers=(-1, 1)), {'k': g}, {'k': w})
  for layer in (1, 3):
    np.testing.assert_allclose(some['k'][layer], full['k'][layer],
                               rtol=1e-6, atol=1e-6)
  for layer in (0, 2):
    np.testing.assert_array_equal(some['k'][layer], g[layer])


def test_layers_on_two_layer_axes_and_a_moved_neuron_axis():
  w, g = rand((2, 3, 5, 6), 12, 0.3), rand((2, 3, 5, 6), 13)
  kw = dict(layer_axes=(0, 1), neuron_axis=2)
  full, _ = apply(kinetic.soft_collision(0.3, **kw), {'k': g}, {'k': w})
  last, _ = apply(kinetic.soft_collision(0.3, layers=-1, **kw), {'k': g},
                  {'k': w})
  np.testing.assert_allclose(last['k'][1, 2], full['k'][1, 2], rtol=1e-6,
                             atol=1e-6)
  np.testing.assert_array_equal(last['k'][0], g[0])
  np.testing.assert_array_equal(last['k'][1, :2], g[1, :2])


def test_layer_selection_errors_name_the_argument_and_leaf():
  with pytest.raises(ValueError, match='layer_axes is empty'):
    kinetic.soft_collision(layers=-1)
  with pytest.raises(TypeError, match='layers must be'):
    kinetic.hard_collision(layers='last', layer_axes=0)
  tx = kinetic.soft_collision(layers=4, layer_axes=0)
  with pytest.raises(ValueError, match=r"out of range for leaf 'blocks'.*"
                     r'-4\.\.3'):
    tx.init({'blocks': jnp.ones((4, 3, 5))})


# --------------------------------------------------------------------------
# The authors' collision types


AUTHORS_TYPES = {
    'wg': dict(min_similarity=0.0),
    'wg_i': dict(include_self=False, min_similarity=0.0),
    'wg_t': dict(include_self=False, partners='higher', min_similarity=0.0),
    'wg_e': dict(include_self=False, normalize=True, min_similarity=0.0),
}


@pytest.mark.parametrize('collision_type', AUTHORS_TYPES)
@pytest.mark.parametrize('block_size', [None, 3])
def test_authors_collision_types_match_their_formulas(collision_type,
                                                      block_size):
  """A NumPy transcription of the authors' ko.py, on a Flax kernel."""
  w, g = rand((9, 7), 20, 0.5), rand((9, 7), 21)
  w[:, :3] += w[:, 3:4]                          # aligned neurons
  g[:, :3] += 2 * g[:, 3:4]
  tx = kinetic.soft_collision(0.1, block_size=block_size,
                              **AUTHORS_TYPES[collision_type])
  out, _ = apply(tx, {'k': g}, {'k': w})
  # PyTorch rows are neurons: the Flax kernel transposed.
  ref = authors_soft(np.asarray(w.T, np.float64), np.asarray(g.T, np.float64),
                     0.1, collision_type)
  np.testing.assert_allclose(out['k'], ref.T, rtol=1e-5, atol=1e-6)


def test_normalized_repulsion_is_per_layer_and_fixed_in_size():
  w, g = rand((3, 8, 6), 22, 0.5), rand((3, 8, 6), 23)
  g[1] *= 1e-6                                   # layers of different scales
  tx = kinetic.soft_collision(0.2, layer_axes=0, include_self=False,
                              normalize=True, min_similarity=0.0)
  out, state = apply(tx, {'k': g}, {'k': w})
  for layer in range(3):
    ref = authors_soft(np.asarray(w[layer].T, np.float64),
                       np.asarray(g[layer].T, np.float64), 0.2, 'wg_e')
    np.testing.assert_allclose(out['k'][layer], ref.T, rtol=1e-5,
                               atol=1e-6 * np.abs(g[layer]).max())
    change = np.linalg.norm(out['k'][layer] - g[layer])
    np.testing.assert_allclose(change, 0.2 * np.linalg.norm(g[layer]),
                               rtol=1e-5)
  np.testing.assert_allclose(state.relative_change, 0.2, rtol=1e-5)


def test_normalized_collision_in_bfloat16_and_with_zero_gradients():
  w, g = rand((8, 6), 24, 0.5), rand((8, 6), 25)
  out, _ = apply(kinetic.soft_collision(0.2, normalize=True),
                 {'k': jnp.asarray(g, jnp.bfloat16)},
                 {'k': jnp.asarray(w, jnp.bfloat16)})
  ref, _ = apply(kinetic.soft_collision(0.2, normalize=True), {'k': g},
                 {'k': w})
  assert out['k'].dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(out['k'], np.float32), ref['k'],
                             rtol=3e-2, atol=3e-2)
  zero, state = apply(kinetic.soft_collision(0.2, normalize=True),
                      {'k': jnp.zeros((8, 6))}, {'k': w})
  np.testing.assert_array_equal(zero['k'], 0.0)
  assert float(state.relative_change) == 0.0


def test_higher_partners_match_the_pair_loop_on_every_layout():
  from _references import soft_reference  # pylint: disable=g-import-not-at-top
  w, g = rand((5, 7, 3), 26), rand((5, 7, 3), 27)
  out, _ = apply(kinetic.soft_collision(0.3, neuron_axis=1,
                                        partners='higher'), {'k': g},
                 {'k': w})
  ref = soft_reference(neurons_np(w, 1), neurons_np(g, 1), 0.3,
                       partners='higher')
  np.testing.assert_allclose(out['k'], from_neurons_np(ref, w.shape, 1),
                             rtol=1e-5, atol=1e-5)
