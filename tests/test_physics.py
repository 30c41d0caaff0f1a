"""CoolMomentum, BBI and ECDSep against plain NumPy float64 transcriptions.

The references below follow shared/reference/optimizers.md §2–4 (the authors'
code) line by line, with NumPy and Python control flow; only the random
numbers are taken from JAX with kinetix's documented recipe (call ``k``
splits the key carry-first, leaf ``path`` folds in ``path_seed(path)``), so
that the comparison is exact. Everything runs in float64 (``enable_x64``).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import kinetix
from kinetix import _utils
from kinetix.annealing import cool_momentum_rho
from kinetix.hamiltonian import bbi_energy
from kinetix.hamiltonian import ecdsep_energy

# --------------------------------------------------------------------------
# A small smooth non-quadratic problem with two leaves.

_RNG = np.random.default_rng(0)
_TARGET = {'a': _RNG.normal(size=(3, 4)), 'b': _RNG.normal(size=(5,))}
_CURV = {'a': _RNG.uniform(0.5, 2.0, size=(3, 4)),
         'b': _RNG.uniform(0.5, 2.0, size=(5,))}
_OFFSET = 0.25


def _loss(p):
  tot = _OFFSET
  for k in ('a', 'b'):
    d = p[k] - _TARGET[k]
    tot = tot + jnp.sum(_CURV[k] * jnp.log(jnp.cosh(d)))
  return tot


def _loss_np(p):
  return _OFFSET + sum(float(np.sum(_CURV[k] * np.log(np.cosh(p[k] - _TARGET[k]))))
                       for k in ('a', 'b'))


def _grad_np(p):
  return {k: _CURV[k] * np.tanh(p[k] - _TARGET[k]) for k in ('a', 'b')}


def _init_params():
  return {'a': np.zeros((3, 4)), 'b': np.full((5,), 0.5)}


def _run_jax(tx, steps, params=None):
  """Jitted loop; per call: params before, value, grads, updates, state."""
  params = jax.tree.map(jnp.asarray, params or _init_params())
  state = tx.init(params)

  @jax.jit
  def step(params, state):
    value, grads = jax.value_and_grad(_loss)(params)
    updates, state = tx.update(grads, state, params, value=value)
    return optax.apply_updates(params, updates), state, value, grads, updates

  trace = []
  for _ in range(steps):
    new_params, new_state, value, grads, updates = step(params, state)
    trace.append(dict(params=params, value=value, grads=grads,
                      updates=updates, state=new_state))
    params, state = new_params, new_state
  return params, state, trace


class _Draws:
  """kinetix's per-call random draws, as float64 NumPy arrays."""

  def __init__(self, seed, kind):
    self.key = jax.random.key(seed)
    self.kind = kind

  def next_call(self):
    self.key, sub = jax.random.split(self.key)
    self._sub = sub

  def draw(self, path, shape):
    k = jax.random.fold_in(self._sub, _utils.path_seed(path))
    if self.kind == 'uniform':
      return np.asarray(jax.random.uniform(k, shape, jnp.float64, -0.5, 0.5))
    return np.asarray(jax.random.normal(k, shape, jnp.float64))


@pytest.fixture(autouse=True)
def _x64():
  with jax.enable_x64(True):
    yield


# --------------------------------------------------------------------------
# CoolMomentum


def _rho_np(t, rho0, total, schedule):
  if t >= total:
    return 0.0
  if schedule == 'paper':   # the TF code: 1 - (1 - rho0) / alpha**t
    alpha = (1 - rho0) ** (1 / total)
    return max(0.0, 1 - (1 - rho0) / alpha ** t)
  if schedule == 'exact':
    k0 = (1 - rho0) / (1 + rho0)
    k = k0 / (k0 ** (1 / total)) ** t
    return max(0.0, (1 - k) / (1 + k))
  return max(0.0, rho0 * (1 - t / total) / abs(1 - rho0 * t / total))


