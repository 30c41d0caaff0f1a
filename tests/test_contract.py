"""Optax's contract, checked once over every optimizer kinetix exports.

Each entry of ``OPTIMIZERS`` is run through the same battery: abstract init,
no arrays at construction, jit without recompilation, extra keyword
arguments, dtypes and ``lax.cond``-stable states, convergence,
``inject_hyperparams``, ``MultiSteps``, ``masked``, ``apply_if_finite``,
visible NaNs and an Orbax checkpoint round trip mid-training.
"""


import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import kinetix

from _cases import COLLISIONS, NAMES, OPTIMIZERS, STATIC  # noqa: F401
from _cases import init_params, loss_fn, make, step_fn

def structure(tree):
  return jax.tree.map(
      lambda x: (x.shape, x.dtype, getattr(x, "weak_type", False)),
      tree)


@pytest.mark.parametrize('name', NAMES)
def test_abstract_init_and_no_arrays_at_construction(name):
  params = init_params()
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                          params)
  tx = make(name)
  state = tx.init(params)
  assert structure(tx.init(abstract)) == structure(state)
  assert structure(jax.eval_shape(tx.init, params)) == structure(state)
  # Built inside a trace and used outside it: any array created at
  # construction would be a leaked tracer.
  box = []

  @jax.jit
  def build(x):
    box.append(make(name))
    return x

  build(1.0)
  updates, _ = jax.jit(box[0].update)(params, box[0].init(params), params,
                                      value=1.0)
  assert all(bool(jnp.isfinite(u).all()) for u in jax.tree.leaves(updates))


@pytest.mark.parametrize('name', NAMES)
def test_jit_no_recompilation_and_extra_args_ignored(name):
  tx = make(name)
  traces = []

  @jax.jit
  def step(params, state):
    traces.append(1)
    value, grads = jax.value_and_grad(loss_fn)(params)
    updates, state = tx.update(grads, state, params, value=value,
                               some_unknown_argument=3)
    return optax.apply_updates(params, updates), state

  params = init_params()
  state = tx.init(params)
  for _ in range(3):
    params, state = step(params, state)
  assert len(traces) == 1


# float16 where it takes its own path (the collisions' half-precision input,
# the aliases' promoted Adam moments); elsewhere it shares bfloat16's.
_DTYPE_CASES = [(name, dtype) for name in NAMES
                for dtype in ('float16', 'bfloat16', 'float32', 'float64')
                if dtype != 'float16' or name in COLLISIONS + (
                    'ko_sgd', 'ko_adamw')]


@pytest.mark.parametrize('name,dtype', _DTYPE_CASES)
def test_dtypes_and_cond_stable_state(name, dtype):
  with jax.enable_x64(dtype == 'float64'):
    params = init_params(jnp.dtype(dtype))
    tx = make(name)
    state = tx.init(params)

    @jax.jit
    def step(params, state, pred):
      value, grads = jax.value_and_grad(loss_fn)(params)
      grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)
      updates, new_state = tx.update(grads, state, params, value=value)
      # Init and update states must be interchangeable inside lax.cond.
      kept = jax.lax.cond(pred, lambda: new_state, lambda: state)
      return updates, new_state, kept

    updates, new_state, kept = step(params, state, True)
    for u, p in zip(jax.tree.leaves(updates), jax.tree.leaves(params)):
      assert u.dtype == p.dtype
      assert bool(jnp.isfinite(u.astype(jnp.float32)).all())
    assert structure(new_state) == structure(state)
    for x in jax.tree.leaves(state):
      if jnp.issubdtype(x.dtype, jnp.floating):
        assert jnp.finfo(x.dtype).bits >= 32, name  # internals in >= f32
    updates2, _, _ = step(params, kept, False)
    assert structure(updates2) == structure(updates)


@pytest.mark.floors
@pytest.mark.parametrize('name', NAMES)
def test_convergence_on_a_quadratic(name):
  tx = make(name)
  params = init_params()
  state = tx.init(params)
  step = step_fn(tx)

  def body(carry, _):
    params, state, _ = step(*carry[:2])
    value = loss_fn(params)
    return (params, state, value), value

  (_, _, _), values = jax.jit(lambda c: jax.lax.scan(body, c, None, 300))(
      (params, state, jnp.zeros([])))
  values = np.asarray(values)
  first = float(loss_fn(params))
  assert np.isfinite(values).all()
  assert values.min() < 0.1 + 0.05 * (first - 0.1), (first, values.min())


