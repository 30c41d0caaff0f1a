"""The Flax examples in examples/ train; their collisions act on the head."""

import importlib.util
import math
import pathlib
import sys

import jax
import numpy as np
import pytest

pytest.importorskip('flax')
pytest.importorskip('sklearn')
from flax import nnx  # noqa: E402

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / 'examples'
STEPS = 300


def _load(name: str):
  """Imports examples/<name>.py as a module (examples/ is not a package)."""
  module_name = f'kinetix_example_{name}'
  if module_name in sys.modules:
    return sys.modules[module_name]
  spec = importlib.util.spec_from_file_location(module_name,
                                                EXAMPLES / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  sys.modules[module_name] = module
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope='module')
def nnx_mlp():
  return _load('nnx_mlp')


@pytest.fixture(scope='module')
def linen_trainstate():
  return _load('linen_trainstate')


def _check_metrics(result):
  assert result['steps'] == STEPS
  assert result['test_accuracy'] > 0.9, result  # chance: 0.1
  assert math.isfinite(result['train_loss']) and result['train_loss'] < 0.5
  cond = result['head_condensation']
  assert set(cond) == {'max_abs_cos', 'mean_abs_cos'}
  for value in cond.values():
    assert math.isfinite(value) and 0.0 <= value <= 1.0, cond
  assert cond['mean_abs_cos'] <= cond['max_abs_cos']


def test_nnx_mlp_trains(nnx_mlp, capsys):
  result = nnx_mlp.main(steps=STEPS, quiet=True)
  assert capsys.readouterr().out == ''  # quiet
  _check_metrics(result)
  # The soft collision changed the head gradient at the last step.
  assert 0.0 < result['collision_relative_change'] < 1.0, result


def test_linen_trainstate_trains(linen_trainstate, capsys):
  result = linen_trainstate.main(steps=STEPS, quiet=True)
  assert capsys.readouterr().out == ''
  _check_metrics(result)
  # Some head-neuron pairs collided (with the paper's κ = 1 none would).
  assert 0.0 < result['accepted_fraction'] < 1.0, result


def test_main_prints_accuracy(nnx_mlp, capsys):
  nnx_mlp.main(steps=5)
  out = capsys.readouterr().out
  assert 'test accuracy' in out and 'max |cos|' in out


def _batch(module):
  x_train, y_train, _, _ = module.load_data()
  return x_train[:128], y_train[:128]


def _pure(tree):
  return jax.tree.map(np.asarray, tree)


def test_nnx_collision_changes_only_the_head_update(nnx_mlp):
  """First step from the same init and batch, with and without collision."""
  x, y = _batch(nnx_mlp)
  updates = {}
  for collision in (True, False):
    model = nnx_mlp.MLP(rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, nnx_mlp.make_optimizer(collision),
                              wrt=nnx.Param)
    before = _pure(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    nnx_mlp.train_step(model, optimizer, x, y)
    after = _pure(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    updates[collision] = jax.tree.map(np.subtract, after, before)
  with_c, without = updates[True], updates[False]
  for name in ('kernel', 'bias'):
    np.testing.assert_array_equal(with_c['body'][name], without['body'][name])
  np.testing.assert_array_equal(with_c['head']['bias'],
                                without['head']['bias'])
  diff = np.abs(with_c['head']['kernel'] - without['head']['kernel']).max()
  assert diff > 1e-4, diff  # AdamW's first step is ±lr = 1e-3 per entry


def test_linen_collision_changes_only_the_head_update(linen_trainstate):
  x, y = _batch(linen_trainstate)
  updates, states = {}, {}
  for collision in ('hard', 'none'):
    state = linen_trainstate.create_state(collision)
    states[collision], _ = linen_trainstate.train_step(state, x, y)
    updates[collision] = jax.tree.map(lambda a, b: np.asarray(a - b),
                                      states[collision].params, state.params)
  with_c, without = updates['hard'], updates['none']
  for name in ('kernel', 'bias'):
    np.testing.assert_array_equal(with_c['body'][name], without['body'][name])
  np.testing.assert_array_equal(with_c['head']['bias'],
                                without['head']['bias'])
  diff = np.abs(with_c['head']['kernel'] - without['head']['kernel']).max()
  assert diff > 1e-4, diff
  assert linen_trainstate.collision_state(states['none']) is None
  hard = linen_trainstate.collision_state(states['hard'])
  assert int(hard.accepted_pairs) > 0


def test_equinox_bbi_trains_with_filtered_params(capsys):
  pytest.importorskip('equinox')
  module = _load('equinox_bbi')
  result = module.main(steps=STEPS, quiet=True)
  assert capsys.readouterr().out == ''
  assert result['test_accuracy'] > 0.9, result
  assert result['train_loss'] < 0.5 * result['first_loss'], result


def test_equinox_whole_model_is_a_clear_error():
  pytest.importorskip('equinox')
  module = _load('equinox_bbi')
  model = module.make_model(jax.random.key(0))
  with pytest.raises(TypeError, match=r'eqx\.filter\(model, eqx\.is_array\)'):
    module.make_optimizer().init(model)