@pytest.mark.parametrize('schedule', ['paper', 'exact', 'linear'])
def test_cool_momentum_rho_matches_reference_formulas(schedule):
  ts = np.arange(0, 130)
  got = np.asarray([cool_momentum_rho(t, 0.99, 100, schedule, jnp.float64)
                    for t in ts])
  want = np.asarray([_rho_np(t, 0.99, 100, schedule) for t in ts])
  np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
  assert got[0] == pytest.approx(0.99) and np.all(got[100:] == 0)
  assert np.all(np.diff(got[:101]) <= 1e-15)  # cooling never heats up


@pytest.mark.parametrize('schedule', ['paper', 'exact', 'linear'])
@pytest.mark.parametrize('weight_decay', [0.0, 0.05])
def test_cool_momentum_matches_numpy_position_form(schedule, weight_decay):
  lr, rho0, total, steps = 0.05, 0.95, 120, 200
  tx = kinetix.cool_momentum(lr, rho0, total, schedule=schedule,
                             weight_decay=weight_decay)
  _, state, trace = _run_jax(tx, steps)
  # theta_{t+1} = theta_t + rho_t (theta_t - theta_{t-1}) - lr (1+rho_t)/2 g~
  theta = _init_params()
  prev = {k: v.copy() for k, v in theta.items()}
  for t in range(steps):
    np.testing.assert_allclose(
        np.concatenate([np.ravel(trace[t]['params'][k]) for k in 'ab']),
        np.concatenate([np.ravel(theta[k]) for k in 'ab']), rtol=1e-10,
        atol=1e-12, err_msg=f'step {t}')
    rho = _rho_np(t, rho0, total, schedule)
    g = _grad_np(theta)
    new = {k: theta[k] + rho * (theta[k] - prev[k])
              - lr * (1 + rho) / 2 * (g[k] + weight_decay * theta[k])
           for k in theta}
    prev, theta = theta, new
    assert float(trace[t]['state'].rho) == pytest.approx(rho, abs=1e-14)
  assert int(state.count) == steps and float(state.rho) == 0.0


def test_cool_momentum_first_step_is_a_scaled_descent_step():
  # Not the third-party ports' unscaled ascent step theta += g.
  tx = kinetix.cool_momentum(0.1, 0.9, 10)
  g = {'w': jnp.array([1.0, -2.0])}
  updates, _ = tx.update(g, tx.init(g))
  np.testing.assert_allclose(updates['w'], -0.1 * 1.9 / 2 * g['w'])


# --------------------------------------------------------------------------
# BBI


class _BBIRef:
  """gbdl/BBI ``inflation.py::BBI.step``, transcribed (one param group)."""

  def __init__(self, lr, v0, t0, t1, de, cons, nb, eps1=1e-10, eps2=1e-40,
               draws=None):
    self.lr, self.v0, self.t0, self.t1 = lr, v0, t0, t1
    self.de, self.cons, self.nb, self.eps1, self.eps2 = de, cons, nb, eps1, eps2
    self.pi = None
    self.iteration = 0
    self.draws = draws

  def step(self, theta, f, g):
    """Returns the new theta (a copy) and whether this call bounced."""
    self.draws.next_call()
    v = f - self.v0
    if self.iteration == 0:
      self.v_init = f - self.v0
      self.energy = self.v_init + self.de
      self.counter = self.counter0 = self.fixed = 0
      self.min_v = math.inf
    theta = {k: x.copy() for k, x in theta.items()}
    if not v > self.eps2:
      return theta, False
    e = self.energy
    if self.pi is None:
      norm0 = math.sqrt(max(e * e / self.v_init - self.v_init, 0.0))
      self.pi = {k: -g[k] / np.linalg.norm(g[k]) * norm0 for k in g}
    ps2 = sum(float(np.sum(p * p)) for p in self.pi.values())
    r = 1.0
    if self.cons:
      target = v * ((e / v) ** 2 - 1)
      if not (abs(ps2 - target) < self.eps1 or target < 0):
        r = math.sqrt(target / ps2)
    if self.counter != self.t1 and self.counter0 != self.t0:
      for k in theta:
        self.pi[k] = r * self.pi[k] - 0.5 * self.lr * (v / e + e / v) * g[k]
        theta[k] = theta[k] + self.lr * (v / e) * self.pi[k]
      self.counter0 += 1
      self.counter += 1
      self.iteration += 1
      if v < self.min_v:
        self.min_v = v
        self.counter = 0
      return theta, False
    u = {k: self.draws.draw(k, self.pi[k].shape) for k in self.pi}
    scale = math.sqrt(ps2 / sum(float(np.sum(x * x)) for x in u.values()))
    self.pi = {k: u[k] * scale for k in u}
    if self.counter0 == self.t0:
      self.fixed += 1
      self.counter0 = 0 if self.fixed < self.nb else self.counter0 + 1
    self.counter = 0
    return theta, True


