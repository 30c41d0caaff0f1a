"""kinetix called the way users call it, on paths the other modules skip.

Meta-gradients through one update (learned optimizers, implicit
differentiation), float64 end to end, gradients and weights far from 1, and
pytrees that are not pure parameter trees (an unfiltered Equinox model).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import kinetix
from kinetix import kinetic

from _cases import NAMES, init_params, loss_fn, make, step_fn


def _one_update_loss(tx, params, state):
  """A meta-loss: the loss after one update, as a function of the params."""
  def meta(p):
    value, grads = jax.value_and_grad(loss_fn)(p)
    updates, _ = tx.update(grads, state, p, value=value)
    return loss_fn(optax.apply_updates(p, updates))
  return meta


@pytest.mark.parametrize('name', NAMES)
def test_grad_through_one_update_is_finite(name):
  params = init_params()
  tx = make(name)
  state = tx.init(params)
  grads = jax.jit(jax.grad(_one_update_loss(tx, params, state)))(params)
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    assert np.all(np.isfinite(g)), (name, path)
  assert any(np.any(g != 0) for g in jax.tree.leaves(grads))


def _grad_of_update(tx, grads, params):
  state = tx.init(params)

  def f(g, p):
    out, _ = tx.update(g, state, p, value=jnp.asarray(1.0))
    return jnp.sum(jnp.sin(jax.tree.leaves(out)[0]))
  return jax.jit(jax.grad(f, argnums=(0, 1)))(grads, params)


@pytest.mark.parametrize('tx,grads,params', [
    # Hard collision's list of accepted pairs is padded with (0, 0) pairs.
    (kinetic.hard_collision(0.5, distance_scale=0.05),
     {'w': jnp.eye(6, 8)}, {'w': jnp.ones((6, 8))}),
    # Every pair accepted, several chunks.
    (kinetic.hard_collision(1.0, max_pairs=3),
     {'w': jnp.arange(24.0).reshape(4, 6) / 7}, {'w': jnp.ones((4, 6))}),
    # Soft collision with a zero-gradient neuron and a zero-weight neuron.
    (kinetic.soft_collision(0.5),
     {'w': jnp.array([[1., 0., 2.], [3., 0., 1.]])},
     {'w': jnp.array([[1., 2., 0.], [0.5, 1., 0.]])}),
    (kinetic.soft_collision(0.5, block_size=2),
     {'w': jnp.array([[1., 0., 2.], [3., 0., 1.]])},
     {'w': jnp.array([[1., 2., 0.], [0.5, 1., 0.]])}),
    # Disjoint pairs with equal gradients (zero relative speed).
    (kinetic.hard_collision(1.0, pairing='disjoint'),
     {'w': jnp.ones((3, 4))}, {'w': jnp.arange(12.0).reshape(3, 4)}),
    # BBI and ECDSep at their first step with delta_energy=0 (sqrt of 0).
    (kinetix.bbi(0.1), {'w': jnp.ones((3, 4))}, {'w': jnp.ones((3, 4))}),
    (kinetix.ecdsep(0.1), {'w': jnp.ones((3, 4))}, {'w': jnp.ones((3, 4))}),
    (kinetix.ecdsep(0.1, weight_decay=0.1),
     {'w': jnp.zeros((3, 4))}, {'w': jnp.ones((3, 4))}),
], ids=['hard-padded-pairs', 'hard-chunks', 'soft-zero-rows',
        'soft-blocked-zero-rows', 'disjoint-equal', 'bbi-de0', 'ecdsep-de0',
        'ecdsep-zero-grad'])
def test_grad_through_degenerate_update_is_finite(tx, grads, params):
  dg, dp = _grad_of_update(tx, grads, params)
  for x in jax.tree.leaves((dg, dp)):
    assert np.all(np.isfinite(x))


def _pair(shape, seed, scale=1.0):
  rng = np.random.default_rng(seed)
  return (scale * rng.normal(size=shape)).astype(np.float32)


@pytest.mark.parametrize('make_tx', [
    lambda: kinetic.soft_collision(0.3),
    lambda: kinetic.soft_collision(0.3, block_size=3),
    lambda: kinetic.hard_collision(0.9, key=1, distance_scale=0.0),
    lambda: kinetic.hard_collision(0.9, key=1, pairing='disjoint',
                                   distance_scale=0.0),
], ids=['soft', 'soft-blocked', 'hard', 'disjoint'])
@pytest.mark.parametrize('g_scale', [1e-25, 1e25])
def test_collisions_do_not_depend_on_the_gradient_scale(make_tx, g_scale):
  """Squares of 1e25 overflow and of 1e-25 underflow in float32."""
  w, g = _pair((5, 7), 0), _pair((5, 7), 1)
  tx = make_tx()
  update = jax.jit(tx.update)       # one program for both scales
  ref, ref_state = update({'k': g}, tx.init({'k': w}), {'k': w})
  out, state = update({'k': g * np.float32(g_scale)}, tx.init({'k': w}),
                      {'k': w})
  assert np.all(np.isfinite(out['k']))
  np.testing.assert_allclose(out['k'] / np.float32(g_scale), ref['k'],
                             rtol=2e-5, atol=1e-6)
  assert float(ref_state.relative_change) > 0
  np.testing.assert_allclose(state.relative_change, ref_state.relative_change,
                             rtol=1e-5)
  np.testing.assert_allclose(state.mean_abs_cos, ref_state.mean_abs_cos,
                             rtol=1e-5)


@pytest.mark.parametrize('make_tx', [
    lambda: kinetic.soft_collision(0.3),
    lambda: kinetic.hard_collision(0.9, key=1, pairing='disjoint',
                                   distance_scale=0.0),
], ids=['soft', 'disjoint'])
def test_relative_change_of_leaves_near_the_float32_limit(make_tx):
  """Each leaf's Σ|g|² ≈ 2.2e38 is finite; two of them summed are not."""
  w, g = _pair((5, 7), 0), _pair((5, 7), 1)
  g = (g / np.sqrt(np.sum(g.astype(np.float64) ** 2)) * 1.5e19).astype(
      np.float32)
  tx = make_tx()
  params = {'a': w, 'b': w}
  out, state = tx.update({'a': g, 'b': g}, tx.init(params), params)
  change = sum(np.sum((np.asarray(out[k], np.float64) - g) ** 2)
               for k in ('a', 'b'))
  expected = np.sqrt(change / (2 * np.sum(g.astype(np.float64) ** 2)))
  assert expected > 0.1
  np.testing.assert_allclose(state.relative_change, expected, rtol=1e-5)


