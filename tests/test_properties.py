"""Property tests (hypothesis): random shapes, layouts, masks, coefficients.

Each example compiles a new program (shapes change), so the example counts
are small; the dense references are those of ``_references``.
"""

import warnings

import jax
import numpy as np
import pytest

hypothesis = pytest.importorskip('hypothesis')
from hypothesis import given, settings, strategies as st  # noqa: E402

import kinetix  # noqa: E402
from _references import from_neurons_np as _from_neurons_np  # noqa: E402
from _references import hard_reference  # noqa: E402
from _references import layer_key as _layer_key  # noqa: E402
from _references import neurons_np as _neurons_np  # noqa: E402
from _references import soft_reference  # noqa: E402

SETTINGS = settings(max_examples=6, deadline=None, derandomize=True,
                    suppress_health_check=list(hypothesis.HealthCheck))


@st.composite
def layers(draw, max_neurons=7):
  """A leaf shape, a valid neuron axis, and float32 weights and gradients."""
  ndim = draw(st.sampled_from([2, 2, 3, 4]))
  shape = tuple(draw(st.integers(1, 4)) for _ in range(ndim - 1))
  neuron_axis = draw(st.integers(-ndim, ndim - 1))
  n = draw(st.integers(2, max_neurons))
  shape = list(shape)
  shape.insert(neuron_axis % ndim, n)
  shape = tuple(shape)
  seed = draw(st.integers(0, 2**31 - 1))
  rng = np.random.default_rng(seed)
  w = rng.normal(size=shape).astype(np.float32)
  g = (rng.normal(size=shape) * draw(st.sampled_from([1e-3, 1.0, 30.0]))
       ).astype(np.float32)
  if draw(st.booleans()):  # a zero neuron (dead unit): never NaN
    idx = [slice(None)] * ndim
    idx[neuron_axis] = 0
    w[tuple(idx)] = 0.0
  return shape, neuron_axis, w, g


def _run(tx, grads, params):
  state = tx.init(params)
  return jax.jit(tx.update)(grads, state, params)


@SETTINGS
@given(layer=layers(), coef=st.floats(0.0, 1.0),
       include_self=st.booleans(),
       min_similarity=st.one_of(st.none(), st.floats(-1.0, 1.0)),
       block=st.one_of(st.none(), st.integers(1, 8)))
def test_soft_equals_dense_reference(layer, coef, include_self, min_similarity,
                                     block):
  shape, axis, w, g = layer
  tx = kinetix.soft_collision(coef, neuron_axis=axis, include_self=include_self,
                              min_similarity=min_similarity, block_size=block)
  updates, state = _run(tx, {'k': g}, {'k': w})
  out = np.asarray(updates['k'])
  assert np.isfinite(out).all() and np.isfinite(state.mean_abs_cos)
  ref = soft_reference(_neurons_np(w, axis), _neurons_np(g, axis), coef,
                       include_self, min_similarity)
  scale = max(1.0, np.abs(g).max())
  np.testing.assert_allclose(out, _from_neurons_np(ref, shape, axis),
                             rtol=1e-4, atol=1e-4 * scale)


@SETTINGS
@given(layer=layers(), coef=st.floats(0.0, 1.0), kappa=st.floats(0.0, 2.0),
       max_pairs=st.one_of(st.none(), st.integers(1, 30)))
def test_hard_conserves_momentum_and_equals_dense_reference(layer, coef, kappa,
                                                            max_pairs):
  shape, axis, w, g = layer
  tx = kinetix.hard_collision(coef, key=5, neuron_axis=axis,
                              distance_scale=kappa, max_pairs=max_pairs)
  updates, state = _run(tx, {'k': g}, {'k': w})
  out = _neurons_np(updates['k'], axis)
  g_n = _neurons_np(g, axis)
  assert np.isfinite(out).all()
  scale = max(1.0, np.abs(g).max())
  # Total momentum sum_i g_i is conserved by every elastic pair collision.
  np.testing.assert_allclose(out.sum(0), g_n.sum(0), rtol=1e-4,
                             atol=1e-4 * scale * g_n.shape[0])
  ref, accepted = hard_reference(_neurons_np(w, axis), g_n, coef, kappa,
                                 _layer_key(5, 'k'))
  # Acceptance at the threshold is a float comparison: allow a borderline
  # pair to differ, otherwise the results are equal.
  if int(state.accepted_pairs) == accepted:
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * scale)


@SETTINGS
@given(layer=layers(max_neurons=9), coef=st.floats(0.0, 1.0),
       kappa=st.floats(0.0, 2.0), key=st.integers(0, 2**31 - 1))
def test_disjoint_conserves_momentum_and_energy(layer, coef, kappa, key):
  _, axis, w, g = layer
  tx = kinetix.hard_collision(coef, key=key, neuron_axis=axis,
                              distance_scale=kappa, pairing='disjoint')
  updates, state = _run(tx, {'k': g}, {'k': w})
  out = _neurons_np(updates['k'], axis)
  g_n = _neurons_np(g, axis)
  scale = max(1.0, np.abs(g).max())
  assert np.isfinite(out).all()
  assert int(state.accepted_pairs) <= g_n.shape[0] // 2
  np.testing.assert_allclose(out.sum(0), g_n.sum(0), rtol=1e-4,
                             atol=1e-4 * scale * g_n.shape[0])
  np.testing.assert_allclose((out ** 2).sum(), (g_n ** 2).sum(), rtol=1e-4,
                             atol=1e-6)


@SETTINGS
@given(data=st.data(), kind=st.sampled_from(['soft', 'hard', 'disjoint']))
def test_masks_touch_only_selected_leaves(data, kind):
  names = ['a', 'b', 'c', 'd']
  rng = np.random.default_rng(data.draw(st.integers(0, 2**31 - 1)))
  # ndim >= 2: an explicitly selected 1-D leaf is (rightly) an error.
  shapes = {n: tuple(data.draw(st.lists(st.integers(1, 4), min_size=2,
                                        max_size=3)))
            for n in names}
  params = {n: rng.normal(size=s).astype(np.float32)
            for n, s in shapes.items()}
  grads = {n: rng.normal(size=s).astype(np.float32) for n, s in shapes.items()}
  chosen = data.draw(st.lists(st.sampled_from(names), unique=True))
  # A bool pytree, a callable, or by_path patterns: all select `chosen`.
  form = data.draw(st.sampled_from(['tree', 'callable', 'by_path']))
  if form == 'tree':
    mask = {n: n in chosen for n in names}
  elif form == 'callable':
    mask = lambda p: {n: n in chosen for n in p}  # noqa: E731
  else:
    mask = kinetix.masks.by_path(*chosen) if chosen else {
        n: False for n in names}
  factory = {'soft': lambda: kinetix.soft_collision(0.5, mask=mask),
             'hard': lambda: kinetix.hard_collision(0.9, mask=mask),
             'disjoint': lambda: kinetix.hard_collision(
                 0.9, mask=mask, pairing='disjoint')}[kind]
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    updates, _ = _run(factory(), grads, params)
  # Selecting nothing is allowed but never silent.
  empty = [w for w in caught if 'selects no leaf' in str(w.message)]
  assert bool(empty) == (not chosen)
  for n in names:
    out = np.asarray(updates[n])
    assert np.isfinite(out).all()
    if n not in chosen:
      np.testing.assert_array_equal(out, grads[n])
