"""Energy-conserving descent (ECD): Born–Infeld (BBI) and separable ECDSep.

Frictionless Hamiltonian dynamics whose energy is fixed by the initial loss:
the particle speeds up where the loss is high and slows down near the
minimum, which dominates the phase-space volume. Chaos (random bounces for
BBI, small random rotations for ECDSep) makes the motion ergodic.

Both optimizers need the minibatch loss: pass it as ``value``,

>>> import jax, jax.numpy as jnp, kinetix
>>> loss_fn = lambda p: jnp.sum(p ** 2) + 0.1
>>> params = jnp.ones(3)
>>> tx = kinetix.bbi(0.1)
>>> state = tx.init(params)
>>> loss, grads = jax.value_and_grad(loss_fn)(params)
>>> updates, state = tx.update(grads, state, params, value=loss)

The returned updates are the parameter deltas (no ``scale(-lr)`` to chain).
:func:`bbi_energy` and :func:`ecdsep_energy` are the conserved quantities,
for monitoring drift (the jax-md habit).

References:
  De Luca, Silverstein, `Born-Infeld (BI) for AI: Energy-Conserving Descent
  (ECD) for Optimization <https://arxiv.org/abs/2201.11137>`_, ICML 2022.

  De Luca, Gatti, Silverstein, `Improving Energy Conserving Descent for
  Machine Learning: Theory and Practice <https://arxiv.org/abs/2306.00352>`_,
  2023.
"""

import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from kinetix import _rng
from kinetix import _sharding
from kinetix import _utils

__all__ = [
    'bbi',
    'ecdsep',
    'bbi_energy',
    'ecdsep_energy',
    'BBIState',
    'ECDSepState',
]

# A bounce threshold at or above this never fires (int32 counters saturate).
_NEVER = 2**31 - 1


class BBIState(NamedTuple):
  """State of :func:`bbi`."""
  count: jax.Array          # shape=(), int32: update calls (the index of the
                            #   learning-rate schedule).
  iteration: jax.Array      # shape=(), int32: real steps (not bounces/skips).
  counter: jax.Array        # shape=(), int32: real steps since the last new
                            #   minimum of V or the last bounce (T1 clock).
  counter0: jax.Array       # shape=(), int32: real steps since the last fixed
                            #   bounce (T0 clock); runs past T0 after N_b.
  fixed_bounces: jax.Array  # shape=(), int32: fixed bounces performed.
  bounces: jax.Array        # shape=(), int32: all bounces performed.
  momentum: Any             # pytree like params, each leaf in max(its dtype,
                            #   float32): the momentum pi.
  energy: jax.Array         # shape=(), float (>= f32, from params): the
                            #   conserved energy E = V0 + delta_energy.
  v_init: jax.Array         # shape=(), float: V0 = F - v0 at the first step.
  min_v: jax.Array          # shape=(), float: lowest V at a real step (inf
                            #   before the first).
  key: jax.Array            # shape=(), typed PRNG key, split every call.


class ECDSepState(NamedTuple):
  """State of :func:`ecdsep`."""
  count: jax.Array       # shape=(), int32: update calls (schedule index).
  iteration: jax.Array   # shape=(), int32: real steps (calls with V > eps2).
  momentum: Any          # pytree like params, each leaf in max(its dtype,
                         #   float32): the momentum p.
  p2: jax.Array          # shape=(), float (>= f32, from params): |p|^2 as
                         #   recorded by the reference (delta_energy after
                         #   the initialisation, then the post-kick |p|^2,
                         #   which the rotation preserves).
  exp_energy: jax.Array  # shape=(), float: e^E = V0 (s + delta_energy).
  key: jax.Array         # shape=(), typed PRNG key, split every call.


# --------------------------------------------------------------------------
# Conserved quantities


def _sq_norm(tree: Any, dtype: Any, *, shared: bool = True) -> jax.Array:
  """Sum of squares over all leaves of ``tree``, accumulated in ``dtype``.

  ``shared``: computed once for every leaf's kernels to read
  (:func:`kinetix._utils.at_run_time`), not as a chain of additions fused
  into each, which makes every leaf's kernels distinct (compiled apart).
  A sum that no leaf's kernel reads (the energies) needs no sharing.
  """
  leaves = jax.tree_util.tree_leaves(tree)
  total = sum((jnp.sum(jnp.square(x.astype(jnp.promote_types(x.dtype, dtype))))
               .astype(dtype) for x in leaves), jnp.zeros([], dtype))
  return _utils.at_run_time(total) if shared else total


def _scalar_dtype(value: Any) -> Any:
  return _utils.compute_dtype(jnp.result_type(value))


def bbi_energy(value: Any, momentum: Any, *, v0: float = 0.0) -> jax.Array:
  r"""The Born–Infeld Hamiltonian :math:`H = \sqrt{V^2 + V\,|\pi|^2}`.

  :math:`V = F - v_0` with :math:`F` = ``value``. :func:`bbi` rescales the
  momentum at every step so that the momentum it kicks has :math:`H = E`
  (``state.energy``); use this function to monitor the drift.

  Args:
    value: the loss :math:`F` (scalar).
    momentum: the momentum pytree :math:`\pi` (e.g. ``state.momentum``).
    v0: the expected minimum :math:`v_0` used by :func:`bbi`.

  Returns:
    A scalar :math:`H` in at least float32.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kinetix.hamiltonian import bbi_energy
    >>> float(bbi_energy(2.0, {'a': jnp.array([1.0, 1.0])}))
    2.828...
  """
  dtype = _scalar_dtype(value)
  v = jnp.asarray(value, dtype) - jnp.asarray(v0, dtype)
  return jnp.sqrt(jnp.square(v) + v * _sq_norm(momentum, dtype, shared=False))


