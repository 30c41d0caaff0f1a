"""KO with a base optimizer in one transformation: ``ko_sgd``, ``ko_adamw``."""

from collections.abc import Mapping
from typing import Any

import jax
import optax

from kinetix import _utils
from kinetix import kinetic

__all__ = [
    'ko_sgd',
    'ko_adamw',
    'COLLISIONS',
]

#: The values of ``collision`` in :func:`ko_sgd` and :func:`ko_adamw`.
COLLISIONS = ('soft', 'hard', 'none')


def _promote(x: Any) -> Any:
  dtype = _utils.compute_dtype(x.dtype)
  if isinstance(x, jax.ShapeDtypeStruct):
    return jax.ShapeDtypeStruct(x.shape, dtype, sharding=x.sharding)
  return x.astype(dtype)


def _in_compute_dtype(
    inner: optax.GradientTransformation) -> optax.GradientTransformation:
  """Runs ``inner`` in at least float32 and casts its updates back.

  Half-precision params otherwise give the base optimizer half-precision
  moments: Adam's ``eps = 1e-8`` and ``g**2`` underflow to 0 in float16 and
  its update becomes ``0/0``. For float32/float64 leaves this is the
  identity.
  """
  def init_fn(params):
    return inner.init(jax.tree.map(_promote, params))

  def update_fn(updates, state, params=None):
    promoted = jax.tree.map(_promote, updates)
    new, state = inner.update(
        promoted, state, None if params is None else jax.tree.map(
            _promote, params))
    return jax.tree.map(lambda n, u: n.astype(u.dtype), new, updates), state

  return optax.GradientTransformation(init_fn, update_fn)


def _checked(name: str, tx: optax.GradientTransformationExtraArgs
             ) -> optax.GradientTransformationExtraArgs:
  """``tx`` whose ``init`` first names any leaf of params that is no array."""
  def init_fn(params):
    _utils.check_array_leaves(name, params)
    return tx.init(params)

  return optax.GradientTransformationExtraArgs(init_fn, tx.update)


def _collision(collision: str, coll_coef, mask, key,
               collision_options: Mapping[str, Any] | None):
  options = dict(collision_options or {})
  if collision not in COLLISIONS:
    raise ValueError(f'collision must be one of {COLLISIONS}; got '
                     f'{collision!r}')
  if collision == 'none':
    if options:
      raise ValueError(f'collision_options={options} were given but '
                       f"collision='none' uses none of them.")
    return optax.identity()
  factory = (kinetic.soft_collision if collision == 'soft' else
             kinetic.hard_collision)
  try:
    return factory(coll_coef, mask=mask, key=key, **options)
  except TypeError as e:
    if 'unexpected keyword' in str(e):
      raise TypeError(f'collision_options: {e}') from e
    raise


