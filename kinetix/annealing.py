r"""CoolMomentum: Langevin dynamics with simulated annealing of the momentum.

The discretised Langevin equation :math:`m\ddot x = -\nabla U - \gamma m
\dot x` is heavy-ball momentum with :math:`\rho = (1 - \gamma\Delta t/2) /
(1 + \gamma\Delta t/2)`; cooling the system (raising the friction
:math:`\gamma`) lowers :math:`\rho` from :math:`\rho_0 \approx 1` to 0.

>>> import kinetix
>>> tx = kinetix.cool_momentum(0.01, rho0=0.99, total_steps=10_000)

References:
  Borysenko, Byshkin, `CoolMomentum: a method for stochastic optimization by
  Langevin dynamics with simulated annealing
  <https://doi.org/10.1038/s41598-021-90144-3>`_, Sci. Rep. 11, 10705, 2021.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from kinetix import _sharding
from kinetix import _utils

__all__ = [
    'cool_momentum',
    'cool_momentum_rho',
    'CoolMomentumState',
    'SCHEDULES',
]

#: The values of :func:`cool_momentum`'s ``schedule``.
SCHEDULES = ('paper', 'exact', 'linear')


class CoolMomentumState(NamedTuple):
  """State of :func:`cool_momentum`."""
  count: jax.Array     # shape=(), dtype=int32: updates taken.
  rho: jax.Array       # shape=(), float (>= float32, from params): the
                       #   momentum coefficient rho_t of the latest update
                       #   (rho0 before the first one).
  velocity: Any        # pytree like params, each leaf in max(its dtype,
                       #   float32): v_t, the (positive) step of the latest
                       #   update; params move by -v_t.


def cool_momentum_rho(step: Any, rho0: Any, total_steps: Any,
                      schedule: str = 'paper', dtype: Any = None) -> jax.Array:
  r"""The cooling schedule :math:`\rho_t` of :func:`cool_momentum`.

  With :math:`S` = ``total_steps`` and :math:`t` = ``step`` (from 0):

  .. math::

    \text{paper:}\quad & \rho_t = \max\bigl(0,\ 1 - (1-\rho_0)^{1 - t/S}\bigr)
      \quad (\text{Eq. 20; TF code } 1 - (1-\rho_0)/\alpha^t,\
      \alpha = (1-\rho_0)^{1/S}) \\
    \text{exact:}\quad & k_t = k_0^{1 - t/S},\ k_0 = \tfrac{1-\rho_0}{1+\rho_0},
      \quad \rho_t = \max\bigl(0, \tfrac{1 - k_t}{1 + k_t}\bigr)
      \quad (\text{2024 } \texttt{Coolmom}) \\
    \text{linear:}\quad & \rho_t = \max\Bigl(0,\ \frac{\rho_0 (1 - t/S)}
      {|1 - \rho_0 t/S|}\Bigr) \quad (\texttt{Coollin}, \text{ = Demon})

  All three start at :math:`\rho_0` and reach 0 at :math:`t = S`; for
  :math:`t \ge S` the momentum is 0 (plain SGD with step ``lr/2``).

  Args:
    step: the step :math:`t` (int or array; traced is fine).
    rho0: initial momentum :math:`\rho_0 \in [0, 1)`.
    total_steps: number of annealing steps :math:`S > 0`.
    schedule: ``"paper"``, ``"exact"`` or ``"linear"``.
    dtype: float dtype of the result (default: float32, or float64 under
      x64 when ``step``/``rho0`` are float64).

  Returns:
    A scalar array :math:`\rho_t`.

  Examples:
    >>> from kinetix.annealing import cool_momentum_rho
    >>> [round(float(cool_momentum_rho(t, 0.99, 100)), 4) for t in (0, 50, 100)]
    [0.99, 0.9, 0.0]
  """
  if schedule not in SCHEDULES:
    raise ValueError(f'schedule must be one of {SCHEDULES}; got {schedule!r}')
  if dtype is None:
    dtype = jnp.result_type(float)
  t = jnp.asarray(step, dtype)
  rho0 = jnp.asarray(rho0, dtype)
  frac = t / jnp.asarray(total_steps, dtype)
  if schedule == 'paper':
    rho = 1 - (1 - rho0) ** (1 - frac)
  elif schedule == 'exact':
    k = ((1 - rho0) / (1 + rho0)) ** (1 - frac)
    rho = (1 - k) / (1 + k)
  else:
    # For t >= S the numerator is <= 0; the denominator vanishes at
    # t = S/rho0 > S, so mask before the clamp (max(0, nan) is nan).
    denom = jnp.abs(1 - rho0 * frac)
    rho = rho0 * (1 - frac) / jnp.where(denom > 0, denom, 1)
  return jnp.where(frac < 1, jnp.maximum(rho, 0), jnp.zeros_like(rho))


def _check_total_steps(total_steps: Any) -> None:
  if total_steps is None:
    raise ValueError(
        'total_steps is required: the number of annealing steps S over which '
        'rho cools from rho0 to 0, e.g. epochs * steps_per_epoch of the run.')
  if callable(total_steps):
    raise TypeError(f'total_steps must be a positive number; got '
                    f'{total_steps!r}')
  v = _utils.concrete_float(total_steps)
  if v is None and not _utils.is_traced(total_steps):
    raise TypeError(f'total_steps must be a positive number; got '
                    f'{total_steps!r}')
  if v is not None and not v > 0:
    raise ValueError(f'total_steps must be > 0; got {total_steps!r}')


def cool_momentum(
    learning_rate: optax.ScalarOrSchedule = 0.01,
    rho0: float = 0.99,
    total_steps: int | None = None,
    *,
    schedule: str = 'paper',
    weight_decay: optax.ScalarOrSchedule = 0.0,
) -> optax.GradientTransformationExtraArgs:
  r"""CoolMomentum: heavy-ball momentum whose coefficient is annealed to 0.

  Discretised Langevin dynamics with simulated annealing. With
  :math:`\eta` = ``learning_rate`` (the squared time step :math:`\Delta t^2/m`
  of the paper), :math:`\lambda` = ``weight_decay`` and :math:`\rho_t` from
  :func:`cool_momentum_rho`,

  .. math::

    v_t = \rho_t\, v_{t-1} + \eta\, \frac{1 + \rho_t}{2}\,
      (g_t + \lambda \theta_t), \qquad v_{-1} = 0, \qquad
    \theta_{t+1} = \theta_t - v_t .

  :math:`t` is the number of previous updates, so the first update uses
  :math:`\rho_0` and starts from a zero buffer (as the TensorFlow and PyTorch
  reference code; some third-party ports start the buffer at :math:`g_0` and
  make an unscaled ascent step instead). After ``total_steps`` updates
  :math:`\rho = 0`: plain SGD with step :math:`\eta/2`. There is no separate
  learning-rate decay in the method: cooling carries the annealing, and
  :math:`(1+\rho_t)/2` halves the step by the end. ``learning_rate`` may still
  be a schedule; it multiplies only the new gradient, as in the reference.

  The returned update is the parameter delta :math:`-v_t` (apply it with
  ``optax.apply_updates``; do not chain a further ``scale(-lr)``).

  Args:
    learning_rate: :math:`\eta \ge 0`, a float or an Optax schedule of the
      step count (reference: 0.01 for ResNets, 0.6 for EfficientNet-B0).
    rho0: initial momentum :math:`\rho_0 \in [0, 1)` (reference: 0.99).
    total_steps: annealing steps :math:`S > 0`, required: match it to the run
      length (epochs × steps per epoch). The reference code's cooling rate
      ``alpha`` is :math:`(1-\rho_0)^{1/S}`.
    schedule: ``"paper"`` (Eq. 20, the TF/PyTorch code), ``"exact"`` (the
      2024 ``Coolmom``: exponential in :math:`\gamma\Delta t/2`) or
      ``"linear"`` (the 2024 ``Coollin``, identical to Demon's decay; ends
      better but converges slower per the authors' README).
    weight_decay: coupled L2 coefficient :math:`\lambda \ge 0` added to the
      gradient, as ``weight_decay`` in the PyTorch code (float or schedule);
      ``update`` then needs ``params``.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with state
    :class:`CoolMomentumState`; ``state.rho`` is the :math:`\rho_t` of the
    latest update, for logging.

  Examples:
    >>> import jax, jax.numpy as jnp, optax, kinetix
    >>> def loss(p):
    ...   return jnp.sum((p - 3.0) ** 2)
    >>> params = jnp.zeros(2)
    >>> tx = kinetix.cool_momentum(0.1, rho0=0.9, total_steps=50)
    >>> state = tx.init(params)
    >>> for _ in range(60):
    ...   grads = jax.grad(loss)(params)
    ...   updates, state = tx.update(grads, state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> print(bool(loss(params) < 1e-6), float(state.rho))
    True 0.0

  References:
    Borysenko, Byshkin, `CoolMomentum: a method for stochastic optimization by
    Langevin dynamics with simulated annealing
    <https://doi.org/10.1038/s41598-021-90144-3>`_, Sci. Rep. 11, 10705,
    2021. Reference code: https://github.com/borbysh/coolmomentum.
  """
  _utils.check_scalar_or_schedule('learning_rate', learning_rate, lo=0.0)
  _utils.check_scalar_or_schedule('rho0', rho0, lo=0.0, hi=1.0,
                                  allow_schedule=False)
  rho0_value = _utils.concrete_float(rho0)
  if rho0_value is not None and rho0_value >= 1.0:
    raise ValueError(f'rho0 must lie in [0, 1); got {rho0_value}')
  _check_total_steps(total_steps)
  if schedule not in SCHEDULES:
    raise ValueError(f'schedule must be one of {SCHEDULES}; got {schedule!r}')
  _utils.check_scalar_or_schedule('weight_decay', weight_decay, lo=0.0)
  no_decay = _utils.concrete_float(weight_decay) == 0.0

  def init_fn(params):
    _utils.check_floating('cool_momentum', params)
    sdt = _utils.state_dtype(params)
    return CoolMomentumState(
        count=jnp.zeros([], jnp.int32),
        rho=jnp.asarray(rho0, sdt),
        velocity=jax.tree.map(
            lambda p: jnp.zeros_like(p, _utils.compute_dtype(p.dtype)),
            params))

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    if not no_decay and params is None:
      raise ValueError('cool_momentum with weight_decay needs the params: '
                       'call tx.update(grads, state, params).')
    sdt = state.rho.dtype
    rho = cool_momentum_rho(state.count, rho0, total_steps, schedule, sdt)
    lr = jnp.asarray(_utils.resolve(learning_rate, state.count), sdt)
    coef = lr * (1 + rho) / 2
    wd = None if no_decay else jnp.asarray(
        _utils.resolve(weight_decay, state.count), sdt)

    def leaf(g, v, p):
      cdt = v.dtype
      g = g.astype(cdt)
      if wd is not None:
        g = g + wd.astype(cdt) * p.astype(cdt)
      return rho.astype(cdt) * v + coef.astype(cdt) * g

    ps = updates if no_decay else params
    velocity = jax.tree.map(leaf, updates, state.velocity, ps)
    new_updates = jax.tree.map(lambda v, g: (-v).astype(g.dtype), velocity,
                               updates)
    return new_updates, CoolMomentumState(
        count=_utils.increment(state.count), rho=rho, velocity=velocity)

  return optax.GradientTransformationExtraArgs(
      *_sharding.with_varying_state(init_fn, update_fn))