@pytest.mark.parametrize('delta_energy,conserve', [(0.5, True), (0.0, True),
                                                   (0.3, False)])
def test_bbi_matches_numpy_reference_across_bounces(delta_energy, conserve):
  kw = dict(v0=0.1, threshold0=15, threshold=12, n_fixed_bounces=3,
            delta_energy=delta_energy, conserve_energy=conserve)
  tx = kinetix.bbi(0.05, key=7, **kw)
  _, state, trace = _run_jax(tx, 150)
  ref = _BBIRef(0.05, 0.1, 15, 12, delta_energy, conserve, 3,
                draws=_Draws(7, 'uniform'))
  theta = _init_params()
  n_bounces = 0
  for t, rec in enumerate(trace):
    for k in theta:
      np.testing.assert_allclose(rec['params'][k], theta[k], rtol=1e-9,
                                 atol=1e-11, err_msg=f'call {t}, leaf {k}')
    theta, bounced = ref.step(theta, _loss_np(theta), _grad_np(theta))
    n_bounces += bounced
    st = rec['state']
    assert int(st.bounces) == n_bounces, t
    assert (int(st.iteration), int(st.counter), int(st.counter0),
            int(st.fixed_bounces)) == (ref.iteration, ref.counter,
                                       ref.counter0, ref.fixed), t
    for k in theta:
      np.testing.assert_allclose(st.momentum[k], ref.pi[k], rtol=1e-8,
                                 atol=1e-11, err_msg=f'call {t}, leaf {k}')
  # Both kinds of bounce happened, and the fixed ones stopped at N_b.
  assert ref.fixed == 3 and n_bounces > 3


def test_bbi_energy_is_conserved_at_every_real_step():
  lr, v0 = 0.05, 0.1
  tx = kinetix.bbi(lr, v0=v0, delta_energy=0.4, threshold0=25,
                   threshold=40, n_fixed_bounces=2, key=1)
  _, _, trace = _run_jax(tx, 120)
  checked = 0
  for rec in trace:
    st = rec['state']
    if not bool(jnp.any(rec['updates']['a'] != 0)):
      continue  # a bounce: theta does not move, |pi| is kept
    v = float(rec['value']) - v0
    e = float(st.energy)
    if e * e / v - v < 0:
      continue  # the rescale is skipped by definition (E^2/V < V)
    kick = 0.5 * lr * (v / e + e / v)
    # The momentum that was kicked: r * pi = pi_new + kick * g.
    rescaled = jax.tree.map(lambda p, g: p + kick * g, st.momentum,
                            rec['grads'])
    h = float(bbi_energy(rec['value'], rescaled, v0=v0))
    assert h == pytest.approx(e, rel=1e-10)
    checked += 1
  assert checked > 100


def test_bbi_bounce_timing_fixed_then_progress():
  params = {'w': jnp.ones(3)}
  grads = {'w': jnp.array([0.1, -0.2, 0.3])}

  def bounce_calls(tx, values):
    state = tx.init(params)
    update = jax.jit(tx.update)
    calls = []
    for i, val in enumerate(values):
      before = int(state.bounces)
      _, state = update(grads, state, params, value=jnp.float64(val))
      if int(state.bounces) > before:
        calls.append(i)
    return calls, state

  # Fixed bounces after T0, 2 T0, 3 T0 real steps (each bounce is a call).
  tx = kinetix.bbi(0.01, threshold0=10, threshold=math.inf,
                   n_fixed_bounces=3, delta_energy=0.5)
  decreasing = np.linspace(2.0, 1.0, 100)
  calls, state = bounce_calls(tx, decreasing)
  assert calls == [10, 21, 32]
  assert int(state.fixed_bounces) == 3 and int(state.iteration) == 97
  # n_fixed_bounces=0 still bounces once at T0, as the reference does.
  tx = kinetix.bbi(0.01, threshold0=10, threshold=math.inf,
                   n_fixed_bounces=0, delta_energy=0.5)
  assert bounce_calls(tx, decreasing)[0] == [10]
  # Progress-dependent: T1 real steps without a new minimum of V.
  tx = kinetix.bbi(0.01, threshold0=1e20, threshold=5, delta_energy=0.5)
  calls, _ = bounce_calls(tx, np.ones(20))
  assert calls == [6, 12, 18]
  # A new minimum resets the T1 clock.
  values = [1.0] * 4 + [0.9] + [1.0] * 10
  assert bounce_calls(tx, values)[0] == [10]


