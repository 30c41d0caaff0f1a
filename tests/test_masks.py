"""Path masks on dicts, Linen params and Flax NNX state."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from kinetix import kinetic
from kinetix import masks


def _params():
  return {'params': {
      'Dense_0': {'kernel': jnp.ones((3, 4)), 'bias': jnp.zeros(4)},
      'head': {'kernel': jnp.ones((4, 2)), 'bias': jnp.zeros(2)},
      'blocks': {'0': {'attn': {'kernel': jnp.ones((2, 2))}}},
  }}


@pytest.mark.parametrize('patterns,selected', [
    (('head/kernel',), {'params/head/kernel'}),
    (('*/kernel',), {'params/Dense_0/kernel', 'params/head/kernel',
                     'params/blocks/0/attn/kernel'}),
    (('Dense_*/*',), {'params/Dense_0/kernel', 'params/Dense_0/bias'}),
    (('blocks/**/kernel',), {'params/blocks/0/attn/kernel'}),
    (('/params/head/kernel',), {'params/head/kernel'}),
    (('/head/kernel',), set()),                   # anchored: no match
    (('kernel',), {'params/Dense_0/kernel', 'params/head/kernel',
                   'params/blocks/0/attn/kernel'}),
    (('ead/kernel',), set()),                     # whole segments only
    (('head/bias', 'Dense_0/kernel'), {'params/head/bias',
                                       'params/Dense_0/kernel'}),
])
def test_by_path_patterns(patterns, selected):
  tree = masks.by_path(*patterns, allow_empty=True)(_params())
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  got = {'/'.join(str(k.key) for k in path) for path, on in flat if on}
  assert got == selected


def test_by_path_that_matches_nothing_is_an_error_with_the_closest_paths():
  # A model whose head is called 'head', a mask written for 'classifier'.
  with pytest.raises(ValueError) as info:
    masks.by_path('classifier/kernel')(_params())
  message = str(info.value)
  assert "pattern 'classifier/kernel' matches no leaf" in message
  assert 'params/head/kernel' in message          # listed as available
  assert 'allow_empty=True' in message
  # One good and one mistyped pattern: the typo is still reported.
  with pytest.raises(ValueError, match="'haed/kernel' matches no leaf"):
    masks.by_path('Dense_0/kernel', 'haed/kernel')(_params())
  # ... and at init of a collision, not silently at the first step.
  tx = kinetic.soft_collision(0.5, mask=masks.by_path('classifier/kernel'))
  with pytest.raises(ValueError, match='classifier/kernel'):
    tx.init(_params())
  # The explicit opt-out.
  flags = masks.by_path('classifier/kernel', allow_empty=True)(_params())
  assert not any(jax.tree.leaves(flags))


def test_collision_whose_mask_selects_nothing_warns_at_init():
  params = {'bias': jnp.zeros(3)}                 # no leaf with ndim >= 2
  for tx in (kinetic.soft_collision(0.5), kinetic.hard_collision(0.5)):
    with pytest.warns(UserWarning, match='selects no leaf'):
      tx.init(params)
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    kinetic.soft_collision(0.5).init({'w': jnp.ones((2, 3))})


def test_string_mask_suggests_by_path():
  tx = kinetic.soft_collision(0.5, mask='head/kernel')
  with pytest.raises(TypeError, match=r"by_path\('head/kernel'\)"):
    tx.init(_params())


def test_mask_under_inject_hyperparams_is_loud_and_static_args_works():
  params = {'head': {'kernel': jnp.ones((4, 3)) + jnp.eye(4, 3)},
            'body': {'kernel': jnp.ones((3, 4)) + jnp.eye(3, 4)}}
  grads = jax.tree.map(lambda x: x * 0.5 + 0.1, params)
  mask = masks.by_path('head/kernel')
  # Optax calls every callable hyperparameter with the step count.
  bad = optax.inject_hyperparams(kinetic.soft_collision)(0.5, mask=mask)
  with pytest.raises(ValueError, match="static_args=\\('mask',\\)"):
    bad.init(params)
  good = optax.inject_hyperparams(kinetic.soft_collision,
                                  static_args=('mask',))(0.5, mask=mask)
  state = good.init(params)
  out, state = jax.jit(good.update)(grads, state, params)
  assert not np.allclose(out['head']['kernel'], grads['head']['kernel'])
  np.testing.assert_array_equal(out['body']['kernel'], grads['body']['kernel'])
  # A scalar array as mask (what a schedule-evaluated lambda gives) is loud.
  with pytest.raises(TypeError, match='static_args'):
    kinetic.soft_collision(0.5, mask=jnp.asarray(True)).init(params)


def test_by_path_on_nnx_state_at_init_and_update():
  class Model(nnx.Module):

    def __init__(self, rngs):
      self.body = nnx.Linear(3, 4, rngs=rngs)
      self.head = nnx.Linear(4, 5, rngs=rngs)

    def __call__(self, x):
      return self.head(jnp.tanh(self.body(x)))

  model = Model(nnx.Rngs(0))
  mask = masks.by_path('head/kernel')
  wrapped = nnx.state(model, nnx.Param)      # Variables, as nnx.Optimizer.init
  pure = nnx.as_pure(wrapped)                 # arrays, as in update
  for tree in (wrapped, pure):
    flags = jax.tree.leaves(mask(tree))
    assert sorted(flags) == [False, False, False, True]
  tx = optax.chain(kinetic.soft_collision(0.5, mask=mask), optax.sgd(0.1))
  opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
  x = jnp.ones((8, 3))
  body_before = np.asarray(model.body.kernel[...])
  grads = nnx.grad(lambda m: jnp.sum(m(x)**2))(model)
  opt.update(model, grads)
  assert not np.allclose(model.body.kernel[...], body_before)
  collision_state = opt.opt_state[0]
  assert int(collision_state.count) == 1
  assert float(collision_state.relative_change) > 0


def test_helpers_compose():
  params = _params()
  no_head = masks.invert(masks.by_path('head/*'))(params)
  assert not no_head['params']['head']['kernel']
  assert no_head['params']['Dense_0']['bias']
  both = masks.all_of(masks.by_ndim(2), masks.by_path('Dense_0/*'))(params)
  assert both['params']['Dense_0']['kernel']
  assert not both['params']['Dense_0']['bias']
  assert not both['params']['head']['kernel']


@pytest.mark.parametrize('bad', [(), ('',), ('/',), (3,)])
def test_by_path_rejects_empty_patterns(bad):
  with pytest.raises(ValueError, match='by_path'):
    masks.by_path(*bad)
