"""The optimizers and problems that several test batteries share.

``OPTIMIZERS`` is every optimizer kinetix exports, with small settings;
the contract battery (``test_contract``), the user paths and the sharded
runs build from it. Subprocess scripts (``_sharded_run``,
``_multiprocess_run``) import this module too: it imports only kinetix and
its dependencies.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax

import kinetix

# name -> (factory, kwargs); every factory is a public kinetix callable.
OPTIMIZERS = {
    'soft_collision': (kinetix.soft_collision, dict(coll_coef=0.2)),
    'soft_collision_blocked': (kinetix.soft_collision,
                               dict(coll_coef=0.2, block_size=2)),
    'hard_collision': (kinetix.hard_collision, dict(coll_coef=0.1, key=1)),
    'hard_collision_disjoint': (kinetix.hard_collision,
                                dict(coll_coef=0.6, pairing='disjoint')),
    'ko_sgd': (kinetix.ko_sgd, dict(learning_rate=0.05, collision='hard',
                                    coll_coef=0.1)),
    'ko_adamw': (kinetix.ko_adamw, dict(learning_rate=0.05)),
    'cool_momentum': (kinetix.cool_momentum,
                      dict(learning_rate=0.05, rho0=0.9, total_steps=50,
                           weight_decay=1e-4)),
    'bbi': (kinetix.bbi, dict(learning_rate=0.05, threshold0=3, threshold=4,
                              n_fixed_bounces=2, delta_energy=0.2)),
    'ecdsep': (kinetix.ecdsep, dict(learning_rate=0.05, nu=1e-3,
                                    weight_decay=1e-4)),
}
# KO collisions reshape gradients and are chained before a base optimizer.
COLLISIONS = ('soft_collision', 'soft_collision_blocked', 'hard_collision',
              'hard_collision_disjoint')
NAMES = tuple(OPTIMIZERS)
# Leaves the collisions never see stay out of inject_hyperparams.
STATIC = {'soft_collision': ('neuron_axis', 'block_size'),
          'soft_collision_blocked': ('neuron_axis', 'block_size'),
          'hard_collision': ('neuron_axis', 'pairing'),
          'hard_collision_disjoint': ('neuron_axis', 'pairing'),
          'ko_sgd': ('collision',), 'ko_adamw': ('collision',)}


def make(name, **overrides):
  factory, kwargs = OPTIMIZERS[name]
  tx = factory(**{**kwargs, **overrides})
  if name in COLLISIONS:
    tx = optax.chain(tx, optax.sgd(0.05))
  return tx


_RNG = np.random.default_rng(0)
_TARGET = {'conv': {'kernel': _RNG.normal(size=(3, 3, 2, 4))},
           'dense': {'kernel': _RNG.normal(size=(6, 5)),
                     'bias': _RNG.normal(size=(5,))}}


def init_params(dtype=jnp.float32):
  keys = iter(jax.random.split(jax.random.key(0), 3))
  return jax.tree.map(
      lambda t: (0.3 * jax.random.normal(next(keys), t.shape)).astype(dtype),
      _TARGET)


def loss_fn(params):
  def sq(p, t):
    p = p.astype(jnp.promote_types(p.dtype, jnp.float32))
    return jnp.sum((p - jnp.asarray(t, p.dtype)) ** 2)
  sq = jax.tree.map(sq, params, _TARGET)
  return 0.1 + 0.5 * sum(jax.tree.leaves(sq))


def step_fn(tx):
  def step(params, state):
    value, grads = jax.value_and_grad(loss_fn)(params)
    updates, state = tx.update(grads, state, params, value=value)
    return optax.apply_updates(params, updates), state, value
  return step




# --------------------------------------------------------------------------
# Builders of the sharded runs (_sharded_run.py, _multiprocess_run.py)


DENSE = kinetix.masks.by_path('dense/kernel')


def sharded_optimizers(hard_mask=DENSE):
  """The optimizers every sharded run trains, by short name.

  Hard collisions compile slowly (counter-based random directions): by
  default they collide the dense kernel only; soft collision uses the
  default mask.
  """
  return {
      'soft': optax.chain(kinetix.soft_collision(0.3), optax.sgd(0.05)),
      'hard': optax.chain(kinetix.hard_collision(0.8, key=1, mask=hard_mask),
                          optax.sgd(0.05)),
      'disjoint': optax.chain(
          kinetix.hard_collision(0.8, pairing='disjoint', mask=hard_mask),
          optax.sgd(0.05)),
      'bbi': kinetix.bbi(0.05, threshold0=2, n_fixed_bounces=2,
                         delta_energy=0.2),
  }


def random_params(shapes, seed=0):
  """float32 params of ``shapes`` (a tree of tuples) and a target like them."""
  rng = np.random.default_rng(seed)
  is_shape = lambda x: isinstance(x, tuple)  # noqa: E731
  params = jax.tree.map(lambda s: rng.normal(size=s).astype(np.float32),
                        shapes, is_leaf=is_shape)
  target = jax.tree.map(
      lambda p: rng.normal(size=p.shape).astype(np.float32), params)
  return params, target


def quadratic_loss(p, target):
  sq = jax.tree.map(lambda a, b: jnp.sum((a - b) ** 2), p, target)
  return 0.1 + 0.5 * sum(jax.tree.leaves(sq))


def train_step(tx):
  """A jitted step on :func:`quadratic_loss` that passes ``value=``."""
  @jax.jit
  def step(params, state, target):
    value, grads = jax.value_and_grad(quadratic_loss)(params, target)
    updates, state = tx.update(grads, state, params, value=value)
    # The new state must be interchangeable with the old one (lax.cond).
    state = jax.lax.cond(value > 0, lambda: state, lambda: state)
    return optax.apply_updates(params, updates), state
  return step


def train(tx, params, target, steps, state=None):
  step = train_step(tx)
  state = tx.init(params) if state is None else state
  for _ in range(steps):
    params, state = step(params, state, target)
  return params, state