def ecdsep_energy(value: Any, momentum: Any, params: Any = None, *,
                  eta: float = 1.0, f0: float = 0.0, s: float = 1.0,
                  weight_decay: float = 0.0) -> jax.Array:
  r"""The separable ECD Hamiltonian :math:`H = \log V + \log(s + |p|^2)`.

  :math:`V = (F + \tfrac{\lambda}{2}|\theta|^2 - F_0)^\eta` with :math:`F` =
  ``value``. :func:`ecdsep` keeps :math:`e^H = V\,(s + |p|^2)` equal to
  ``state.exp_energy`` for the momentum it kicks; use this function to
  monitor the drift.

  Args:
    value: the loss :math:`F` (scalar).
    momentum: the momentum pytree :math:`p` (e.g. ``state.momentum``).
    params: the params :math:`\theta`, needed when ``weight_decay != 0``.
    eta: :math:`\eta`, as given to :func:`ecdsep`.
    f0: :math:`F_0`, as given to :func:`ecdsep`.
    s: :math:`s`, as given to :func:`ecdsep`.
    weight_decay: :math:`\lambda`, as given to :func:`ecdsep`.

  Returns:
    A scalar :math:`H` in at least float32.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kinetix.hamiltonian import ecdsep_energy
    >>> float(jnp.exp(ecdsep_energy(2.0, {'a': jnp.array([1.0, 1.0])})))
    6.0...
  """
  dtype = _scalar_dtype(value)
  f = jnp.asarray(value, dtype)
  if weight_decay != 0:
    if params is None:
      raise ValueError('ecdsep_energy with weight_decay needs the params.')
    f = f + 0.5 * jnp.asarray(weight_decay, dtype) * _sq_norm(
        params, dtype, shared=False)
  v = jnp.power(f - jnp.asarray(f0, dtype), jnp.asarray(eta, dtype))
  return jnp.log(v) + jnp.log(jnp.asarray(s, dtype) +
                              _sq_norm(momentum, dtype, shared=False))


# --------------------------------------------------------------------------
# Shared plumbing


def _check_value(name: str, value: Any, dtype: Any) -> jax.Array:
  """``value`` as a scalar of the state's dtype (never promotes the state)."""
  if value is None:
    raise ValueError(
        f'{name} needs the loss: call tx.update(grads, state, params, '
        f'value=loss) with loss, grads = jax.value_and_grad(loss_fn)(params); '
        f'with Flax NNX, optimizer.update(model, grads, value=loss).')
  value = jnp.asarray(value)
  if value.ndim != 0:
    raise ValueError(f'{name}: value must be a scalar (the minibatch loss); '
                     f'got shape {value.shape}.')
  if not jnp.issubdtype(value.dtype, jnp.number) or jnp.issubdtype(
      value.dtype, jnp.complexfloating):
    raise TypeError(f'{name}: value must be a real scalar; got dtype '
                    f'{value.dtype}.')
  axes = _sharding.varying_axes(value)
  if axes:
    warnings.warn(
        f'{name}: the loss value differs between devices along the shard_map '
        f'axes {tuple(sorted(axes))}, so each device computes its energy '
        f'from its own loss. Pass jax.lax.pmean(loss, {tuple(sorted(axes))})'
        f' unless every device trains a model of its own.', UserWarning,
        stacklevel=4)
  return value.astype(dtype)


def _check_bool(name: str, value: Any) -> bool:
  if not isinstance(value, (bool, np.bool_)):
    raise TypeError(f'{name} must be a bool; got {value!r}')
  return bool(value)


def _check_int(name: str, value: Any, lo: int) -> Any:
  """A concrete int ``>= lo``, or a traced value (inject_hyperparams)."""
  if _utils.is_traced(value):
    return value
  v = _utils.static_int(name, value)
  if v < lo:
    raise ValueError(f'{name} must be an int >= {lo}; got {v}')
  return v


def _bounce_threshold(name: str, value: Any) -> Any:
  """An int threshold, ``None`` (never), or a traced value.

  Like the reference, a huge threshold (``1e20`` in its Zakharov config, or
  ``math.inf``) is never reached: values ``>= 2**31 - 1`` disable the bounce.
  """
  if _utils.is_traced(value):
    return value
  v = _utils.concrete_float(value)
  if isinstance(value, (bool, np.bool_)) or v is None:
    raise TypeError(f'{name} must be a number of steps; got {value!r}')
  if not v >= 1:
    raise ValueError(f'{name} must be >= 1 (steps); got {value!r}')
  if v >= _NEVER:
    return None
  if v != int(v):
    raise ValueError(f'{name} must be a whole number of steps; got {value!r}')
  return int(v)


def _check_finite(name: str, value: Any) -> None:
  _utils.check_scalar_or_schedule(name, value, allow_schedule=False)


class _Call(NamedTuple):
  """What every ECD update reads off its arguments and state.

  ``grads`` are the leaves as given, ``g`` the same in the momentum's dtype
  (at least float32), ``momentum`` the state's leaves. ``seeds`` fold each
  leaf's random stream from its path; ``key`` is this call's key (split
  carry-first) and ``new_key`` the state's next one.
  """
  value: jax.Array          # the loss, in the scalar state's dtype
  grads: list[jax.Array]
  g: list[jax.Array]
  momentum: list[jax.Array]
  seeds: list[int]
  treedef: Any
  dt: jax.Array             # the learning rate at this call
  key: jax.Array
  new_key: jax.Array


