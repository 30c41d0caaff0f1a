"""KO collisions against dense, obviously-correct references and physics laws."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kinetix import _neurons
from kinetix import kinetic
from kinetix import masks

from _references import apply as _apply
from _references import disjoint_reference
from _references import from_neurons_np as _from_neurons_np
from _references import hard_reference
from _references import layer_key as _layer_key
from _references import neurons_np as _neurons_np
from _references import rand as _rand
from _references import soft_reference


# ----------------------------------------------------------------------------
# Soft collision


@pytest.mark.parametrize('shape,neuron_axis', [
    ((7, 5), -1),          # Flax Dense kernel (in, out)
    ((5, 7), 0),           # PyTorch-style (out, in)
    ((3, 3, 2, 6), -1),    # Flax Conv kernel (kh, kw, in, out)
    ((4, 6, 3), 1),        # neurons between two feature axes
])
@pytest.mark.parametrize('include_self,min_similarity', [
    (True, None), (False, None), (True, 0.0), (False, 0.2)])
def test_soft_matches_dense_reference(shape, neuron_axis, include_self,
                                      min_similarity):
  w, g = _rand(shape, 0), _rand(shape, 1)
  tx = kinetic.soft_collision(0.3, neuron_axis=neuron_axis,
                              include_self=include_self,
                              min_similarity=min_similarity)
  updates, _ = _apply(tx, {'k': g}, {'k': w})
  ref = soft_reference(_neurons_np(w, neuron_axis), _neurons_np(g, neuron_axis),
                       0.3, include_self, min_similarity)
  np.testing.assert_allclose(updates['k'],
                             _from_neurons_np(ref, shape, neuron_axis),
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('block_size', [1, 3, 4, 16])
def test_soft_blocked_equals_unblocked(block_size):
  w, g = _rand((6, 11), 2), _rand((6, 11), 3)
  full, s_full = _apply(kinetic.soft_collision(0.2), {'k': g}, {'k': w})
  blocked, s_blk = _apply(kinetic.soft_collision(0.2, block_size=block_size),
                          {'k': g}, {'k': w})
  np.testing.assert_allclose(blocked['k'], full['k'], rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(s_blk.mean_abs_cos, s_full.mean_abs_cos,
                             rtol=1e-5)


def test_soft_stacked_layers_collide_within_their_layer():
  w, g = _rand((3, 4, 5), 4), _rand((3, 4, 5), 5)     # (L, in, out)
  stacked, _ = _apply(kinetic.soft_collision(0.4, layer_axes=0),
                      {'k': g}, {'k': w})
  for layer in range(3):
    single, _ = _apply(kinetic.soft_collision(0.4), {'k': g[layer]},
                       {'k': w[layer]})
    np.testing.assert_allclose(stacked['k'][layer], single['k'], rtol=1e-6,
                               atol=1e-6)


def test_soft_zero_rows_and_zero_gradients_give_no_nan():
  w = _rand((4, 5), 6)
  w[:, 2] = 0.0                                 # a dead neuron
  g = _rand((4, 5), 7)
  g[:, 3] = 0.0                                 # a neuron without gradient
  updates, state = _apply(kinetic.soft_collision(0.5), {'k': g}, {'k': w})
  assert np.all(np.isfinite(updates['k']))
  np.testing.assert_array_equal(updates['k'][:, 3], 0.0)
  ref = soft_reference(_neurons_np(w), _neurons_np(g), 0.5)
  np.testing.assert_allclose(updates['k'], ref.T, rtol=1e-5, atol=1e-6)
  assert np.isfinite(state.mean_abs_cos)
  zeros, _ = _apply(kinetic.soft_collision(0.5), {'k': np.zeros((4, 5))},
                    {'k': np.zeros((4, 5))})
  np.testing.assert_array_equal(zeros['k'], 0.0)


def test_soft_identity_at_zero_coefficient():
  w, g = _rand((6, 4), 8), _rand((6, 4), 9)
  updates, _ = _apply(kinetic.soft_collision(0.0), {'k': g}, {'k': w})
  np.testing.assert_array_equal(updates['k'], g)


def test_soft_noise_is_keyed_and_scaled():
  w, g = _rand((64, 32), 10), np.zeros((64, 32), np.float32)
  a, _ = _apply(kinetic.soft_collision(0.1, noise_scale=1e-2, key=1),
                {'k': g}, {'k': w})
  b, _ = _apply(kinetic.soft_collision(0.1, noise_scale=1e-2, key=1),
                {'k': g}, {'k': w})
  c, _ = _apply(kinetic.soft_collision(0.1, noise_scale=1e-2, key=2),
                {'k': g}, {'k': w})
  np.testing.assert_array_equal(a['k'], b['k'])
  assert not np.allclose(a['k'], c['k'])
  assert abs(np.std(a['k']) - 1e-2) < 1e-3
  assert abs(np.mean(a['k'])) < 1e-3


def test_soft_state_reports_similarity_and_strength():
  w = np.array([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]], np.float32)  # 3 neurons
  g = np.array([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]], np.float32)
  _, state = _apply(kinetic.soft_collision(0.5), {'k': g}, {'k': w})
  # |cos|: (0,1) = 1, (0,2) = 0, (1,2) = 0 -> mean over 6 ordered pairs = 1/3
  np.testing.assert_allclose(state.mean_abs_cos, 1 / 3, rtol=1e-6)
  assert state.relative_change > 0
  assert int(state.count) == 1


@pytest.mark.parametrize('kwargs', [
    dict(layer_axes=(0, 2), neuron_axis=1),
    dict(layer_axes=(2, 0)),
    dict(layer_axes=2, neuron_axis=0, block_size=2),
    dict(layer_axes=2, neuron_axis=0, noise_scale=1e-2),
], ids=['layers-0-2', 'layers-2-0', 'blocked', 'noise'])
def test_soft_relative_change_is_exact_on_stacked_layers(kwargs):
  """|g|² is summed from the neurons' scales: check it against NumPy.

  Neurons (and layers) whose scales differ by 1e8 catch a scale paired
  with the wrong neuron.
  """
  w, g = _rand((3, 5, 4, 6), 13), _rand((3, 5, 4, 6), 14)
  g[1] *= 1e-3
  g[:, :, 2] *= 1e5
  tx = kinetic.soft_collision(0.3, key=3, **kwargs)
  out, state = tx.update({'k': g}, tx.init({'k': w}), {'k': w})
  change = np.asarray(out['k'], np.float64) - g
  expected = np.sqrt(np.sum(change ** 2) / np.sum(np.float64(g) ** 2))
  np.testing.assert_allclose(state.relative_change, expected, rtol=1e-5)


def test_soft_schedule_coefficient():
  w, g = _rand((5, 4), 11), _rand((5, 4), 12)
  tx = kinetic.soft_collision(optax.linear_schedule(0.0, 1.0, 10))
  state = tx.init({'k': w})
  first, state = tx.update({'k': g}, state, {'k': w})
  np.testing.assert_allclose(first['k'], g)    # coefficient 0 at step 0
  second, _ = tx.update({'k': g}, state, {'k': w})
  ref = soft_reference(_neurons_np(w), _neurons_np(g), 0.1)
  np.testing.assert_allclose(second['k'], ref.T, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------
# Hard collision, all pairs


# Every chunk size on the case with the most accepted pairs; chunking is
# covered at length by test_hard_result_independent_of_chunking.
@pytest.mark.parametrize('coef,kappa,max_pairs', [
    (0.9, 0.05, None), (0.9, 0.05, 1), (0.9, 0.05, 2), (0.5, 0.0, None),
    (0.3, 1.0, 2)])
def test_hard_matches_dense_reference(coef, kappa, max_pairs):
  w, g = _rand((5, 7), 13, 0.3), _rand((5, 7), 14)
  tx = kinetic.hard_collision(coef, key=3, distance_scale=kappa,
                              max_pairs=max_pairs)
  updates, state = _apply(tx, {'k': g}, {'k': w})
  ref, accepted = hard_reference(_neurons_np(w), _neurons_np(g), coef, kappa,
                                 _layer_key(3, 'k'))
  assert int(state.accepted_pairs) == accepted
  np.testing.assert_allclose(state.accepted_fraction, accepted / 21)
  np.testing.assert_allclose(updates['k'], ref.T, rtol=1e-5, atol=1e-5)


def test_hard_conv_layout_matches_reference():
  w, g = _rand((2, 2, 3, 5), 15, 0.2), _rand((2, 2, 3, 5), 16)
  updates, _ = _apply(
      kinetic.hard_collision(0.8, key=0, distance_scale=0.1), {'c': g},
      {'c': w})
  ref, accepted = hard_reference(_neurons_np(w), _neurons_np(g), 0.8, 0.1,
                                 _layer_key(0, 'c'))
  assert accepted > 0
  np.testing.assert_allclose(updates['c'], _from_neurons_np(ref, w.shape),
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('pairing', ['all', 'disjoint'])
def test_hard_conserves_momentum(pairing):
  w, g = _rand((16, 24), 17, 0.1), _rand((16, 24), 18)
  updates, state = _apply(
      kinetic.hard_collision(0.7, key=4, distance_scale=0.05, pairing=pairing),
      {'k': g}, {'k': w})
  assert int(state.accepted_pairs) > 0
  assert not np.allclose(updates['k'], g)
  np.testing.assert_allclose(updates['k'].sum(axis=1), g.sum(axis=1),
                             atol=2e-5)


def test_disjoint_conserves_kinetic_energy_and_pairs_once():
  w, g = _rand((10, 9), 19, 0.1), _rand((10, 9), 20)      # 9 neurons: odd
  updates, state = _apply(
      kinetic.hard_collision(1.0, key=5, pairing='disjoint',
                             distance_scale=0.0), {'k': g}, {'k': w})
  assert int(state.accepted_pairs) == 4 - 1 or int(state.accepted_pairs) == 4
  np.testing.assert_allclose(np.sum(updates['k']**2), np.sum(g**2), rtol=1e-5)
  per_neuron = np.linalg.norm(updates['k'] - g, axis=0)
  assert np.sum(per_neuron == 0) >= 1             # the odd neuron sits out


@pytest.mark.parametrize('shape,neuron_axis,columns', [
    ((6, 9), -1, True),         # Flax Dense (in, out): used as stored
    ((2, 3, 4, 7), -1, True),   # Flax Conv (kh, kw, in, out): as stored
    ((9, 6), 0, False),         # PyTorch-style (out, in): rows
    ((6, 3, 9), 2, True),       # features first, neurons last
    ((6, 9, 3), 1, False),      # neurons in the middle: transposed to rows
])
def test_disjoint_matches_reference_on_every_layout(shape, neuron_axis,
                                                    columns):
  w, g = _rand(shape, 40, 0.3), _rand(shape, 41)
  w[(slice(None),) * (neuron_axis % w.ndim) + (1,)] = 0.0   # a dead neuron
  tx = kinetic.hard_collision(0.4, key=3, pairing='disjoint',
                              neuron_axis=neuron_axis, distance_scale=0.2)
  updates, state = _apply(tx, {'k': g}, {'k': w})
  ref, accepted, mean_abs_cos = disjoint_reference(
      _neurons_np(w, neuron_axis), _neurons_np(g, neuron_axis), 0.4, 0.2,
      _layer_key(3, 'k'), columns)
  assert accepted > 0       # and some pairs rejected in most cases
  assert int(state.accepted_pairs) == accepted
  np.testing.assert_allclose(state.mean_abs_cos, mean_abs_cos, rtol=1e-5)
  np.testing.assert_allclose(
      updates['k'], _from_neurons_np(ref, shape, neuron_axis), rtol=1e-5,
      atol=1e-5)


@pytest.mark.parametrize('shape,neuron_axis,columns', [
    ((3, 6, 9), -1, True),      # nnx.vmap-stacked Dense kernels (L, in, out)
    ((3, 9, 6), 1, False),      # stacked (L, out, in)
])
def test_disjoint_stacked_layers_match_the_reference_per_layer(
    shape, neuron_axis, columns):
  """Each layer gets its own matching and directions (its key folded in)."""
  w, g = _rand(shape, 44, 0.3), _rand(shape, 45)
  tx = kinetic.hard_collision(0.5, key=4, pairing='disjoint', layer_axes=0,
                              neuron_axis=neuron_axis, distance_scale=0.2)
  updates, state = _apply(tx, {'k': g}, {'k': w})
  from kinetix import _utils
  _, step_key = jax.random.split(_utils.canonicalize_key(4))
  leaf_key = jax.random.fold_in(step_key, _utils.path_seed('k'))
  axis = neuron_axis if neuron_axis < 0 else neuron_axis - 1   # in a layer
  accepted, cos_sum = 0, 0.0
  for layer in range(shape[0]):
    ref, m, mean_abs_cos = disjoint_reference(
        _neurons_np(w[layer], axis), _neurons_np(g[layer], axis), 0.5, 0.2,
        jax.random.fold_in(leaf_key, layer), columns)
    np.testing.assert_allclose(updates['k'][layer],
                               _from_neurons_np(ref, shape[1:], axis),
                               rtol=1e-5, atol=1e-5)
    accepted += m
    cos_sum += mean_abs_cos
  assert int(state.accepted_pairs) == accepted > 0
  np.testing.assert_allclose(state.mean_abs_cos, cos_sum / shape[0],
                             rtol=1e-5)


def test_disjoint_layouts_share_matching_and_verdicts():
  """A (D, N) kernel and its (N, D) transpose: same pairs, same physics.

  Only the random directions are drawn in another order; what each pair
  conserves (centre of mass and relative speed) is the same.
  """
  w, g = _rand((12, 10), 42, 0.3), _rand((12, 10), 43)
  make = lambda axis: kinetic.hard_collision(  # noqa: E731
      0.7, key=9, pairing='disjoint', neuron_axis=axis, distance_scale=0.2)
  cols, s_cols = _apply(make(-1), {'k': g}, {'k': w})
  rows, s_rows = _apply(make(0), {'k': g.T}, {'k': w.T})
  assert int(s_cols.accepted_pairs) == int(s_rows.accepted_pairs) > 0
  np.testing.assert_allclose(s_cols.mean_abs_cos, s_rows.mean_abs_cos,
                             rtol=1e-6)
  perm_key, _ = jax.random.split(_layer_key(9, 'k'))
  perm = np.asarray(jax.random.permutation(perm_key, 10))
  c, r = np.asarray(cols['k']).T, np.asarray(rows['k'])
  for a, b in zip(perm[0::2], perm[1::2], strict=True):
    np.testing.assert_allclose(c[a] + c[b], r[a] + r[b], atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(c[a] - c[b]),
                               np.linalg.norm(r[a] - r[b]), rtol=1e-5)


def test_two_neuron_collision_is_elastic():
  w = np.zeros((6, 2), np.float32)
  g = _rand((6, 2), 21)
  updates, state = _apply(kinetic.hard_collision(1.0, key=6), {'k': g},
                          {'k': w})
  assert int(state.accepted_pairs) == 1
  gi, gj = g[:, 0], g[:, 1]
  ui, uj = updates['k'][:, 0], updates['k'][:, 1]
  g_cm = (gi + gj) / 2
  np.testing.assert_allclose((ui + uj) / 2, g_cm, atol=1e-6)   # centre of mass
  half = np.linalg.norm(gi - gj) / 2
  np.testing.assert_allclose(np.linalg.norm(ui - g_cm), half, rtol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(uj - g_cm), half, rtol=1e-5)
  np.testing.assert_allclose(ui - g_cm, -(uj - g_cm), atol=1e-6)  # n_ji=-n_ij
  # A single collision conserves kinetic energy as well.
  np.testing.assert_allclose(np.sum(updates['k']**2), np.sum(g**2), rtol=1e-5)


def test_pair_directions_are_unit_antisymmetric_and_isotropic():
  key = jax.random.key(0)
  d = 4
  i = jnp.zeros(4000, jnp.int32)
  j = jnp.arange(1, 4001, dtype=jnp.int32)
  n = np.asarray(_neurons.unit_directions(_neurons.pair_keys(key, i, j), d,
                                          jnp.float32))
  np.testing.assert_allclose(np.linalg.norm(n, axis=1), 1.0, rtol=1e-6)
  assert np.abs(n.mean(axis=0)).max() < 0.05            # isotropic mean
  np.testing.assert_allclose(n.T @ n / len(n), np.eye(d) / d, atol=0.02)
  # distinct pairs get distinct directions, the same pair the same one
  again = _neurons.unit_directions(_neurons.pair_keys(key, i[:3], j[:3]), d,
                                   jnp.float32)
  np.testing.assert_array_equal(again, n[:3])
  assert np.abs(n[0] - n[1]).max() > 1e-3
  # antisymmetry in the collision: both partners move by opposite amounts
  w = np.zeros((3, 2), np.float32)
  g = _rand((3, 2), 22)
  updates, _ = _apply(kinetic.hard_collision(1.0, key=1), {'k': g}, {'k': w})
  np.testing.assert_allclose(updates['k'][:, 0] - g[:, 0],
                             -(updates['k'][:, 1] - g[:, 1]), atol=1e-6)


@pytest.mark.parametrize('pairing', ['all', 'disjoint'])
def test_hard_identity_at_zero_coefficient(pairing):
  w, g = _rand((8, 6), 23), _rand((8, 6), 24)
  updates, state = _apply(kinetic.hard_collision(0.0, pairing=pairing),
                          {'k': g}, {'k': w})
  np.testing.assert_array_equal(updates['k'], g)
  assert int(state.accepted_pairs) == 0


def test_far_apart_neurons_never_collide():
  # Two clusters of 4 neurons, 100 apart; kappa = 1 makes cross pairs
  # exp(-100) ~ 0, so only within-cluster pairs may be accepted.
  w = _rand((3, 8), 25, 0.01)
  w[:, 4:] += 100.0
  g = _rand((3, 8), 26)
  updates, state = _apply(kinetic.hard_collision(1.0, distance_scale=1.0),
                          {'k': g}, {'k': w})
  assert 0 < int(state.accepted_pairs) <= 12
  for cluster in (slice(0, 4), slice(4, 8)):
    np.testing.assert_allclose(updates['k'][:, cluster].sum(axis=1),
                               g[:, cluster].sum(axis=1), atol=1e-5)


@pytest.mark.parametrize('pairing', ['all', 'disjoint'])
def test_all_equal_gradients_are_left_alone(pairing):
  w = _rand((4, 6), 27)
  g = np.tile(_rand((4, 1), 28), (1, 6))        # every neuron: same gradient
  updates, state = _apply(kinetic.hard_collision(1.0, pairing=pairing),
                          {'k': g}, {'k': w})
  np.testing.assert_array_equal(updates['k'], g)
  assert int(state.accepted_pairs) == 0
  zero, _ = _apply(kinetic.hard_collision(1.0, pairing=pairing),
                   {'k': np.zeros((4, 6))}, {'k': np.zeros((4, 6))})
  np.testing.assert_array_equal(zero['k'], 0.0)


@pytest.mark.parametrize('pairing', ['all', 'disjoint'])
def test_hard_keys_reproducible_and_advancing(pairing):
  w, g = _rand((6, 10), 29, 0.1), _rand((6, 10), 30)
  make = lambda key: kinetic.hard_collision(0.9, key=key, pairing=pairing,
                                            distance_scale=0.05)
  # The key lives in the state: one compiled update serves every key.
  update = jax.jit(make(7).update)
  apply = lambda key: update({'k': g}, make(key).init({'k': w}), {'k': w})
  a, sa = apply(7)
  b, _ = apply(jax.random.key(7))
  c, _ = apply(8)
  legacy, _ = apply(jax.random.PRNGKey(7))
  np.testing.assert_array_equal(a['k'], b['k'])
  np.testing.assert_array_equal(a['k'], legacy['k'])
  assert not np.allclose(a['k'], c['k'])
  second, _ = update({'k': g}, sa, {'k': w})
  assert not np.allclose(second['k'], a['k'])     # new step, new directions


def test_hard_result_independent_of_chunking():
  w, g = _rand((9, 20), 31, 0.05), _rand((9, 20), 32)
  results = []
  for max_pairs in [None, 1, 4, 36]:
    u, s = _apply(kinetic.hard_collision(0.6, key=2, distance_scale=0.05,
                                         max_pairs=max_pairs),
                  {'k': g}, {'k': w})
    results.append(u['k'])
  assert int(s.accepted_pairs) > 4      # small capacities took many chunks
  for r in results[1:]:
    np.testing.assert_allclose(r, results[0], rtol=1e-5, atol=1e-5)


def test_hard_first_chunk_then_full_chunks_equal_one_chunk():
  # 40 neurons, every one of the 780 pairs accepted: the default capacity
  # (160) collides a first chunk of 64 pairs, then chunks of 160; one chunk
  # of 1000 and chunks of 7 must give the same update.
  w, g = _rand((6, 40), 35, 0.05), _rand((6, 40), 36)
  results = []
  for max_pairs in [None, 1000, 7]:
    u, s = _apply(kinetic.hard_collision(1.0, key=4, distance_scale=0.0,
                                         max_pairs=max_pairs),
                  {'k': g}, {'k': w})
    assert int(s.accepted_pairs) == 780
    results.append(u['k'])
  for r in results[1:]:
    np.testing.assert_allclose(r, results[0], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(results[0].sum(axis=1), g.sum(axis=1), atol=1e-4)


def test_hard_stacked_layers_collide_within_their_layer():
  w, g = _rand((2, 6, 5), 33, 0.1), _rand((2, 6, 5), 34)
  u, s = _apply(kinetic.hard_collision(0.8, distance_scale=0.05, layer_axes=0),
                {'k': g}, {'k': w})
  assert int(s.accepted_pairs) > 0
  np.testing.assert_allclose(u['k'].sum(axis=-1), g.sum(axis=-1), atol=1e-5)
  # per layer, the result equals the dense reference with that layer's key
  from kinetix import _utils
  _, step_key = jax.random.split(_utils.canonicalize_key(0))
  leaf_key = jax.random.fold_in(step_key, _utils.path_seed('k'))
  for layer in range(2):
    ref, _ = hard_reference(_neurons_np(w[layer]), _neurons_np(g[layer]), 0.8,
                            0.05, jax.random.fold_in(leaf_key, layer))
    np.testing.assert_allclose(u['k'][layer], ref.T, rtol=1e-5, atol=1e-5)


def test_hard_relative_change_is_exact_on_layers_of_different_scales():
  """|Δ|² and |g|² are summed per layer on its own scale: check vs NumPy."""
  w, g = _rand((3, 6, 5), 35, 0.1), _rand((3, 6, 5), 36)
  g[1] *= 1e-20
  g[2] *= 1e15
  tx = kinetic.hard_collision(0.8, distance_scale=0.05, layer_axes=0)
  u, s = _apply(tx, {'k': g}, {'k': w})
  assert int(s.accepted_pairs) > 0
  change = np.asarray(u['k'], np.float64) - g
  expected = np.sqrt(np.sum(change ** 2) / np.sum(np.float64(g) ** 2))
  np.testing.assert_allclose(s.relative_change, expected, rtol=1e-5)


def test_near_duplicate_neurons_have_accurate_distances():
  base = _rand((1, 64), 35, 1.0) + 100.0       # large offset: cancellation
  x = np.repeat(base, 8, axis=0) + _rand((8, 64), 36, 1e-3)
  d, _, _ = _neurons.pairwise_distances(jnp.asarray(x))
  exact = np.linalg.norm(x[:, None, :].astype(np.float64) - x[None], axis=-1)
  np.testing.assert_allclose(d, exact, rtol=1e-3, atol=1e-5)


# ----------------------------------------------------------------------------
# Optax plumbing shared by both


def _soft():
  return kinetic.soft_collision(0.1)


@pytest.mark.parametrize('make', [
    _soft,
    lambda: kinetic.hard_collision(0.5, distance_scale=0.05),
    lambda: kinetic.hard_collision(0.5, pairing='disjoint'),
])
def test_mask_selects_leaves_and_extra_args_are_ignored(make):
  params = {'head': {'kernel': _rand((4, 6), 37, 0.1), 'bias': _rand(6, 38)},
            'body': {'kernel': _rand((3, 4), 39)}}
  grads = jax.tree.map(lambda x: x + 1.0, params)
  tx = make()
  state = tx.init(params)
  # Eager for the soft collision (a user's first try), jitted for the hard
  # ones, whose op-by-op dispatch is slow to compile.
  def call(fn):
    return fn if make is _soft else jax.jit(fn)
  updates, _ = call(tx.update)(grads, state, params, unexpected_extra_arg=1)
  np.testing.assert_array_equal(updates['head']['bias'],
                                grads['head']['bias'])      # 1-D: untouched
  assert not np.allclose(updates['head']['kernel'], grads['head']['kernel'])
  masked = optax.masked(make(), masks.by_path('head/kernel'))
  updates, _ = call(masked.update)(grads, masked.init(params), params)
  np.testing.assert_array_equal(updates['body']['kernel'],
                                grads['body']['kernel'])


@pytest.mark.parametrize('factory', [kinetic.soft_collision,
                                     kinetic.hard_collision])
def test_bfloat16_params_give_bfloat16_updates(factory):
  params = {'k': jnp.asarray(_rand((6, 8), 40), jnp.bfloat16)}
  grads = {'k': jnp.asarray(_rand((6, 8), 41), jnp.bfloat16)}
  updates, _ = _apply(factory(0.5), grads, params)
  assert updates['k'].dtype == jnp.bfloat16
  assert np.all(np.isfinite(np.asarray(updates['k'], np.float32)))


@pytest.mark.parametrize('factory', [kinetic.soft_collision,
                                     kinetic.hard_collision])
def test_missing_params_is_an_error(factory):
  tx = factory(0.1)
  params = {'k': jnp.ones((3, 4))}
  with pytest.raises(ValueError, match='needs the current params'):
    tx.update(params, tx.init(params))


@pytest.mark.parametrize('kwargs,error,match', [
    (dict(coll_coef=1.5), ValueError, r'coll_coef must lie in \[0.0, 1.0\]'),
    (dict(coll_coef=-0.1), ValueError, 'coll_coef'),
    (dict(coll_coef='a'), TypeError, 'coll_coef'),
    (dict(key='seed'), TypeError, 'key must be'),
    (dict(key=jnp.ones(3)), TypeError, 'key must be'),
    (dict(neuron_axis=1.5), TypeError, 'neuron_axis'),
])
@pytest.mark.parametrize('factory', [kinetic.soft_collision,
                                     kinetic.hard_collision])
def test_bad_hyperparameters_fail_at_construction(factory, kwargs, error,
                                                  match):
  with pytest.raises(error, match=match):
    factory(**kwargs)


def test_bad_hard_options_fail_at_construction():
  with pytest.raises(ValueError, match=r"pairing must be one of \('all', "
                     r"'disjoint'\); got 'some'"):
    kinetic.hard_collision(pairing='some')
  with pytest.raises(ValueError, match='distance_scale'):
    kinetic.hard_collision(distance_scale=-1.0)
  with pytest.raises(ValueError, match='max_pairs'):
    kinetic.hard_collision(max_pairs=0)
  with pytest.raises(ValueError, match="max_pairs applies to pairing='all'"):
    kinetic.hard_collision(max_pairs=8, pairing='disjoint')
  with pytest.raises(ValueError, match='block_size'):
    kinetic.soft_collision(block_size=0)
  with pytest.raises(ValueError, match='min_similarity'):
    kinetic.soft_collision(min_similarity=2.0)
  with pytest.raises(ValueError, match='noise_scale'):
    kinetic.soft_collision(noise_scale=-1.0)


@pytest.mark.parametrize('factory', [kinetic.soft_collision,
                                     kinetic.hard_collision])
def test_layout_errors_name_the_leaf(factory):
  params = {'enc': {'kernel': jnp.ones((3, 4))},
            'head': {'kernel': jnp.ones((4, 2))}}
  with pytest.raises(ValueError, match=r"neuron_axis=2 is out of range for "
                     r"leaf 'enc/kernel' with shape \(3, 4\).*-2..1"):
    factory(neuron_axis=2).init(params)
  with pytest.raises(ValueError, match="leaf 'head/bias'.*no feature axis"):
    factory(mask=masks.by_path('head/*')).init(
        {'head': {'kernel': jnp.ones((4, 2)), 'bias': jnp.ones(2)}})
  with pytest.raises(ValueError, match='also listed in layer_axes'):
    factory(layer_axes=-1).init(params)
  with pytest.raises(ValueError, match='mask does not match'):
    factory(mask={'enc': True}).init(params)
  with pytest.raises(TypeError, match="'ints'.*floating-point"):
    factory(mask=masks.by_path('ints')).init({'ints': jnp.ones((2, 3), int)})


def test_prefix_bool_mask_is_accepted():
  params = {'enc': {'kernel': _rand((3, 4), 42)},
            'head': {'kernel': _rand((4, 2), 43)}}
  grads = jax.tree.map(lambda x: x + 0.5, params)
  tx = kinetic.soft_collision(0.5, mask={'enc': False, 'head': True})
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_array_equal(updates['enc']['kernel'],
                                grads['enc']['kernel'])
  assert not np.allclose(updates['head']['kernel'], grads['head']['kernel'])


def test_no_recompilation_and_chain_with_base_optimizer():
  params = {'k': jnp.asarray(_rand((5, 6), 44))}
  tx = optax.chain(kinetic.hard_collision(0.5, distance_scale=0.05),
                   optax.sgd(0.1))
  step = jax.jit(lambda g, s, p: tx.update(g, s, p))
  state = tx.init(params)
  _, state = step(params, state, params)
  _, state = step(params, state, params)
  assert step._cache_size() == 1  # pylint: disable=protected-access


def test_pair_counts_beyond_int32_do_not_overflow():
  """N(N-1) > 2**31 (a 50,257-neuron lm_head): statistics stay finite.

  Only traced (eval_shape), so no memory is used.
  """
  shape = jax.ShapeDtypeStruct((8, 50_257), jnp.float32)
  for tx in (kinetic.soft_collision(0.1, block_size=1024),
             kinetic.hard_collision(0.1, max_pairs=4096)):
    state = tx.init({'k': shape})
    out, new_state = jax.eval_shape(tx.update, {'k': shape}, state,
                                    {'k': shape})
    assert out['k'].shape == shape.shape
    assert new_state.mean_abs_cos.dtype == jnp.float32


def test_default_hard_collision_acts_on_a_trained_digits_head():
  """A 64-32-10 MLP on scikit-learn's digits, trained with AdamW.

  With the defaults (distance_scale 0.05) its 10-neuron head accepts pairs
  at coll_coef 0.1; with the paper's kappa = 1 it accepts none.
  """
  datasets = pytest.importorskip('sklearn.datasets')
  x, y = datasets.load_digits(return_X_y=True)
  x = jnp.asarray(x / 16.0, jnp.float32)
  y = jnp.asarray(y)
  k1, k2 = jax.random.split(jax.random.key(0))
  params = {'body': jax.random.normal(k1, (64, 32)) / 8.0,
            'head': {'kernel': jax.random.normal(k2, (32, 10)) / 6.0}}

  def loss_fn(p):
    logits = jnp.tanh(x @ p['body']) @ p['head']['kernel']
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  def trained_with(collision):
    tx = optax.chain(collision, optax.adamw(1e-2))

    def step(carry, _):
      p, s = carry
      grads = jax.grad(loss_fn)(p)
      updates, s = tx.update(grads, s, p)
      return (optax.apply_updates(p, updates), s), s[0].accepted_pairs

    _, accepted = jax.jit(lambda p: jax.lax.scan(
        step, (p, tx.init(p)), None, 60))(params)
    return np.asarray(accepted)

  head = masks.by_path('head/kernel')
  default = trained_with(kinetic.hard_collision(0.1, mask=head))
  paper = trained_with(kinetic.hard_collision(0.1, mask=head,
                                              distance_scale=1.0))
  assert default.sum() >= 20, default        # about one pair per step
  assert paper.sum() == 0, paper
