"""Condensation diagnostics against NumPy references and constructed layers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kinetix import kinetic
from kinetix import masks
from kinetix import metrics


def _rand(shape, seed):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def cosine_reference(w, neuron_axis=-1):
  """Explicit float64 loops: neurons on ``neuron_axis``, the rest flattened."""
  x = np.moveaxis(np.asarray(w, np.float64), neuron_axis, 0)
  x = x.reshape(x.shape[0], -1)
  n = x.shape[0]
  out = np.zeros((n, n))
  for i in range(n):
    for j in range(n):
      ni, nj = np.linalg.norm(x[i]), np.linalg.norm(x[j])
      out[i, j] = 0.0 if ni == 0 or nj == 0 else x[i] @ x[j] / (ni * nj)
  return out


def stats_reference(w, neuron_axis=-1):
  c = np.abs(cosine_reference(w, neuron_axis))
  off = ~np.eye(c.shape[0], dtype=bool)
  return c[off].max(), c[off].mean()


@pytest.mark.parametrize('shape,neuron_axis', [
    ((7, 5), -1),            # Dense kernel (in, out)
    ((5, 7), 0),             # PyTorch-style (out, in)
    ((3, 3, 4, 6), -1),      # Conv kernel (kh, kw, in, out)
    ((3, 6, 4), 1),          # neurons in the middle
])
def test_neuron_cosine_matches_numpy(shape, neuron_axis):
  w = _rand(shape, 0)
  got = metrics.neuron_cosine(w, neuron_axis=neuron_axis)
  n = shape[neuron_axis]
  assert got.shape == (n, n)
  np.testing.assert_allclose(got, cosine_reference(w, neuron_axis), atol=1e-6)


def test_neuron_cosine_is_scale_invariant_for_tiny_weights():
  w = _rand((5, 50), 1)
  np.testing.assert_allclose(metrics.neuron_cosine(1e-9 * w),
                             metrics.neuron_cosine(w), atol=1e-6)


def test_zero_neurons_give_zeros_not_nan():
  w = _rand((4, 6), 2)
  w[:, 1] = 0.0
  w[:, 4] = 0.0
  c = np.asarray(metrics.neuron_cosine(w))
  assert np.all(np.isfinite(c))
  assert np.all(c[1] == 0) and np.all(c[:, 4] == 0)
  np.testing.assert_allclose(np.diag(c)[[0, 2, 3, 5]], 1.0, atol=1e-6)
  stats = metrics.condensation({'w': w})['w']
  ref_max, ref_mean = stats_reference(w)
  np.testing.assert_allclose(stats['max_abs_cos'], ref_max, atol=1e-6)
  np.testing.assert_allclose(stats['mean_abs_cos'], ref_mean, atol=1e-6)
  assert float(metrics.condensation({'w': np.zeros((3, 4))})['w'][
      'mean_abs_cos']) == 0.0


def test_condensation_on_constructed_duplicates():
  # Five neurons in R^4: a, 2a, -a (one condensed direction, both signs),
  # b ⊥ a and the zero neuron. |cos| off-diagonal: the a-group gives 6
  # entries equal to 1, everything else 0 -> mean 6 / 20.
  a = np.array([1.0, 2.0, 0.0, -1.0])
  b = np.array([2.0, -1.0, 3.0, 0.0])
  kernel = np.stack([a, 2 * a, -a, b, np.zeros(4)], axis=1)  # (in=4, out=5)
  stats = metrics.condensation({'layer': {'kernel': kernel}})
  assert list(stats) == ['layer/kernel']
  np.testing.assert_allclose(stats['layer/kernel']['max_abs_cos'], 1.0,
                             atol=1e-6)
  np.testing.assert_allclose(stats['layer/kernel']['mean_abs_cos'], 6 / 20,
                             atol=1e-6)
  # Orthogonal neurons: no condensation at all.
  eye = metrics.condensation({'k': np.eye(6)})['k']
  assert float(eye['max_abs_cos']) == 0.0 and float(eye['mean_abs_cos']) == 0.0


def test_condensation_matches_reference_and_default_mask():
  params = {'dense': {'kernel': _rand((9, 12), 3), 'bias': _rand((12,), 4)},
            'conv': {'kernel': _rand((3, 3, 2, 5), 5)},
            'step': np.int32(3)}
  stats = metrics.condensation(params)
  assert sorted(stats) == ['conv/kernel', 'dense/kernel']  # ndim >= 2 only
  for path, leaf in (('dense/kernel', params['dense']['kernel']),
                     ('conv/kernel', params['conv']['kernel'])):
    ref_max, ref_mean = stats_reference(leaf)
    np.testing.assert_allclose(stats[path]['max_abs_cos'], ref_max, atol=1e-6)
    np.testing.assert_allclose(stats[path]['mean_abs_cos'], ref_mean,
                               atol=1e-6)
    assert stats[path]['max_abs_cos'].dtype == jnp.float32


@pytest.mark.parametrize('block_size', [1, 3, 7, 64])
def test_blocked_equals_dense(block_size):
  w = _rand((6, 23), 6)
  w[:, 4] = w[:, 9]  # an exact duplicate, so the max is 1
  dense = metrics.condensation({'w': w})['w']
  blocked = metrics.condensation({'w': w}, block_size=block_size)['w']
  np.testing.assert_allclose(blocked['max_abs_cos'], dense['max_abs_cos'],
                             atol=1e-6)
  np.testing.assert_allclose(blocked['mean_abs_cos'], dense['mean_abs_cos'],
                             atol=1e-6)
  np.testing.assert_allclose(dense['max_abs_cos'], 1.0, atol=1e-6)


def test_automatic_blocks_for_wide_layers(monkeypatch):
  w = _rand((4, 50), 7)
  dense = metrics.condensation({'w': w})['w']
  monkeypatch.setattr(metrics, '_BLOCK_ENTRIES', 200)  # -> blocks of 4 rows
  blocked = metrics.condensation({'w': w})['w']
  np.testing.assert_allclose(blocked['mean_abs_cos'], dense['mean_abs_cos'],
                             atol=1e-6)
  np.testing.assert_allclose(blocked['max_abs_cos'], dense['max_abs_cos'],
                             atol=1e-6)


def test_lm_head_never_holds_an_n_by_n_matrix():
  # GPT-2's lm_head, compiled only: temporaries must be O(N·D + block·N),
  # far below the 10 GB that one 50,257² float32 matrix would need.
  n, d = 50257, 768
  fn = jax.jit(lambda p: metrics.condensation({'lm_head': p}))
  compiled = fn.lower(jax.ShapeDtypeStruct((d, n), jnp.float32)).compile()
  temp = compiled.memory_analysis().temp_size_in_bytes
  assert temp < 1.2e9 < n * n * 4


def test_jit_and_mask_by_path_linen_layout():
  variables = {'params': {'body': {'kernel': _rand((8, 16), 8)},
                          'head': {'kernel': _rand((16, 10), 9),
                                   'bias': _rand((10,), 10)}}}
  mask = masks.by_path('head/kernel')
  eager = metrics.condensation(variables, mask=mask)
  jitted = jax.jit(lambda v: metrics.condensation(v, mask=mask))(variables)
  assert list(jitted) == ['params/head/kernel']
  ref_max, ref_mean = stats_reference(variables['params']['head']['kernel'])
  for stats in (eager, jitted):
    np.testing.assert_allclose(stats['params/head/kernel']['max_abs_cos'],
                               ref_max, atol=1e-6)
    np.testing.assert_allclose(stats['params/head/kernel']['mean_abs_cos'],
                               ref_mean, atol=1e-6)
  # A bool-pytree prefix mask works too.
  prefix = {'params': {'body': False, 'head': True}}
  with pytest.raises(ValueError, match='no feature axis'):
    metrics.condensation(variables, mask=prefix)  # selects the 1-D bias


def test_nnx_state():
  nnx = pytest.importorskip('flax.nnx')

  class Model(nnx.Module):

    def __init__(self, rngs):
      self.body = nnx.Linear(4, 8, rngs=rngs)
      self.head = nnx.Linear(8, 3, rngs=rngs)

  model = Model(nnx.Rngs(0))
  state = nnx.state(model, nnx.Param)
  stats = metrics.condensation(state, mask=masks.by_path('head/kernel'))
  assert list(stats) == ['head/kernel']
  ref_max, ref_mean = stats_reference(np.asarray(model.head.kernel[...]))
  np.testing.assert_allclose(stats['head/kernel']['max_abs_cos'], ref_max,
                             atol=1e-6)
  np.testing.assert_allclose(stats['head/kernel']['mean_abs_cos'], ref_mean,
                             atol=1e-6)


def test_layer_axes_keep_layers_apart():
  layer = _rand((5, 6), 11)
  stacked = np.stack([layer, layer])  # (L=2, in, out): identical layers
  stats = metrics.condensation({'w': stacked}, layer_axes=0)['w']
  ref_max, ref_mean = stats_reference(layer)
  # Cross-layer twins (cos = 1) must not count.
  np.testing.assert_allclose(stats['max_abs_cos'], ref_max, atol=1e-6)
  np.testing.assert_allclose(stats['mean_abs_cos'], ref_mean, atol=1e-6)
  assert ref_max < 0.999
  flat = metrics.condensation({'w': stacked})['w']  # (2·5, 6): twins count
  np.testing.assert_allclose(flat['max_abs_cos'], ref_max, atol=1e-6)


def test_agrees_with_the_collision_state():
  params = {'head': {'kernel': _rand((12, 9), 12)}}
  grads = {'head': {'kernel': _rand((12, 9), 13)}}
  tx = kinetic.soft_collision(0.1)
  _, state = tx.update(grads, tx.init(params), params)
  stats = metrics.condensation(params)['head/kernel']
  np.testing.assert_allclose(state.mean_abs_cos, stats['mean_abs_cos'],
                             rtol=1e-5)


def test_single_neuron_and_errors():
  one = metrics.condensation({'w': _rand((4, 1), 14)})['w']
  assert float(one['max_abs_cos']) == 0.0 and float(one['mean_abs_cos']) == 0.0
  with pytest.raises(ValueError, match='neuron_axis'):
    metrics.neuron_cosine(_rand((3, 4), 15), neuron_axis=2)
  with pytest.raises(ValueError, match='no feature axis'):
    metrics.neuron_cosine(_rand((4,), 16))
  with pytest.raises(TypeError, match='floating'):
    metrics.condensation({'w': np.ones((3, 4), np.int32)})
  with pytest.raises(ValueError, match='block_size'):
    metrics.condensation({'w': _rand((3, 4), 17)}, block_size=0)


def test_logging_inside_scan_has_no_host_sync():
  def step(w, _):
    w = w + 0.5
    return w, metrics.condensation({'w': w})['w']['mean_abs_cos']

  w0 = _rand((6, 8), 18)
  _, trace = jax.lax.scan(step, jnp.asarray(w0), None, length=5)
  assert trace.shape == (5,) and bool(jnp.all(jnp.isfinite(trace)))
  # Shifting every weight by a common vector increases alignment.
  assert float(trace[-1]) > float(trace[0])


# --------------------------------------------------------------------------
# correlation_rate: d/dη of mean |cos| at params + η·updates


def _mean_abs_cos_np(w, neuron_axis=-1):
  x = np.moveaxis(np.asarray(w, np.float64), neuron_axis, 0)
  x = x.reshape(x.shape[0], -1)
  norms = np.linalg.norm(x, axis=1)
  u = np.where(norms[:, None] > 0, x / np.where(norms > 0, norms, 1)[:, None],
               0.0)
  c = np.abs(u @ u.T)
  n = len(x)
  return (c.sum() - np.trace(c)) / (n * (n - 1))


@pytest.mark.parametrize('shape,neuron_axis,block_size', [
    ((9, 12), -1, None), ((9, 12), -1, 5), ((12, 9), 0, None),
    ((3, 3, 2, 6), -1, 4)])
def test_correlation_rate_matches_finite_differences(shape, neuron_axis,
                                                     block_size):
  w, u = _rand(shape, 30), _rand(shape, 31)
  rate = metrics.correlation_rate({'k': w}, {'k': u}, neuron_axis=neuron_axis,
                                  block_size=block_size)['k']
  eps = 1e-6
  fd = (_mean_abs_cos_np(w + eps * u.astype(np.float64), neuron_axis)
        - _mean_abs_cos_np(w - eps * u.astype(np.float64), neuron_axis)) / (
            2 * eps)
  np.testing.assert_allclose(rate, fd, rtol=1e-4, atol=1e-6)


def test_correlation_rate_sign_convention_and_structure():
  """Optax adds updates: moving neurons together is positive."""
  w = 1.0 + 0.3 * _rand((6, 4), 32)             # 4 similar neurons
  together = (w.mean(axis=1, keepdims=True) - w)    # towards their mean
  params = {'a': {'kernel': w, 'bias': np.zeros(4, np.float32)}}
  rates = metrics.correlation_rate(
      params, {'a': {'kernel': together, 'bias': np.ones(4, np.float32)}})
  assert list(rates) == list(metrics.condensation(params))
  assert float(rates['a/kernel']) > 0
  neg = metrics.correlation_rate(params, {'a': {'kernel': -together,
                                                'bias': np.zeros(4)}})
  np.testing.assert_allclose(neg['a/kernel'], -rates['a/kernel'], rtol=1e-5)


def test_correlation_rate_on_stacked_layers_and_dead_neurons():
  w, u = _rand((3, 5, 6), 33), _rand((3, 5, 6), 34)
  w[1, :, 2] = 0.0                              # a dead neuron in layer 1
  rate = jax.jit(lambda p, d: metrics.correlation_rate(
      p, d, layer_axes=0))({'k': w}, {'k': u})['k']
  assert np.isfinite(rate)                      # even where it is pushed
  u[1, :, 2] = 0.0                              # ... and where it stays dead
  rate = metrics.correlation_rate({'k': w}, {'k': u}, layer_axes=0)['k']
  eps, w64, u64 = 1e-6, w.astype(np.float64), u.astype(np.float64)
  fd = np.mean([(_mean_abs_cos_np(w64[i] + eps * u64[i]) - _mean_abs_cos_np(
      w64[i] - eps * u64[i])) / (2 * eps) for i in range(3)])
  np.testing.assert_allclose(rate, fd, rtol=1e-4, atol=1e-6)


def test_correlation_rate_errors_name_the_leaf():
  with pytest.raises(ValueError, match="leaf 'k'"):
    metrics.correlation_rate({'k': np.ones((3, 4))}, {'k': np.ones((4, 3))})
  with pytest.raises(ValueError, match='structure'):
    metrics.correlation_rate({'k': np.ones((3, 4))}, {'j': np.ones((3, 4))})