def _begin(name: str, updates: Any, momentum: Any, value: Any,
           learning_rate: Any, count: jax.Array, key: jax.Array,
           sdt: Any) -> _Call:
  """Checks ``value``, flattens updates and momentum, splits the key."""
  f = _check_value(name, value, sdt)
  flat, treedef = jax.tree_util.tree_flatten_with_path(updates)
  mom = _utils.flatten_like(
      treedef, momentum, f'{name}: updates do not have the structure of the '
      'params the state was initialised with')
  paths = [_utils.path_to_str(p) for p, _ in flat]
  _sharding.warn_if_device_local(
      name, [(p, g) for p, (_, g) in zip(paths, flat, strict=True)],
      'the energy and the norms are summed over this block only, so every '
      'device rescales its momenta by a different factor')
  grads = [g for _, g in flat]
  new_key, step_key = _rng.split(key)
  return _Call(
      value=f, grads=grads,
      g=[x.astype(m.dtype) for x, m in zip(grads, mom, strict=True)],
      momentum=mom, seeds=[_utils.path_seed(p) for p in paths],
      treedef=treedef,
      dt=jnp.asarray(_utils.resolve(learning_rate, count), sdt),
      key=step_key, new_key=new_key)


def _branch(index: Any, branches, call: _Call, *others: Any):
  """One of ``branches`` (skip, step, bounce...) on the call's leaves.

  Each branch takes ``(grads, g, momentum)`` as operands, never closes over
  them, so that every branch's outputs agree in type under an Explicit mesh
  and inside ``shard_map`` (:func:`kinetix._sharding.switch`); outputs vary
  like the loss too (an unreduced per-device loss inside ``shard_map``).
  """
  return _sharding.switch(index, branches,
                          (call.grads, call.g, call.momentum), call.value,
                          *others)


def _zeros(leaves: list[jax.Array]) -> list[jax.Array]:
  return [jnp.zeros_like(x) for x in leaves]


def _init_momentum(params: Any) -> Any:
  return jax.tree.map(
      lambda p: jnp.zeros_like(p, _utils.compute_dtype(p.dtype)), params)


def _safe_div(num: jax.Array, den: jax.Array) -> jax.Array:
  """``num / den`` with 0 where ``den == 0`` (NaN ``den`` propagates)."""
  return jnp.where(den == 0, jnp.zeros_like(num),
                   num / jnp.where(den == 0, jnp.ones_like(den), den))


def _rescale(target: jax.Array, current: jax.Array, eps1: jax.Array,
             guard_zero: bool = True) -> jax.Array:
  """The reference's energy rescale factor ``sqrt(target/current)``.

  1 when within ``eps1``, when the target is negative, or (ECDSep's branch,
  kinetix's guard for BBI) when ``current == 0``. A NaN propagates.
  """
  keep = (jnp.abs(current - target) < eps1) | (target < 0)
  if guard_zero:
    keep = keep | (current == 0)
  ratio = target / jnp.where(keep, jnp.ones_like(current), current)
  return jnp.where(keep, jnp.ones_like(ratio), _utils.safe_sqrt(ratio))


# --------------------------------------------------------------------------
# The physics of one step, one equation per function (as jax-md writes its
# integrators). Momenta, gradients and updates are lists of leaves; ``sdt``
# is the dtype of the scalar state.


def _bbi_initial_momentum(g: list[jax.Array], v_init: jax.Array,
                          delta_energy: jax.Array) -> list[jax.Array]:
  r"""BBI's start: each leaf of the momentum along its :math:`-g`.

  With :math:`|\pi_\text{leaf}|^2 = \delta E(2V_0 + \delta E)/V_0`, the
  closed form of the reference's :math:`E^2/V_0 - V_0`; an all-zero
  leaf starts at rest.
  """
  v0_safe = jnp.where(v_init > 0, v_init, jnp.ones_like(v_init))
  norm = _utils.safe_sqrt(delta_energy * (2 * v_init + delta_energy)
                          / v0_safe)
  out = []
  for x in g:
    n = _utils.safe_sqrt(jnp.sum(jnp.square(x)))
    out.append(-(x / jnp.where(n > 0, n, jnp.ones_like(n)))
               * norm.astype(x.dtype))
  return out


def _bbi_energy_rescale(pi: list[jax.Array], v: jax.Array,
                        energy: jax.Array, eps1: jax.Array,
                        sdt: Any) -> jax.Array:
  r""":math:`r = \sqrt{(E^2/V - V)/|\pi|^2}`, which restores :math:`H = E`."""
  return _rescale(v * (jnp.square(energy / v) - 1), _sq_norm(pi, sdt), eps1)


def _bbi_kick(pi: list[jax.Array], g: list[jax.Array], r: jax.Array,
              dt: jax.Array, v: jax.Array,
              energy: jax.Array) -> list[jax.Array]:
  r""":math:`\pi \leftarrow r\,\pi - \frac{\Delta t}{2}(V/E + E/V)\,g`."""
  kick = 0.5 * dt * (v / energy + energy / v)
  return [r.astype(p.dtype) * p - kick.astype(p.dtype) * x
          for p, x in zip(pi, g, strict=True)]


