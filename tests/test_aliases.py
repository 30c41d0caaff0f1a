"""ko_sgd and ko_adamw: the collision, then the base optimizer, exactly."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import kinetix
from kinetix import kinetic


def _problem():
  rng = np.random.default_rng(0)
  params = {'head': {'kernel': jnp.asarray(rng.normal(size=(5, 4)), jnp.float32),
                     'bias': jnp.zeros(4)}}
  grads = jax.tree.map(lambda x: x * 0.5 + 0.1, params)
  return params, grads


def _run(tx, params, grads, steps=3):
  state = tx.init(params)
  outs = []
  for _ in range(steps):
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    outs.append(params)
  return outs


@pytest.mark.parametrize('collision', ['soft', 'hard'])
def test_ko_sgd_equals_the_explicit_chain(collision):
  params, grads = _problem()
  factory = dict(soft=kinetic.soft_collision, hard=kinetic.hard_collision)
  expected = optax.chain(factory[collision](0.3, key=1),
                         optax.add_decayed_weights(5e-4),
                         optax.sgd(0.1, momentum=0.9))
  got = kinetix.ko_sgd(0.1, momentum=0.9, weight_decay=5e-4,
                       collision=collision, coll_coef=0.3, key=1)
  for a, b in zip(_run(got, params, grads), _run(expected, params, grads)):
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_ko_adamw_equals_the_explicit_chain_and_none_is_adamw():
  params, grads = _problem()
  expected = optax.chain(
      kinetic.hard_collision(0.2, distance_scale=0.05, pairing='disjoint'),
      optax.adamw(1e-3, weight_decay=0.05))
  got = kinetix.ko_adamw(1e-3, weight_decay=0.05, collision='hard',
                         coll_coef=0.2, collision_options=dict(
                             distance_scale=0.05, pairing='disjoint'))
  for a, b in zip(_run(got, params, grads), _run(expected, params, grads)):
    jax.tree.map(np.testing.assert_array_equal, a, b)
  base = _run(optax.adamw(1e-3, weight_decay=0.05), params, grads)
  none = _run(kinetix.ko_adamw(1e-3, weight_decay=0.05, collision='none'),
              params, grads)
  for a, b in zip(none, base):
    jax.tree.map(np.testing.assert_array_equal, a, b)
  soft = _run(kinetix.ko_adamw(1e-3, weight_decay=0.05), params, grads)
  assert not np.allclose(soft[-1]['head']['kernel'], base[-1]['head']['kernel'])


def test_mask_restricts_the_collision_to_the_head():
  params, grads = _problem()
  params['body'] = {'kernel': jnp.ones((3, 5))}
  grads['body'] = {'kernel': jnp.full((3, 5), 0.3)}
  tx = kinetix.ko_sgd(0.1, momentum=0.0,
                      mask=kinetix.masks.by_path('head/kernel'))
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates['body']['kernel'], -0.1 * 0.3)


@pytest.mark.parametrize('make,error,match', [
    (lambda: kinetix.ko_sgd(0.1, collision='medium'), ValueError,
     r"collision must be one of \('soft', 'hard', 'none'\)"),
    (lambda: kinetix.ko_sgd(-0.1), ValueError, 'learning_rate'),
    (lambda: kinetix.ko_sgd(0.1, momentum=1.5), ValueError, 'momentum'),
    (lambda: kinetix.ko_sgd(0.1, weight_decay=-1.0), ValueError,
     'weight_decay'),
    (lambda: kinetix.ko_adamw(0.1, b2=2.0), ValueError, 'b2'),
    (lambda: kinetix.ko_adamw(0.1, coll_coef=3.0), ValueError, 'coll_coef'),
    (lambda: kinetix.ko_adamw(0.1, collision_options={'pairing': 'x'}),
     TypeError, 'collision_options'),
    (lambda: kinetix.ko_adamw(0.1, collision='none',
                              collision_options={'pairing': 'all'}),
     ValueError, "collision='none'"),
])
def test_bad_arguments(make, error, match):
  with pytest.raises(error, match=match):
    make()