def ko_sgd(
    learning_rate: optax.ScalarOrSchedule,
    momentum: float = 0.9,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    *,
    collision: str = 'soft',
    coll_coef: optax.ScalarOrSchedule = 0.1,
    mask: Any = None,
    key: _utils.KeyLike = 0,
    collision_options: Mapping[str, Any] | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""KO with SGD: collision → L2 weight decay → SGD with momentum.

  The base optimizer runs in at least float32: the moments of bf16/f16
  params are kept in float32 (in float16 Adam's ``g**2`` and ``eps``
  underflow), and the updates come back in each param's dtype.

  The order is PyTorch's ``KiOptimizer`` around ``torch.optim.SGD``: the
  collision sees the raw loss gradient, then ``weight_decay·θ`` is added
  (coupled L2, as in ``SGD(weight_decay=...)``), then heavy-ball momentum.

  Args:
    learning_rate: a float or an Optax schedule.
    momentum: heavy-ball momentum in ``[0, 1)``; ``0`` for plain SGD.
    nesterov: Nesterov momentum.
    weight_decay: coupled L2 coefficient (``>= 0``), on every parameter.
    collision: ``"soft"``, ``"hard"`` or ``"none"`` (the base optimizer
      alone, for baselines).
    coll_coef: the collision coefficient, a float in ``[0, 1]`` or a schedule.
    mask: which leaves collide (default: every leaf with ``ndim >= 2``; the
      paper collides only the classifier kernel, e.g.
      ``kinetix.masks.by_path('head/kernel')``).
    key: PRNG key of the collision (an int, typed or legacy key).
    collision_options: further keyword arguments of the collision, e.g.
      ``{'distance_scale': 0.05, 'pairing': 'disjoint'}`` for hard.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; ``update`` needs ``params``.

  Examples:
    >>> import jax.numpy as jnp, kinetix
    >>> tx = kinetix.ko_sgd(0.1, momentum=0.9, weight_decay=5e-4,
    ...                     mask=kinetix.masks.by_path('head/kernel'))
    >>> params = {'head': {'kernel': jnp.ones((4, 3)), 'bias': jnp.zeros(3)}}
    >>> grads = {'head': {'kernel': jnp.full((4, 3), 0.1),
    ...                   'bias': jnp.ones(3)}}
    >>> state = tx.init(params)
    >>> updates, state = tx.update(grads, state, params)
  """
  _utils.check_scalar_or_schedule('learning_rate', learning_rate, lo=0.0)
  _utils.check_scalar_or_schedule('momentum', momentum, lo=0.0, hi=1.0,
                                  allow_schedule=False)
  _utils.check_scalar_or_schedule('weight_decay', weight_decay, lo=0.0,
                                  allow_schedule=False)
  return _checked('ko_sgd', optax.chain(
      _collision(collision, coll_coef, mask, key, collision_options),
      _in_compute_dtype(optax.chain(
          optax.add_decayed_weights(weight_decay),
          optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov))),
  ))


def ko_adamw(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 1e-4,
    *,
    collision: str = 'soft',
    coll_coef: optax.ScalarOrSchedule = 0.1,
    mask: Any = None,
    key: _utils.KeyLike = 0,
    collision_options: Mapping[str, Any] | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""KO with AdamW: collision → ``optax.adamw`` (decoupled weight decay).

  The base optimizer runs in at least float32: the moments of bf16/f16
  params are kept in float32 (in float16 Adam's ``g**2`` and ``eps``
  underflow), and the updates come back in each param's dtype.

  Args:
    learning_rate: a float or an Optax schedule.
    b1: Adam's decay of the first moment.
    b2: Adam's decay of the second moment.
    eps: Adam's epsilon, added to the root of the second moment.
    weight_decay: decoupled weight decay (``>= 0``).
    collision: ``"soft"``, ``"hard"`` or ``"none"``.
    coll_coef: the collision coefficient, a float in ``[0, 1]`` or a schedule.
    mask: which leaves collide (see :func:`ko_sgd`).
    key: PRNG key of the collision.
    collision_options: further keyword arguments of the collision.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; ``update`` needs ``params``.

  Examples:
    >>> import jax.numpy as jnp, kinetix
    >>> tx = kinetix.ko_adamw(1e-3, collision='hard',
    ...                       collision_options={'distance_scale': 0.05})
    >>> params = {'kernel': jnp.ones((4, 3))}
    >>> grads = {'kernel': jnp.arange(12.).reshape(4, 3)}
    >>> updates, state = tx.update(grads, tx.init(params), params)
  """
  _utils.check_scalar_or_schedule('learning_rate', learning_rate, lo=0.0)
  for name, value, hi in (('b1', b1, 1.0), ('b2', b2, 1.0), ('eps', eps, None),
                          ('weight_decay', weight_decay, None)):
    _utils.check_scalar_or_schedule(name, value, lo=0.0, hi=hi,
                                    allow_schedule=False)
  return _checked('ko_adamw', optax.chain(
      _collision(collision, coll_coef, mask, key, collision_options),
      _in_compute_dtype(optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps,
                                    weight_decay=weight_decay)),
  ))