def _bbi_drift(pi: list[jax.Array], dt: jax.Array, v: jax.Array,
               energy: jax.Array, like: list[jax.Array]) -> list[jax.Array]:
  r"""The parameter delta :math:`\Delta t\,(V/E)\,\pi` (``like``'s dtypes)."""
  move = dt * (v / energy)
  return [(move.astype(p.dtype) * p).astype(x.dtype)
          for p, x in zip(pi, like, strict=True)]


def _bbi_bounce(pi: list[jax.Array], key: jax.Array, seeds: list[int],
                sdt: Any) -> list[jax.Array]:
  """A billiard bounce: a uniformly random direction with ``|pi|`` kept.

  Leaf ``i`` draws ``uniform(fold_in(key, seeds[i]), [-1/2, 1/2))``.
  """
  keys = _rng.fold_in_each(key, np.asarray(seeds, np.uint32))
  u = [_rng.uniform(k, p.shape, p.dtype, -0.5, 0.5,
                    out_sharding=_sharding.sharding_like(p))
       for p, k in zip(pi, keys, strict=True)]
  scale = _utils.safe_sqrt(_safe_div(_sq_norm(pi, sdt), _sq_norm(u, sdt)))
  return [x * scale.astype(x.dtype) for x in u]


def _ecdsep_initial_momentum(raw_g: list[jax.Array], de: jax.Array,
                             sdt: Any) -> list[jax.Array]:
  r"""ECDSep's start :math:`p = -g\sqrt{\delta E'/|g|^2}`.

  Normalised over the whole model, with the gradient without weight decay.
  """
  scale = _utils.safe_sqrt(_safe_div(de, _sq_norm(raw_g, sdt)))
  return [-x * scale.astype(x.dtype) for x in raw_g]


def _ecdsep_energy_rescale(p2: jax.Array, v: jax.Array,
                           exp_energy: jax.Array, s: jax.Array,
                           eps1: jax.Array) -> jax.Array:
  r""":math:`c = \sqrt{(e^E/V - s)/p^2}`: back on :math:`V(s + p^2) = e^E`."""
  return _rescale(exp_energy / v - s, p2, eps1)


def _ecdsep_kick(p: list[jax.Array], g: list[jax.Array], cf: jax.Array,
                 dt: jax.Array, eta: jax.Array,
                 base: jax.Array) -> list[jax.Array]:
  r""":math:`p \leftarrow c\,p - \Delta t\,\frac{\eta}{F - F_0}\,g`."""
  kick = dt * eta / base
  return [cf.astype(x.dtype) * x - kick.astype(x.dtype) * gx
          for x, gx in zip(p, g, strict=True)]


def _ecdsep_drift(p: list[jax.Array], p2: jax.Array, s: jax.Array,
                  dt: jax.Array, like: list[jax.Array]) -> list[jax.Array]:
  r"""The parameter delta :math:`2\Delta t\,p/(s + |p|^2)`, like ``like``."""
  den = s + p2
  move = 2 * dt / jnp.where(den == 0, jnp.ones_like(den), den)
  return [(move.astype(x.dtype) * x).astype(u.dtype)
          for x, u in zip(p, like, strict=True)]


def _ecdsep_rotate(p: list[jax.Array], p2: jax.Array, nu: jax.Array,
                   key: jax.Array, seeds: list[int],
                   sdt: Any) -> list[jax.Array]:
  r"""The "generalized bounce", a small rotation of :math:`p` keeping |p|.

  :math:`d = p/|p| + \nu z`, :math:`p \leftarrow |p|\,d/|d|`, with
  :math:`z \sim \mathcal N(0, I)` drawn from ``fold_in(key, seeds[i])`` for
  leaf ``i``. ``p = 0`` stays 0 (the reference divides 0 by 0 here).
  """
  norm = _utils.safe_sqrt(p2)
  safe_norm = jnp.where(norm > 0, norm, jnp.ones_like(norm))
  keys = _rng.fold_in_each(key, np.asarray(seeds, np.uint32))
  d = [x / safe_norm.astype(x.dtype) + nu.astype(x.dtype)
       * _rng.normal(k, x.shape, x.dtype,
                     out_sharding=_sharding.sharding_like(x))
       for x, k in zip(p, keys, strict=True)]
  back = _safe_div(norm, _utils.safe_sqrt(_sq_norm(d, sdt)))
  return [x * back.astype(x.dtype) for x in d]


# --------------------------------------------------------------------------
# BBI