def test_bbi_skips_calls_with_nonpositive_potential():
  tx = kinetix.bbi(0.1, v0=1.0)
  params = {'w': jnp.ones(2)}
  g = {'w': jnp.ones(2)}
  state = tx.init(params)
  updates, state = tx.update(g, state, params, value=jnp.float64(0.5))
  assert float(jnp.abs(updates['w']).sum()) == 0
  assert int(state.iteration) == 0 and int(state.count) == 1
  updates, state = tx.update(g, state, params, value=jnp.float64(2.0))
  assert int(state.iteration) == 1 and float(state.energy) == 1.0


# --------------------------------------------------------------------------
# ECDSep


class _ECDSepRef:
  """gbdl/ECDSep ``inflation.py::ECDSep.step``, transcribed."""

  def __init__(self, lr, eta, nu, f0, de, s, wd, cons, eps1=1e-10,
               eps2=1e-40, draws=None):
    self.lr, self.eta, self.nu, self.f0 = lr, eta, nu, f0
    self.de, self.s, self.wd, self.cons = de, s, wd, cons
    self.eps1, self.eps2 = eps1, eps2
    self.iteration = 0
    self.draws = draws

  def step(self, theta, loss, g):
    self.draws.next_call()
    theta = {k: x.copy() for k, x in theta.items()}
    f = loss
    if self.wd != 0:
      f += 0.5 * self.wd * sum(float(np.sum(x * x)) for x in theta.values())
    v = (f - self.f0) ** self.eta
    de = self.de if self.s == 1 else 1.0
    if self.iteration == 0:
      self.exp_energy = math.exp(math.log(v) + math.log(self.s + de))
      g2 = sum(float(np.sum(x * x)) for x in g.values())
      self.p = {k: -g[k] * math.sqrt(de / g2) for k in g}
      self.p2 = de
    if not v > self.eps2:
      return theta
    c = 1.0
    if self.cons:
      p2true = self.exp_energy / v - self.s
      if not (abs(p2true - self.p2) < self.eps1 or p2true < 0
              or self.p2 == 0):
        c = math.sqrt(p2true / self.p2)
    for k in theta:
      self.p[k] = c * self.p[k] - self.lr * self.eta / (f - self.f0) * (
          g[k] + self.wd * theta[k])
    big_p2 = sum(float(np.sum(x * x)) for x in self.p.values())
    for k in theta:
      theta[k] = theta[k] + self.lr * 2 * self.p[k] / (self.s + big_p2)
    d = {k: self.p[k] / math.sqrt(big_p2)
         + self.nu * self.draws.draw(k, self.p[k].shape) for k in self.p}
    dn = math.sqrt(sum(float(np.sum(x * x)) for x in d.values()))
    self.p = {k: math.sqrt(big_p2) * d[k] / dn for k in d}
    self.p2 = big_p2
    self.iteration += 1
    return theta