@pytest.mark.parametrize('name', NAMES)
def test_inject_hyperparams_matches_plain(name):
  factory, kwargs = OPTIMIZERS[name]
  static = tuple(a for a in STATIC.get(name, ()) if a in kwargs) + (
      ('neuron_axis',) if name in COLLISIONS else ())
  injected = optax.inject_hyperparams(factory, static_args=static)(**kwargs)
  plain = factory(**kwargs)
  if name in COLLISIONS:
    injected = optax.chain(injected, optax.sgd(0.05))
    plain = optax.chain(plain, optax.sgd(0.05))
  params = init_params()
  s1, s2 = plain.init(params), injected.init(params)
  f1, f2 = jax.jit(step_fn(plain)), jax.jit(step_fn(injected))
  p1 = p2 = params
  for _ in range(6):
    p1, s1, _ = f1(p1, s1)
    p2, s2, _ = f2(p2, s2)
  for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)):
    # Injected hyperparams are f32 arrays, not Python floats: rounding only
    # (Adam's normalisation amplifies it near zero gradients).
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('name', NAMES)
def test_multi_steps_and_masked(name):
  params = init_params()
  multi = optax.MultiSteps(make(name), every_k_schedule=2)
  state = multi.init(params)
  step = jax.jit(step_fn(multi))
  p1, state, _ = step(params, state)
  for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)   # accumulating
  p2, state, _ = step(p1, state)
  assert any(bool(jnp.any(a != b)) for a, b in
             zip(jax.tree.leaves(p2), jax.tree.leaves(p1)))

  mask = {'conv': {'kernel': False}, 'dense': {'kernel': True, 'bias': True}}
  masked = optax.masked(make(name), mask)
  state = masked.init(params)
  updates, _ = jax.jit(masked.update)(params, state, params, value=1.0)
  # Masked-out leaves pass through unchanged (optax.masked's contract).
  np.testing.assert_array_equal(updates['conv']['kernel'],
                                params['conv']['kernel'])


@pytest.mark.parametrize('name', NAMES)
def test_nan_gradients_are_visible_and_apply_if_finite_skips(name):
  params = init_params()
  bad = jax.tree.map(jnp.ones_like, params)
  bad['dense']['kernel'] = bad['dense']['kernel'].at[0, 0].set(jnp.nan)
  tx = make(name)
  updates, _ = jax.jit(tx.update)(bad, tx.init(params), params, value=1.0)
  assert any(bool(jnp.isnan(u).any()) for u in jax.tree.leaves(updates)), (
      'a NaN gradient must not be silently repaired')

  safe = optax.apply_if_finite(make(name), max_consecutive_errors=5)
  state = safe.init(params)
  update = jax.jit(safe.update)
  updates, skipped = update(bad, state, params, value=1.0)
  assert all(bool((u == 0).all()) for u in jax.tree.leaves(updates))
  assert int(skipped.notfinite_count) == 1
  assert structure(skipped.inner_state) == structure(state.inner_state)
  good = jax.tree.map(jnp.ones_like, params)
  updates, after = update(good, skipped, params, value=1.0)
  assert int(after.notfinite_count) == 0
  assert all(bool(jnp.isfinite(u).all()) for u in jax.tree.leaves(updates))


@pytest.mark.parametrize('name', NAMES)
def test_orbax_checkpoint_resumes_bit_identically(name, tmp_path):
  ocp = pytest.importorskip('orbax.checkpoint')
  tx = make(name)
  step = jax.jit(step_fn(tx))
  params = init_params()
  state = tx.init(params)
  for _ in range(3):
    params, state, _ = step(params, state)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(tmp_path / 'ckpt', {'params': params, 'opt': state})
  checkpointer.wait_until_finished()

  ref_params, ref_state = params, state
  for _ in range(4):
    ref_params, ref_state, _ = step(ref_params, ref_state)

  fresh = {'params': init_params(), 'opt': tx.init(init_params())}
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, fresh)
  restored = checkpointer.restore(tmp_path / 'ckpt', abstract)
  params, state = restored['params'], restored['opt']
  assert structure(state) == structure(fresh['opt'])
  for _ in range(4):
    params, state, _ = step(params, state)
  for a, b in zip(jax.tree.leaves((params, state)),
                  jax.tree.leaves((ref_params, ref_state))):
    if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
      a, b = jax.random.key_data(a), jax.random.key_data(b)
    np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------
# Bad input: clear errors at construction or init.