def bbi(
    learning_rate: optax.ScalarOrSchedule,
    *,
    v0: float = 0.0,
    threshold0: int = 1000,
    threshold: int = 3000,
    delta_energy: float = 0.0,
    conserve_energy: bool = True,
    n_fixed_bounces: int = 1,
    eps1: float = 1e-10,
    eps2: float = 1e-40,
    key: _utils.KeyLike = 0,
) -> optax.GradientTransformationExtraArgs:
  r"""Born–Infeld energy-conserving descent (BBI) with billiard bounces.

  The parameters :math:`\theta` move as a particle with the Born–Infeld
  Hamiltonian :math:`H = \sqrt{V^2 + V\pi^2}`, :math:`V = F(\theta) - v_0`,
  at fixed energy :math:`E = V_0 + \delta E` (:math:`V_0` the first loss).
  Its speed limit :math:`|\dot\theta|^2 < V` makes it slow down near the
  minimum without overshooting it. One update, with :math:`\Delta t` =
  ``learning_rate`` and :math:`F, g` the loss and gradient at :math:`\theta`:

  .. math::

    r = \sqrt{\frac{E^2/V - V}{|\pi|^2}}, \qquad
    \pi \leftarrow r\,\pi - \frac{\Delta t}{2}\Bigl(\frac{V}{E} +
      \frac{E}{V}\Bigr) g, \qquad
    \theta \leftarrow \theta + \Delta t\,\frac{V}{E}\,\pi .

  :math:`r` restores :math:`H = E` before the kick (``conserve_energy``; it
  is 1 when within ``eps1``, when :math:`E^2/V < V` or when
  :math:`|\pi| = 0`). Initially each leaf's momentum points along its
  :math:`-g` with :math:`|\pi_\text{leaf}|^2 = E^2/V_0 - V_0 = \delta E(2V_0
  + \delta E)/V_0`, so ``delta_energy=0`` starts at rest.

  **Bounces** replace :math:`\pi` by a uniformly random direction of the
  same norm and leave :math:`\theta` unchanged for that call (the call
  consumes a minibatch, as in the reference): *fixed* bounces after
  :math:`T_0, 2T_0, \dots, N_b T_0` real steps, and *progress-dependent*
  bounces whenever :math:`T_1` consecutive real steps brought no new minimum
  of :math:`V` (``state.counter`` reaches :math:`T_1`). A call with
  :math:`V \le` ``eps2`` does nothing at all (zero update, no counter moves).

  Exactly the reference algorithm (gbdl/BBI ``inflation.py``, counters
  included; ``n_fixed_bounces=0`` still gives one fixed bounce at
  :math:`T_0`, and before the first real step every call re-initialises
  :math:`E, V_0`), with these deliberate departures:

  * Bounces are reproducible: the directions are drawn from the PRNG key in
    the state (the reference seeds a private generator non-deterministically).
    Call ``k`` splits the key carry-first, ``key, sub = split(key)``, and leaf
    ``path`` draws ``uniform(fold_in(sub, path_seed(path)), [-1/2, 1/2))``.
  * ``learning_rate`` may be a schedule, evaluated at ``state.count`` (update
    calls, bounces and skips included); the reference used a constant.
  * The reference's NaN traps are guarded: the initial momentum norm uses
    the closed form :math:`\sqrt{\delta E(2V_0+\delta E)/V_0}` (its
    :math:`\sqrt{E^2/V_0 - V_0}` is :math:`\sqrt{-1\,\text{ulp}}` in float32),
    an all-zero gradient leaf starts with zero momentum (not 0/0), and
    :math:`|\pi| = 0` skips the rescale instead of giving
    :math:`0\cdot\infty`.
  * NaN/Inf gradients and a NaN ``value`` propagate into the updates (the
    reference's ``V > eps2`` test silently skips a NaN loss); wrap with
    ``optax.apply_if_finite`` to skip such steps.
  * Thresholds ``>= 2**31 - 1`` (e.g. ``1e20``, ``math.inf``) disable that
    kind of bounce, as a huge threshold does in the reference.
  * One parameter group: the energy and the counters cover all leaves. The
    initial momentum stays per leaf as in the reference (so the first
    rescale divides it by :math:`\sqrt{\#\text{leaves}}`).

  Args:
    learning_rate: the time step :math:`\Delta t \ge 0`, a float or an Optax
      schedule (CIFAR-10 ResNet-18 in the paper: ``0.0622``).
    v0: :math:`v_0` (the paper's :math:`\Delta V`), the expected minimum of
      the loss; :math:`V = F - v_0` must stay positive.
    threshold0: :math:`T_0 \ge 1`, real steps between fixed bounces.
    threshold: :math:`T_1 \ge 1`, the patience of progress-dependent bounces
      (reference class default 3000, its CLI default 2000).
    delta_energy: :math:`\delta E \ge 0`, extra initial energy.
    conserve_energy: rescale the momentum every step so that :math:`H = E`.
    n_fixed_bounces: :math:`N_b \ge 0`, the number of fixed bounces.
    eps1: tolerance below which the rescale is skipped.
    eps2: a call with :math:`V \le` ``eps2`` is skipped.
    key: PRNG key of the bounces: an int, a ``jax.random.key`` or a legacy
      ``jax.random.PRNGKey``.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with state :class:`BBIState`.
    ``update(updates, state, params=None, *, value)`` needs ``value``, the
    loss of the minibatch whose gradient is ``updates``; it returns the
    parameter delta :math:`\Delta t\,(V/E)\,\pi` (zeros on a bounce or skip).

  Examples:
    >>> import jax, jax.numpy as jnp, optax, kinetix
    >>> def loss_fn(p):
    ...   return jnp.sum((p - 1.0) ** 2)
    >>> params = jnp.zeros(2)
    >>> tx = kinetix.bbi(0.1, threshold0=20, threshold=50,
    ...                  n_fixed_bounces=5, key=0)
    >>> @jax.jit
    ... def train_step(params, state):
    ...   loss, grads = jax.value_and_grad(loss_fn)(params)
    ...   updates, state = tx.update(grads, state, params, value=loss)
    ...   return optax.apply_updates(params, updates), state, loss
    >>> state = tx.init(params)
    >>> best = float('inf')
    >>> for _ in range(200):
    ...   params, state, loss = train_step(params, state)
    ...   best = min(best, float(loss))
    >>> best < 1e-3, int(state.fixed_bounces)
    (True, 5)

    With Flax NNX, ``nnx.Optimizer`` passes extra keyword arguments to the
    transformation: ``optimizer.update(model, grads, value=loss)``.

  References:
    De Luca, Silverstein, `Born-Infeld (BI) for AI: Energy-Conserving Descent
    (ECD) for Optimization <https://arxiv.org/abs/2201.11137>`_, ICML 2022.
    Reference code: https://github.com/gbdl/BBI (``inflation.py``).
  """
  name = 'bbi'
  _utils.check_scalar_or_schedule('learning_rate', learning_rate, lo=0.0)
  _check_finite('v0', v0)
  _utils.check_scalar_or_schedule('delta_energy', delta_energy, lo=0.0,
                                  allow_schedule=False)
  _utils.check_scalar_or_schedule('eps1', eps1, lo=0.0, allow_schedule=False)
  _utils.check_scalar_or_schedule('eps2', eps2, lo=0.0, allow_schedule=False)
  t0 = _bounce_threshold('threshold0', threshold0)
  t1 = _bounce_threshold('threshold', threshold)
  n_fixed = _check_int('n_fixed_bounces', n_fixed_bounces, 0)
  conserve = _check_bool('conserve_energy', conserve_energy)
  _utils.validate_key(key)

  def init_fn(params):
    _utils.check_floating(name, params)
    sdt = _utils.state_dtype(params)
    zero = jnp.zeros([], jnp.int32)
    return BBIState(
        count=zero, iteration=zero, counter=zero, counter0=zero,
        fixed_bounces=zero, bounces=zero,
        momentum=_init_momentum(params),
        energy=jnp.zeros([], sdt), v_init=jnp.zeros([], sdt),
        min_v=jnp.full([], jnp.inf, sdt),
        key=_utils.canonicalize_key(key))

  def update_fn(updates, state, params=None, *, value=None, **extra_args):
    del params, extra_args
    sdt = state.energy.dtype
    call = _begin(name, updates, state.momentum, value, learning_rate,
                  state.count, state.key, sdt)
    c = lambda x: jnp.asarray(x, sdt)  # noqa: E731
    v = call.value - c(v0)

    # Until the first real step, every call (re-)initialises as the reference.
    first = state.iteration == 0
    zero = jnp.zeros([], jnp.int32)
    energy = jnp.where(first, v + c(delta_energy), state.energy)
    v_init = jnp.where(first, v, state.v_init)
    counter = jnp.where(first, zero, state.counter)
    counter0 = jnp.where(first, zero, state.counter0)
    fixed = jnp.where(first, zero, state.fixed_bounces)
    min_v = jnp.where(first, c(jnp.inf), state.min_v)

    fixed_due = jnp.zeros([], bool) if t0 is None else counter0 == t0
    progress_due = jnp.zeros([], bool) if t1 is None else counter == t1
    active = jnp.logical_not(v <= c(eps2))  # a NaN loss is not skipped
    branch = jnp.where(active, jnp.where(fixed_due | progress_due, 2, 1), 0)

    def skip(ops):
      grads, _, mom = ops
      return (_zeros(grads), mom, state.iteration, counter, counter0, fixed,
              state.bounces, min_v)

    def step(ops):
      grads, g, mom = ops
      pi = _branch(first, (
          lambda o: o[2],
          lambda o: _bbi_initial_momentum(o[1], v_init, c(delta_energy))),
                   call._replace(grads=grads, g=g, momentum=mom), state)
      r = (_bbi_energy_rescale(pi, v, energy, c(eps1), sdt) if conserve
           else c(1.0))
      new_pi = _bbi_kick(pi, g, r, call.dt, v, energy)
      new_updates = _bbi_drift(new_pi, call.dt, v, energy, grads)
      improved = v < min_v
      return (new_updates, new_pi, optax.safe_increment(state.iteration),
              jnp.where(improved, zero, optax.safe_increment(counter)),
              optax.safe_increment(counter0), fixed, state.bounces,
              jnp.where(improved, v, min_v))

    def bounce(ops):
      grads, _, mom = ops
      new_pi = _bbi_bounce(mom, call.key, call.seeds, sdt)
      new_fixed = fixed + fixed_due.astype(jnp.int32)
      new_counter0 = jnp.where(
          fixed_due,
          jnp.where(new_fixed < n_fixed, zero,
                    optax.safe_increment(counter0)),
          counter0)
      return (_zeros(grads), new_pi, state.iteration, zero, new_counter0,
              new_fixed, optax.safe_increment(state.bounces), min_v)

    (new_updates, new_pi, iteration, counter, counter0, fixed, bounces,
     min_v) = _branch(branch, (skip, step, bounce), call, state)
    unflat = lambda xs: jax.tree_util.tree_unflatten(call.treedef, xs)  # noqa: E731
    return unflat(new_updates), BBIState(
        count=_utils.increment(state.count), iteration=iteration,
        counter=counter, counter0=counter0, fixed_bounces=fixed,
        bounces=bounces, momentum=unflat(new_pi), energy=energy,
        v_init=v_init, min_v=min_v, key=call.new_key)

  return optax.GradientTransformationExtraArgs(
      *_sharding.with_varying_state(init_fn, update_fn))