@pytest.mark.parametrize('kw', [
    dict(eta=1.0, nu=1e-3, delta_energy=0.5),
    dict(eta=2.0, nu=1e-2, delta_energy=0.0, weight_decay=0.02),
    dict(eta=1.5, nu=1e-3, s=0.5, f0=0.1, conserve_energy=False),
])
def test_ecdsep_matches_numpy_reference(kw):
  lr = 0.02
  tx = kinetix.ecdsep(lr, key=3, **kw)
  _, state, trace = _run_jax(tx, 150)
  ref = _ECDSepRef(lr, kw['eta'], kw['nu'], kw.get('f0', 0.0),
                   kw['delta_energy'] if 'delta_energy' in kw else 0.0,
                   kw.get('s', 1.0), kw.get('weight_decay', 0.0),
                   kw.get('conserve_energy', True), draws=_Draws(3, 'normal'))
  theta = _init_params()
  for t, rec in enumerate(trace):
    for k in theta:
      np.testing.assert_allclose(rec['params'][k], theta[k], rtol=1e-9,
                                 atol=1e-11, err_msg=f'call {t}, leaf {k}')
    theta = ref.step(theta, _loss_np(theta), _grad_np(theta))
    for k in theta:
      np.testing.assert_allclose(rec['state'].momentum[k], ref.p[k],
                                 rtol=1e-8, atol=1e-11)
    assert float(rec['state'].p2) == pytest.approx(ref.p2, rel=1e-9)
  assert int(state.iteration) == 150


def test_ecdsep_energy_is_conserved_and_rotation_keeps_norm():
  lr, eta, wd = 0.02, 2.0, 0.01
  tx = kinetix.ecdsep(lr, eta, nu=1e-2, delta_energy=0.3, weight_decay=wd,
                      key=0)
  _, _, trace = _run_jax(tx, 100)
  for t, rec in enumerate(trace[1:], start=1):
    st = rec['state']
    # The rotation keeps |p|: |p_rotated|^2 equals the recorded P2.
    p2 = sum(float(jnp.sum(x * x)) for x in jax.tree.leaves(st.momentum))
    assert p2 == pytest.approx(float(st.p2), rel=1e-12)
    # Recover the kicked momentum c p = p_new + kick (g + wd theta) from the
    # parameter delta 2 lr p_new / (s + P2); it has V (s + |c p|^2) = e^E.
    f = float(rec['value']) + 0.5 * wd * sum(
        float(jnp.sum(x * x)) for x in jax.tree.leaves(rec['params']))
    kick = lr * eta / f
    cp = jax.tree.map(lambda u, g, th: u * (1 + float(st.p2)) / (2 * lr)
                      + kick * (g + wd * th), rec['updates'], rec['grads'],
                      rec['params'])
    energy = ecdsep_energy(rec['value'], cp, rec['params'], eta=eta,
                           weight_decay=wd)
    assert float(jnp.exp(energy)) == pytest.approx(float(st.exp_energy),
                                                   rel=1e-10), t


def test_ecdsep_learning_rate_schedule_takes_effect():
  sched = optax.linear_schedule(0.05, 0.0, 20)
  tx = kinetix.ecdsep(sched, nu=0.0, delta_energy=0.2)
  params, _, trace = _run_jax(tx, 30)
  # After the schedule reaches 0 the parameters stop moving.
  late = [float(jnp.abs(r['updates']['a']).max()) for r in trace[20:]]
  early = float(jnp.abs(trace[5]['updates']['a']).max())
  assert early > 1e-3 and max(late) < 1e-6 * early


# --------------------------------------------------------------------------
# Keys, convergence, dtypes


@pytest.mark.parametrize('make', [
    lambda key: kinetix.bbi(0.05, threshold0=5, threshold=5,
                            n_fixed_bounces=3, delta_energy=0.3, key=key),
    lambda key: kinetix.ecdsep(0.02, nu=1e-2, delta_energy=0.3, key=key),
])
def test_random_streams_are_reproducible_per_key(make):
  run = lambda key: _run_jax(make(key), 30)[0]  # noqa: E731
  a, b, c = run(0), run(0), run(jax.random.key(1))
  np.testing.assert_array_equal(a['a'], b['a'])
  assert not np.allclose(a['a'], c['a'])
  legacy = run(jax.random.PRNGKey(0))
  np.testing.assert_array_equal(a['a'], legacy['a'])


def _rosenbrock(p):
  x, y = p['xy'][0], p['xy'][1]
  return (1 - x) ** 2 + 100 * (y - x * x) ** 2


def _quadratic(p):
  return jnp.sum(jnp.arange(1.0, 5.0) * (p['xy'] - 1.0) ** 2)


