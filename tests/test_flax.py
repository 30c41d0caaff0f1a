"""Every kinetix optimizer inside Flax: NNX ``nnx.Optimizer`` and Linen ``TrainState``."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

nnx = pytest.importorskip('flax.nnx')
from flax import linen as nn  # noqa: E402
from flax.training import train_state  # noqa: E402

import kinetix  # noqa: E402

HEAD = kinetix.masks.by_path('head/kernel')
OPTIMIZERS = {
    'soft_collision': lambda: optax.chain(
        kinetix.soft_collision(0.1, mask=HEAD), optax.adam(1e-2)),
    'hard_collision': lambda: optax.chain(
        kinetix.hard_collision(0.5, mask=HEAD), optax.adam(1e-2)),
    'ko_sgd': lambda: kinetix.ko_sgd(0.05, collision='hard', mask=HEAD,
                                     collision_options={'pairing': 'disjoint'}),
    'ko_adamw': lambda: kinetix.ko_adamw(1e-2, mask=HEAD),
    'cool_momentum': lambda: kinetix.cool_momentum(0.05, 0.9, 100),
    'bbi': lambda: kinetix.bbi(0.05, threshold0=10, threshold=20,
                               n_fixed_bounces=2),
    'ecdsep': lambda: kinetix.ecdsep(0.05),
}

_X = jax.random.normal(jax.random.key(1), (32, 3))
_Y = jnp.sin(_X @ jnp.ones((3, 4)))


class NNXModel(nnx.Module):

  def __init__(self, rngs):
    self.body = nnx.Linear(3, 16, rngs=rngs)
    self.head = nnx.Linear(16, 4, rngs=rngs)

  def __call__(self, x):
    return self.head(jnp.tanh(self.body(x)))


class LinenModel(nn.Module):

  @nn.compact
  def __call__(self, x):
    x = jnp.tanh(nn.Dense(16, name='body')(x))
    return nn.Dense(4, name='head')(x)


@pytest.mark.floors
@pytest.mark.parametrize('name', list(OPTIMIZERS))
def test_nnx_optimizer_trains_with_path_masks(name):
  model = NNXModel(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, OPTIMIZERS[name](), wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer):
    loss_fn = lambda m: jnp.mean((m(_X) - _Y) ** 2)  # noqa: E731
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads, value=loss)  # value: for BBI/ECDSep
    return loss

  first = float(step(model, optimizer))
  losses = [float(step(model, optimizer)) for _ in range(60)]
  assert np.isfinite(losses).all()
  assert min(losses) < 0.8 * first, (first, min(losses))


@pytest.mark.parametrize('name', ['soft_collision', 'ko_adamw', 'ko_sgd',
                                  'bbi'])
def test_linen_train_state(name):
  model = LinenModel()
  params = model.init(jax.random.key(0), _X)['params']
  state = train_state.TrainState.create(apply_fn=model.apply, params=params,
                                        tx=OPTIMIZERS[name]())

  @jax.jit
  def step(state):
    def loss_fn(p):
      return jnp.mean((state.apply_fn({'params': p}, _X) - _Y) ** 2)
    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    # TrainState.apply_gradients has no way to pass `value`; call the
    # transformation directly (the same three lines work for every one).
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params,
                                         value=loss)
    return state.replace(step=state.step + 1,
                         params=optax.apply_updates(state.params, updates),
                         opt_state=opt_state), loss

  state, first = step(state)
  losses = []
  for _ in range(60):
    state, loss = step(state)
    losses.append(float(loss))
  assert min(losses) < 0.8 * float(first)


def test_nnx_mask_selects_only_the_head():
  """A head-only collision leaves every other gradient untouched."""
  model = NNXModel(nnx.Rngs(0))
  params = nnx.state(model, nnx.Param)
  grads = jax.tree.map(lambda p: jnp.ones_like(p) * 0.1, params)
  pure_params, pure_grads = nnx.as_pure(params), nnx.as_pure(grads)
  tx = kinetix.soft_collision(0.5, mask=HEAD)
  state = tx.init(params)                       # Variables, as at init
  updates, _ = tx.update(pure_grads, state, pure_params)   # arrays
  np.testing.assert_array_equal(updates['body']['kernel'],
                                pure_grads['body']['kernel'])
  assert not np.allclose(updates['head']['kernel'],
                         pure_grads['head']['kernel'])


@pytest.mark.floors
def test_collision_statistics_read_through_nnx_optimizer():
  """``nnx.Optimizer`` wraps each state leaf: ``[...]`` reads its value."""
  model = NNXModel(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, OPTIMIZERS['hard_collision'](),
                            wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer):
    loss, grads = nnx.value_and_grad(
        lambda m: jnp.mean((m(_X) - _Y) ** 2))(model)
    optimizer.update(model, grads)

  step(model, optimizer)
  collision = optimizer.opt_state[0]        # the chain's first state
  assert isinstance(collision, kinetix.HardCollisionState)
  pairs = int(collision.accepted_pairs[...])
  similarity = float(collision.mean_abs_cos[...])
  expected = kinetix.metrics.condensation(
      {'head': {'kernel': model.head.kernel[...]}})['head/kernel']
  assert 0 <= pairs <= 4 * 3 // 2
  assert 0.0 < similarity <= 1.0
  # The state's similarity is that of the weights it collided (one step
  # before the current ones): close to the current condensation.
  np.testing.assert_allclose(similarity, expected['mean_abs_cos'], atol=0.1)