# --------------------------------------------------------------------------
# ECDSep


def ecdsep(
    learning_rate: optax.ScalarOrSchedule,
    eta: float = 1.0,
    *,
    nu: float = 1e-5,
    f0: float = 0.0,
    delta_energy: float = 0.0,
    s: float = 1.0,
    weight_decay: float = 0.0,
    conserve_energy: bool = True,
    eps1: float = 1e-10,
    eps2: float = 1e-40,
    key: _utils.KeyLike = 0,
) -> optax.GradientTransformationExtraArgs:
  r"""Separable energy-conserving descent (ECDSep) with random rotations.

  The successor of :func:`bbi`: a separable Hamiltonian
  :math:`H = \log V(\theta) + \log(s + p^2)` with
  :math:`V = (F - F_0)^\eta`, :math:`F` the loss plus
  :math:`\tfrac{\lambda}{2}|\theta|^2` when ``weight_decay`` :math:`\lambda
  \ne 0`. The energy constraint is :math:`V\,(s + p^2) = e^E`; larger
  :math:`\eta` concentrates the invariant measure at the bottom of the basin.
  One update, with :math:`\Delta t` = ``learning_rate``:

  .. math::

    c = \sqrt{\frac{e^E/V - s}{p^2}}, \qquad
    p \leftarrow c\,p - \Delta t\,\frac{\eta}{F - F_0}\,(g + \lambda\theta),
    \qquad \theta \leftarrow \theta + \Delta t\,\frac{2p}{s + |p|^2},

  then a small random rotation of :math:`p` that keeps :math:`|p|`:
  :math:`d = p/|p| + \nu z`, :math:`z \sim \mathcal N(0, I)`,
  :math:`p \leftarrow |p|\, d/|d|` (the "generalized bounces"; the angle is
  about :math:`\nu\sqrt{\dim\theta}`). :math:`c` (``conserve_energy``) is 1
  when within ``eps1``, when :math:`e^E/V < s` or when the recorded
  :math:`p^2` is 0. Initially :math:`p = -g\sqrt{\delta E'/|g|^2}`
  normalised over the **whole** model (unlike BBI's per-leaf start), with
  :math:`e^E = V_0(s + \delta E')`, :math:`\delta E' = \delta E` if
  :math:`s = 1` else 1. A call with :math:`V \le` ``eps2`` (e.g.
  :math:`F < F_0`) does nothing.

  Exactly the reference algorithm (gbdl/ECDSep ``inflation.py``), with these
  deliberate departures:

  * ``learning_rate`` schedules take effect, evaluated at ``state.count``
    (update calls). The reference reads ``lr`` from an attribute fixed at
    construction, so PyTorch schedulers were inert: all its published
    results used a constant :math:`\Delta t`.
  * The rotation is reproducible: call ``k`` splits the key carry-first,
    ``key, sub = split(key)``, and leaf ``path`` draws
    ``normal(fold_in(sub, path_seed(path)))`` (the reference seeds a private
    generator non-deterministically). With ``nu=0`` no noise is drawn and
    the rotation is the identity (the reference's is, up to rounding).
  * NaN traps are guarded: an all-zero initial gradient gives :math:`p = 0`
    (not 0/0) and :math:`|p| = 0` skips the rotation's normalisation.
    NaN/Inf gradients and a NaN ``value`` propagate into the updates (the
    reference silently skips a NaN loss); a loss below :math:`F_0` still
    skips the call, as in the reference.
  * :math:`e^E` is computed as :math:`V_0 (s + \delta E')` rather than
    :math:`\exp(\log V_0 + \log(s + \delta E'))` (equal up to rounding).
  * ``delta_energy != 0`` with ``s != 1`` raises a ``ValueError`` (the
    reference silently replaces it by 1).

  Args:
    learning_rate: the time step :math:`\Delta t \ge 0`, a float or an Optax
      schedule (CIFAR-100 WRN-28-10 in the paper: ``0.4``).
    eta: :math:`\eta > 0` (the README recommends :math:`\eta \ge 1`, tested
      up to 5; non-integer :math:`\eta` with :math:`F < F_0` skips the call).
    nu: :math:`\nu \ge 0`, the size of the random rotation (chaos).
    f0: :math:`F_0`, the expected minimum of the loss.
    delta_energy: :math:`\delta E \ge 0`, the initial :math:`|p|^2`
      (only with ``s == 1``).
    s: :math:`s \ge 0`, the regularisation switch of the kinetic term.
    weight_decay: :math:`\lambda \ge 0`, an L2 term inside :math:`F`
      (``update`` then needs ``params``).
    conserve_energy: rescale the momentum every step so that
      :math:`V(s + p^2) = e^E`.
    eps1: tolerance below which the rescale is skipped.
    eps2: a call with :math:`V \le` ``eps2`` is skipped.
    key: PRNG key of the rotations: an int, a ``jax.random.key`` or a legacy
      ``jax.random.PRNGKey``.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with state
    :class:`ECDSepState`. ``update(updates, state, params=None, *, value)``
    needs ``value``, the loss of the minibatch whose gradient is
    ``updates``; it returns the parameter delta :math:`2\Delta t\,p/(s +
    |p|^2)` (zeros on a skipped call).

  Examples:
    >>> import jax, jax.numpy as jnp, optax, kinetix
    >>> def loss_fn(p):
    ...   return jnp.sum((p - 1.0) ** 2)
    >>> params = jnp.zeros(2)
    >>> tx = kinetix.ecdsep(0.05, eta=2.0, nu=1e-4, key=0)
    >>> @jax.jit
    ... def train_step(params, state):
    ...   loss, grads = jax.value_and_grad(loss_fn)(params)
    ...   updates, state = tx.update(grads, state, params, value=loss)
    ...   return optax.apply_updates(params, updates), state
    >>> state = tx.init(params)
    >>> for _ in range(300):
    ...   params, state = train_step(params, state)
    >>> bool(loss_fn(params) < 1e-2)
    True

    With Flax NNX, ``nnx.Optimizer`` passes extra keyword arguments to the
    transformation: ``optimizer.update(model, grads, value=loss)``.

  References:
    De Luca, Gatti, Silverstein, `Improving Energy Conserving Descent for
    Machine Learning: Theory and Practice
    <https://arxiv.org/abs/2306.00352>`_, 2023. Reference code:
    https://github.com/gbdl/ECDSep (``inflation.py``).
  """
  name = 'ecdsep'
  _utils.check_scalar_or_schedule('learning_rate', learning_rate, lo=0.0)
  _utils.check_scalar_or_schedule('eta', eta, allow_schedule=False)
  eta_value = _utils.concrete_float(eta)
  if eta_value is not None and not eta_value > 0:
    raise ValueError(f'eta must be > 0 (the paper uses eta >= 1); got {eta}')
  _utils.check_scalar_or_schedule('nu', nu, lo=0.0, allow_schedule=False)
  _check_finite('f0', f0)
  _utils.check_scalar_or_schedule('delta_energy', delta_energy, lo=0.0,
                                  allow_schedule=False)
  _utils.check_scalar_or_schedule('s', s, lo=0.0, allow_schedule=False)
  if (_utils.concrete_float(s) not in (None, 1.0)
      and _utils.concrete_float(delta_energy) not in (None, 0.0)):
    raise ValueError(
        f'delta_energy={delta_energy} only applies with s=1; with s={s} the '
        f'initial |p|^2 is 1 (as in the reference). Leave delta_energy=0.')
  _utils.check_scalar_or_schedule('weight_decay', weight_decay, lo=0.0,
                                  allow_schedule=False)
  _utils.check_scalar_or_schedule('eps1', eps1, lo=0.0, allow_schedule=False)
  _utils.check_scalar_or_schedule('eps2', eps2, lo=0.0, allow_schedule=False)
  conserve = _check_bool('conserve_energy', conserve_energy)
  _utils.validate_key(key)
  no_decay = _utils.concrete_float(weight_decay) == 0.0
  no_noise = _utils.concrete_float(nu) == 0.0

  def init_fn(params):
    _utils.check_floating(name, params)
    sdt = _utils.state_dtype(params)
    zero = jnp.zeros([], jnp.int32)
    return ECDSepState(
        count=zero, iteration=zero, momentum=_init_momentum(params),
        p2=jnp.zeros([], sdt), exp_energy=jnp.zeros([], sdt),
        key=_utils.canonicalize_key(key))

  def update_fn(updates, state, params=None, *, value=None, **extra_args):
    del extra_args
    sdt = state.p2.dtype
    call = _begin(name, updates, state.momentum, value, learning_rate,
                  state.count, state.key, sdt)
    c = lambda x: jnp.asarray(x, sdt)  # noqa: E731
    f, g, raw_g = call.value, call.g, call.g
    if not no_decay:
      if params is None:
        raise ValueError(f'{name} with weight_decay needs the params: call '
                         f'tx.update(grads, state, params, value=loss).')
      theta = [x.astype(m.dtype) for x, m in
               zip(call.treedef.flatten_up_to(params), call.momentum,
                   strict=True)]
      wd = c(weight_decay)
      f = f + 0.5 * wd * _sq_norm(theta, sdt)
      g = [x + wd.astype(x.dtype) * t for x, t in zip(g, theta, strict=True)]
    base = f - c(f0)
    v = jnp.power(base, c(eta))
    # Skip V <= eps2 (also F < F0 with non-integer eta: NaN from the power),
    # but let a NaN loss through.
    active = (v > c(eps2)) | jnp.isnan(base)
    s_ = c(s)
    de = jnp.where(s_ == 1, c(delta_energy), c(1.0))

    def keep(ops):
      return ops[2], state.p2, state.exp_energy

    def initialise(ops):
      # The gradient without weight decay, normalised over the whole model.
      return _ecdsep_initial_momentum(ops[1], de, sdt), de, v * (s_ + de)

    p, p2, exp_energy = _branch(state.iteration == 0, (keep, initialise),
                                call._replace(g=raw_g), state, params, f)

    def skip(ops):
      return _zeros(ops[0]), ops[2], p2, state.iteration

    def step(ops):
      grads, g, p = ops
      cf = (_ecdsep_energy_rescale(p2, v, exp_energy, s_, c(eps1))
            if conserve else c(1.0))
      new_p = _ecdsep_kick(p, g, cf, call.dt, c(eta), base)
      # Not shared: XLA would then store the kicked momentum (a model-size
      # buffer) instead of recomputing it in each kernel that reads it.
      big_p2 = _sq_norm(new_p, sdt, shared=False)
      new_updates = _ecdsep_drift(new_p, big_p2, s_, call.dt, grads)
      if not no_noise:
        new_p = _ecdsep_rotate(new_p, big_p2, c(nu), call.key, call.seeds,
                               sdt)
      return new_updates, new_p, big_p2, optax.safe_increment(state.iteration)

    new_updates, new_p, p2, iteration = _branch(
        active, (skip, step), call._replace(g=g, momentum=p), state, params,
        f)
    unflat = lambda xs: jax.tree_util.tree_unflatten(call.treedef, xs)  # noqa: E731
    return unflat(new_updates), ECDSepState(
        count=_utils.increment(state.count), iteration=iteration,
        momentum=unflat(new_p), p2=p2, exp_energy=exp_energy,
        key=call.new_key)

  return optax.GradientTransformationExtraArgs(
      *_sharding.with_varying_state(init_fn, update_fn))