@pytest.mark.parametrize('problem,start,tol', [
    (_quadratic, [0.0, 0.0, 0.0, 0.0], 1e-4),
    (_rosenbrock, [-1.0, 1.0], 1e-3),
])
@pytest.mark.parametrize('name', ['cool_momentum', 'bbi', 'ecdsep'])
def test_convergence(problem, start, tol, name):
  is_rosen = problem is _rosenbrock
  steps = 3000 if is_rosen else 600
  tx = {
      'cool_momentum': lambda: kinetix.cool_momentum(
          1e-3 if is_rosen else 0.05, 0.99, steps),
      'bbi': lambda: kinetix.bbi(
          5e-3 if is_rosen else 0.05, threshold0=200, threshold=300,
          n_fixed_bounces=5),
      'ecdsep': lambda: kinetix.ecdsep(
          5e-3 if is_rosen else 0.05, 1.0, nu=1e-4),
  }[name]()
  params = {'xy': jnp.asarray(start, jnp.float32)}
  state = tx.init(params)

  def body(carry, _):
    params, state = carry
    value, grads = jax.value_and_grad(problem)(params)
    updates, state = tx.update(grads, state, params, value=value)
    return (optax.apply_updates(params, updates), state), value

  with jax.enable_x64(False):
    (params, _), values = jax.jit(
        lambda c: jax.lax.scan(body, c, None, length=steps))((params, state))
    best = float(jnp.min(values))
    assert np.isfinite(np.asarray(values)).all()
  assert best < tol, (name, best)


@pytest.mark.parametrize('make', [
    lambda: kinetix.cool_momentum(0.01, 0.9, 100, weight_decay=1e-3),
    lambda: kinetix.bbi(0.01, delta_energy=0.1),
    lambda: kinetix.ecdsep(0.01, weight_decay=1e-3),
])
@pytest.mark.parametrize('value_dtype', [jnp.bfloat16, jnp.float16,
                                         jnp.float64])
def test_value_dtype_does_not_change_state_dtypes(make, value_dtype):
  with jax.enable_x64(value_dtype == jnp.float64):
    tx = make()
    params = {'w': jnp.ones((3, 2), jnp.bfloat16),
              'b': jnp.ones(2, jnp.float32)}
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.1), params)
    state = tx.init(params)
    updates, new_state = jax.jit(tx.update)(
        grads, state, params, value=jnp.asarray(0.7, value_dtype))
    assert jax.tree.map(lambda x: x.dtype, new_state) == jax.tree.map(
        lambda x: x.dtype, state)
    assert updates['w'].dtype == jnp.bfloat16
    assert updates['b'].dtype == jnp.float32
    assert all(bool(jnp.isfinite(x.astype(jnp.float32)).all())
               for x in jax.tree.leaves(updates))


@pytest.mark.parametrize('make', [
    lambda: kinetix.bbi(0.1), lambda: kinetix.ecdsep(0.1)])
def test_loss_optimizers_need_a_scalar_value(make):
  tx = make()
  params = {'w': jnp.ones(2)}
  state = tx.init(params)
  with pytest.raises(ValueError, match='needs the loss'):
    tx.update(params, state, params)
  with pytest.raises(ValueError, match='scalar'):
    tx.update(params, state, params, value=jnp.ones(2))


def test_zero_gradient_and_zero_momentum_give_no_nan():
  params = {'w': jnp.ones(3), 'z': jnp.ones(2)}
  grads = {'w': jnp.array([0.1, 0.2, 0.3]), 'z': jnp.zeros(2)}
  for tx in (kinetix.bbi(0.1, delta_energy=0.5, threshold0=1),
             kinetix.ecdsep(0.1, delta_energy=0.5),
             kinetix.ecdsep(0.1)):
    state = tx.init(params)
    for _ in range(3):  # the first real step, then a bounce for BBI
      updates, state = tx.update(grads, state, params, value=1.0)
      for x in jax.tree.leaves((updates, state.momentum)):
        assert bool(jnp.isfinite(x).all())
  # All-zero gradients with delta_energy = 0: the motion starts at rest.
  tx = kinetix.ecdsep(0.1)
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, state = tx.update(zeros, tx.init(params), params, value=1.0)
  assert all(bool((x == 0).all()) for x in jax.tree.leaves(updates))