@pytest.mark.parametrize('w_scale', [1e-25, 1e25])
def test_soft_collision_does_not_depend_on_the_weight_scale(w_scale):
  w, g = _pair((5, 7), 2), _pair((5, 7), 3)
  tx = kinetic.soft_collision(0.3)
  ref, ref_state = tx.update({'k': g}, tx.init({'k': w}), {'k': w})
  big = {'k': w * np.float32(w_scale)}
  out, state = tx.update({'k': g}, tx.init(big), big)
  np.testing.assert_allclose(out['k'], ref['k'], rtol=2e-5, atol=1e-6)
  assert float(state.mean_abs_cos) > 0
  np.testing.assert_allclose(state.mean_abs_cos, ref_state.mean_abs_cos,
                             rtol=1e-5)


def test_float64_soft_collision_is_exact_to_float64(x64):
  """coll_coef (and a float64 schedule) resolve in the compute dtype."""
  rng = np.random.default_rng(4)
  w, g = rng.normal(size=(4, 6)), rng.normal(size=(4, 6))
  coef = 0.123456789012345
  wn = w / np.linalg.norm(w, axis=0)
  gn = g / np.linalg.norm(g, axis=0)
  ref = g - coef * g @ ((wn.T @ wn) * (gn.T @ gn))
  for c in (coef, lambda count: jnp.asarray(coef, jnp.float64)):
    tx = kinetic.soft_collision(c)
    params = {'k': jnp.asarray(w)}
    out, _ = jax.jit(tx.update)({'k': jnp.asarray(g)}, tx.init(params), params)
    assert out['k'].dtype == jnp.float64
    np.testing.assert_allclose(out['k'], ref, rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize('pairing', [None, 'all', 'disjoint'])
def test_float64_grouped_leaves_collide_as_alone(x64, pairing):
  """Two leaves of one layout (one group, one loop) under x64.

  Each leaf's update is the one it gets as its own transformation.
  """
  del x64
  rng = np.random.default_rng(5)
  params = {n: jnp.asarray(rng.normal(size=(6, 8))) for n in 'ab'}
  grads = {n: jnp.asarray(rng.normal(size=(6, 8))) for n in 'ab'}

  def make(mask=None):
    if pairing is None:
      return kinetic.soft_collision(0.2, mask=mask)
    return kinetic.hard_collision(0.2, pairing=pairing, mask=mask)

  tx = make()
  out, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  for n in 'ab':
    alone = make(kinetix.masks.by_path(n))
    want, _ = jax.jit(alone.update)(grads, alone.init(params), params)
    assert out[n].dtype == jnp.float64
    np.testing.assert_allclose(out[n], want[n], rtol=1e-13, atol=1e-14)


@pytest.fixture
def x64():
  jax.config.update('jax_enable_x64', True)
  yield
  jax.config.update('jax_enable_x64', False)


class _Activation:
  """Stands for a function field of an unfiltered Equinox module."""

  def __call__(self, x):
    return jnp.tanh(x)


@pytest.mark.parametrize('name', NAMES)
def test_unfiltered_model_pytree_is_a_clear_type_error(name):
  model = {'linear': {'weight': jnp.ones((3, 4)), 'bias': jnp.zeros(4)},
           'activation': _Activation()}
  with pytest.raises(TypeError) as info:
    make(name).init(model)
  message = str(info.value)
  assert "'activation'" in message and '_Activation' in message
  assert 'eqx.filter(model, eqx.is_array)' in message


def test_unfiltered_equinox_model_is_a_clear_type_error():
  eqx = pytest.importorskip('equinox')
  model = eqx.nn.MLP(3, 2, 8, 1, key=jax.random.key(0))
  for tx in (kinetix.ko_adamw(1e-3), kinetix.soft_collision(0.1),
             kinetix.bbi(0.1)):
    with pytest.raises(TypeError, match=r'eqx\.filter\(model, eqx\.is_array\)'):
      tx.init(model)
  params = eqx.filter(model, eqx.is_array)
  state = kinetix.ko_adamw(1e-3).init(params)
  assert jax.tree.leaves(state)


@pytest.mark.parametrize('name', ['soft_collision', 'hard_collision',
                                  'hard_collision_disjoint', 'bbi'])
def test_vmapped_ensemble_trains_each_member_as_alone(name):
  """``jax.vmap`` over members (seeds, ensembles): no state leaks across.

  Each member has its own acceptance, pair count and (BBI) bounces; under
  ``vmap`` the collisions' ``lax.cond``\\ s become selects and every
  statistic and energy must still be the member's own.
  """
  tx = make(name)
  members = [jax.tree.map(lambda x, s=s: s * x, init_params())
             for s in (1.0, 0.3, -2.0)]
  stack = jax.tree.map(lambda *xs: jnp.stack(xs), *members)
  step = step_fn(tx)
  batched = jax.jit(jax.vmap(step))
  alone = jax.jit(step)
  b_params, b_state = stack, jax.vmap(tx.init)(stack)
  states = [tx.init(m) for m in members]
  for _ in range(3):
    b_params, b_state, _ = batched(b_params, b_state)
    for k, (m, s) in enumerate(zip(members, states)):
      members[k], states[k], _ = alone(m, s)
  for k, (m, s) in enumerate(zip(members, states)):
    for a, b in zip(jax.tree.leaves(b_params), jax.tree.leaves(m)):
      np.testing.assert_allclose(a[k], b, rtol=2e-5, atol=2e-6)
    for a, b in zip(jax.tree.leaves(b_state), jax.tree.leaves(s)):
      if jnp.issubdtype(b.dtype, jnp.inexact):
        np.testing.assert_allclose(a[k], b, rtol=2e-5, atol=2e-6)
      elif not jax.dtypes.issubdtype(b.dtype, jax.dtypes.prng_key):
        np.testing.assert_array_equal(a[k], b)


def test_empty_leaves_are_left_alone():
  """A zero-width layer (a size sweep) neither breaks nor skews the others."""
  rng = np.random.default_rng(5)
  w = jnp.asarray(rng.normal(size=(6, 5)), jnp.float32)
  g = jnp.asarray(rng.normal(size=(6, 5)), jnp.float32)
  empty = {'no_neurons': jnp.zeros((6, 0)), 'no_features': jnp.zeros((0, 5)),
           'stacked': jnp.zeros((0, 3, 4))}
  full = {'a': w, **empty}
  grads = {**jax.tree.map(jnp.ones_like, empty), 'a': g}
  for tx in (kinetic.soft_collision(0.3),
             kinetic.hard_collision(0.9, distance_scale=0.05),
             kinetic.hard_collision(0.9, pairing='disjoint',
                                    distance_scale=0.05)):
    out, state = jax.jit(tx.update)(grads, tx.init(full), full)
    ref, ref_state = jax.jit(tx.update)({'a': g}, tx.init({'a': w}),
                                        {'a': w})
    np.testing.assert_array_equal(out['a'], ref['a'])
    assert not np.array_equal(out['a'], g)
    for key in full:
      assert out[key].shape == full[key].shape
    for x, y in zip(jax.tree.leaves(state), jax.tree.leaves(ref_state)):
      if not jax.dtypes.issubdtype(y.dtype, jax.dtypes.prng_key):
        np.testing.assert_array_equal(x, y)
  stats = kinetix.metrics.condensation(empty)
  assert {float(v) for s in stats.values() for v in s.values()} == {0.0}
  with pytest.warns(UserWarning, match='selects no'):
    kinetic.soft_collision(0.3).init(empty)


def test_optax_partition_gives_the_head_its_own_collision():
  """``optax.partition``: KO on the head, Adam elsewhere (masked leaves)."""
  params = init_params()
  grads = jax.grad(loss_fn)(params)
  labels = {'conv': {'kernel': 'adam'},
            'dense': {'kernel': 'ko', 'bias': 'adam'}}
  for coll, alone in (
      (kinetic.soft_collision(0.3), kinetic.soft_collision(
          0.3, mask=kinetix.masks.by_path('dense/kernel'))),
      (kinetic.hard_collision(0.9, key=2, distance_scale=0.05),
       kinetic.hard_collision(0.9, key=2, distance_scale=0.05,
                              mask=kinetix.masks.by_path('dense/kernel')))):
    tx = optax.partition({'ko': optax.chain(coll, optax.sgd(0.1)),
                          'adam': optax.adam(1e-3)}, labels)
    updates, state = jax.jit(tx.update)(grads, tx.init(params), params)
    ref_tx = optax.chain(alone, optax.sgd(0.1))
    ref, ref_state = jax.jit(ref_tx.update)(grads, ref_tx.init(params), params)
    np.testing.assert_allclose(updates['dense']['kernel'],
                               ref['dense']['kernel'], rtol=1e-6, atol=1e-7)
    assert not np.allclose(updates['dense']['kernel'],
                           -0.1 * grads['dense']['kernel'])
    inner = state.inner_states['ko'].inner_state[0]
    np.testing.assert_allclose(inner.mean_abs_cos, ref_state[0].mean_abs_cos,
                               rtol=1e-6)