@pytest.mark.parametrize('factory,kwargs,match', [
    (kinetix.ko_sgd, dict(learning_rate=-0.1), 'learning_rate'),
    (kinetix.ko_adamw, dict(learning_rate=-1e-3), 'learning_rate'),
    (kinetix.cool_momentum, dict(learning_rate=-0.1, total_steps=10),
     'learning_rate'),
    (kinetix.cool_momentum, dict(learning_rate=0.1, total_steps=0),
     'total_steps'),
    (kinetix.cool_momentum, dict(learning_rate=0.1, total_steps=-5),
     'total_steps'),
    (kinetix.cool_momentum, dict(learning_rate=0.1), 'total_steps'),
    (kinetix.cool_momentum, dict(total_steps=10, rho0=1.0), 'rho0'),
    (kinetix.cool_momentum, dict(total_steps=10, schedule='cosine'),
     'schedule'),
    (kinetix.bbi, dict(learning_rate=-0.1), 'learning_rate'),
    (kinetix.bbi, dict(learning_rate=0.1, threshold0=0), 'threshold0'),
    (kinetix.bbi, dict(learning_rate=0.1, n_fixed_bounces=-1),
     'n_fixed_bounces'),
    (kinetix.bbi, dict(learning_rate=0.1, delta_energy=-1.0),
     'delta_energy'),
    (kinetix.ecdsep, dict(learning_rate=-0.1), 'learning_rate'),
    (kinetix.ecdsep, dict(learning_rate=0.1, eta=0.0), 'eta'),
    (kinetix.ecdsep, dict(learning_rate=0.1, nu=-1.0), 'nu'),
    (kinetix.soft_collision, dict(coll_coef=1.5), 'coll_coef'),
    (kinetix.hard_collision, dict(coll_coef=-0.1), 'coll_coef'),
    (kinetix.hard_collision, dict(pairing='random'), 'pairing'),
])
def test_bad_hyperparameters_fail_at_construction(factory, kwargs, match):
  with pytest.raises((ValueError, TypeError), match=match):
    factory(**kwargs)


@pytest.mark.parametrize('name', NAMES)
def test_non_floating_params_fail_at_init_naming_the_leaf(name):
  params = init_params()
  params['dense']['kernel'] = jnp.ones((6, 5), jnp.int32)
  with pytest.raises(TypeError, match=r'dense/kernel'):
    make(name).init(params)


@pytest.mark.parametrize('name', [n for n in NAMES if n not in COLLISIONS])
def test_wrong_update_structure_is_an_error(name):
  # (Collisions keep no per-leaf state: any params structure is valid.)
  params = init_params()
  tx = make(name)
  state = tx.init(params)
  wrong = {'dense': params['dense']}
  with pytest.raises((ValueError, TypeError)):
    tx.update(wrong, state, wrong, value=1.0)


@pytest.mark.parametrize('name', ['bbi', 'ecdsep'])
def test_value_must_be_a_scalar(name):
  params = init_params()
  tx = make(name)
  state = tx.init(params)
  with pytest.raises(ValueError, match='scalar'):
    tx.update(params, state, params, value=jnp.ones(3))


def _public_callables():
  import inspect  # pylint: disable=g-import-not-at-top
  modules = (kinetix, kinetix.kinetic, kinetix.masks, kinetix.metrics)
  out = {}
  for module in modules:
    for name in getattr(module, '__all__', dir(module)):
      obj = getattr(module, name)
      if (not name.startswith('_') and inspect.isfunction(obj)
          and obj.__module__.startswith('kinetix')):
        out[f'{obj.__module__}.{name}'] = obj
  return out


@pytest.mark.parametrize('qualname', sorted(_public_callables()))
def test_annotations_are_real_objects(qualname):
  """Tools that read signatures (Optax's own contrib battery, Sphinx, IDEs)
  see the annotated objects, not strings."""
  import inspect  # pylint: disable=g-import-not-at-top
  sig = inspect.signature(_public_callables()[qualname])
  for param in sig.parameters.values():
    assert not isinstance(param.annotation, str), (qualname, param.name)
  assert not isinstance(sig.return_annotation, str), qualname


SCHEDULED = {'ko_sgd': 'learning_rate', 'ko_adamw': 'learning_rate',
             'cool_momentum': 'learning_rate', 'bbi': 'learning_rate',
             'ecdsep': 'learning_rate', 'soft_collision': 'coll_coef'}


@pytest.mark.parametrize('name', sorted(SCHEDULED))
def test_schedules_are_annotated_and_accepted(name):
  """Optax's contrib battery runs its schedule test only for an argument
  annotated ``optax.ScalarOrSchedule``; this is that test."""
  import inspect  # pylint: disable=g-import-not-at-top
  factory, kwargs = OPTIMIZERS[name]
  arg = SCHEDULED[name]
  annotation = inspect.signature(factory).parameters[arg].annotation
  assert annotation is optax.ScalarOrSchedule
  value = kwargs.get(arg, 0.1)
  results = []
  for setting in (value, optax.constant_schedule(value)):
    tx = make(name, **{arg: setting})
    step = jax.jit(step_fn(tx))
    params, state = init_params(), tx.init(init_params())
    for _ in range(3):
      params, state, _ = step(params, state)
    results.append(params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6),
               *results)


def test_package_is_typed():
  import importlib.resources  # pylint: disable=g-import-not-at-top
  assert (importlib.resources.files('kinetix') / 'py.typed').is_file()
  assert set(kinetix.__all__) <= set(dir(kinetix))
