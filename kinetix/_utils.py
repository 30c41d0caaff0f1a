"""Small shared helpers: keys, hyperparameter validation, dtypes, leaf paths.

Sharding lives in :mod:`kinetix._sharding`; masks in :mod:`kinetix.masks`.

Nothing here creates a jnp array at import or at transformation-construction
time; everything that touches device memory runs inside ``init``/``update``.
"""

import numbers
import zlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

# A PRNG key argument: an int seed, a typed key (``jax.random.key``) or a
# legacy ``uint32[2]`` key (``jax.random.PRNGKey``).
KeyLike = int | jax.Array | np.ndarray


def is_traced(x: Any) -> bool:
  """True when ``x`` is a tracer (its value is unknown at trace time)."""
  return isinstance(x, jax.core.Tracer)


def concrete_float(x: Any) -> float | None:
  """``x`` as a Python float when it is a concrete scalar, else ``None``.

  Schedules (callables) and tracers (e.g. values injected by
  ``optax.inject_hyperparams`` under ``jit``) give ``None``: they cannot be
  checked at construction time.
  """
  if callable(x) or is_traced(x):
    return None
  if isinstance(x, numbers.Real):
    return float(x)
  if isinstance(x, (np.ndarray, jax.Array)) and np.ndim(x) == 0:
    if jnp.issubdtype(x.dtype, jnp.number) and not jnp.issubdtype(
        x.dtype, jnp.complexfloating):
      return float(x)
  return None


def check_scalar_or_schedule(name: str, value: Any, *, lo: float | None = None,
                             hi: float | None = None,
                             allow_schedule: bool = True) -> None:
  """Validates a float hyperparameter (or schedule) against ``[lo, hi]``.

  Raises:
    TypeError: ``value`` is neither a real number, a scalar array nor (when
      allowed) a callable schedule.
    ValueError: a concrete ``value`` lies outside ``[lo, hi]`` or is not finite.
  """
  if callable(value):
    if not allow_schedule:
      raise TypeError(f'{name} must be a number, not a schedule; got {value!r}')
    return
  if is_traced(value):
    return
  if isinstance(value, bool) or not (
      isinstance(value, numbers.Real)
      or (isinstance(value, (np.ndarray, jax.Array)) and np.ndim(value) == 0)):
    allowed = 'a float or an optax schedule' if allow_schedule else 'a float'
    raise TypeError(f'{name} must be {allowed}; got {value!r}')
  v = concrete_float(value)
  if v is None:
    raise TypeError(f'{name} must be a real number; got {value!r}')
  rng = (f'[{lo if lo is not None else "-inf"}, '
         f'{hi if hi is not None else "inf"}]')
  if not np.isfinite(v) or (lo is not None and v < lo) or (
      hi is not None and v > hi):
    raise ValueError(f'{name} must lie in {rng}; got {v}')


def static_int(name: str, value: Any) -> int:
  """``value`` as a Python int, or a ``TypeError`` that says how to fix it."""
  if is_traced(value):
    raise TypeError(
        f'{name} must be a static Python int, but it is traced. With '
        f"optax.inject_hyperparams, pass static_args=('{name}', ...).")
  if isinstance(value, bool):
    raise TypeError(f'{name} must be an int; got {value!r}')
  if isinstance(value, numbers.Integral):
    return int(value)
  if isinstance(value, (np.ndarray, jax.Array)) and np.ndim(value) == 0 and (
      jnp.issubdtype(value.dtype, jnp.integer)):
    return int(value)
  raise TypeError(f'{name} must be an int; got {value!r}')


def resolve(value: Any, count: jax.Array) -> jax.Array:
  """Evaluates a float-or-schedule hyperparameter at step ``count``."""
  return value(count) if callable(value) else value


def safe_sqrt(x: jax.Array) -> jax.Array:
  """``sqrt(max(x, 0))`` whose gradient is finite at 0 (double ``where``).

  A NaN stays NaN.

  ``jax.grad`` of a plain ``sqrt`` at 0 is ``inf`` and becomes NaN once
  multiplied by a zero; meta-gradients through an update must stay finite.
  """
  pos = x > 0
  return jnp.where(pos, jnp.sqrt(jnp.where(pos, x, jnp.ones_like(x))),
                   jnp.where(jnp.isnan(x), x, jnp.zeros_like(x)))


def at_run_time(tree: Any) -> Any:
  """``tree`` unchanged, computed before any kernel reads it.

  The outputs of a two-step loop that XLA cannot fold. A kernel that
  reads them takes them as parameters instead of fusing the scalar work that
  produces them (a constant row offset, a sum over the leaves): the kernels
  of leaves of one shape are then the same, and XLA compiles one of them
  rather than one per leaf.
  """
  def body(k, xs):
    never = k >= 2
    return jax.tree.map(lambda x: jnp.where(never, jnp.zeros_like(x), x), xs)
  return jax.lax.fori_loop(0, 2, body, tree)


def read_row(stack: jax.Array, i: jax.Array) -> jax.Array:
  """``stack[i]`` for an index ``0 ≤ i < len(stack)`` known at run time.

  No select for negative indices (``dynamic_index_in_dim`` has one, fused
  into every kernel that reads the row). The other start indices take
  ``i``'s integer type (a Python 0 is int64 under ``jax_enable_x64``).
  """
  start = (i,) + (np.zeros((), jnp.dtype(i.dtype)),) * (stack.ndim - 1)
  return jax.lax.dynamic_slice(stack, start, (1, *stack.shape[1:]),
                               allow_negative_indices=False)[0]


def validate_key(key: KeyLike, name: str = 'key') -> None:
  """Checks at construction time that ``key`` can become a typed PRNG key."""
  if is_traced(key):
    return
  if isinstance(key, bool):
    raise TypeError(f'{name} must be an int, a jax.random.key or a legacy '
                    f'jax.random.PRNGKey; got {key!r}')
  if isinstance(key, numbers.Integral):
    return
  if isinstance(key, (jax.Array, np.ndarray)):
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
      if key.shape != ():
        raise ValueError(f'{name} must be a single key (shape ()), got shape '
                         f'{key.shape}')
      return
    if key.dtype == np.uint32 and key.shape == (2,):
      return
    if jnp.issubdtype(key.dtype, jnp.integer) and key.shape == ():
      return
  raise TypeError(f'{name} must be an int, a jax.random.key or a legacy '
                  f'jax.random.PRNGKey (uint32[2]); got {key!r}')


def canonicalize_key(key: KeyLike) -> jax.Array:
  """Returns a typed PRNG key from an int, a typed key or a legacy key."""
  if isinstance(key, (jax.Array, np.ndarray)):
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
      return jnp.asarray(key)
    if key.dtype == np.uint32 and key.shape == (2,):
      return jax.random.wrap_key_data(jnp.asarray(key))
  return jax.random.key(key)


def increment(count: jax.Array) -> jax.Array:
  """``count + 1``, saturating at the dtype's maximum (``optax``'s rule)."""
  return jnp.asarray(optax.safe_increment(count))


def compute_dtype(dtype: Any) -> Any:
  """The dtype kinetix computes in for a leaf of ``dtype``: at least float32."""
  return jnp.promote_types(dtype, jnp.float32)


def state_dtype(params: Any) -> Any:
  """The dtype of kinetix's scalar float state for ``params``.

  The lowest floating dtype among the leaves, promoted to at least float32
  (float32 when there is no floating leaf): bf16/f16/f32 params give float32,
  all-float64 params (x64) give float64. Works on ``jax.ShapeDtypeStruct``.
  """
  dtypes = [compute_dtype(leaf.dtype)
            for leaf in jax.tree_util.tree_leaves(params)
            if hasattr(leaf, 'dtype')
            and jnp.issubdtype(leaf.dtype, jnp.floating)]
  return min(dtypes, key=lambda d: jnp.dtype(d).itemsize,
             default=jnp.dtype(jnp.float32))


def path_to_str(path: tuple[Any, ...]) -> str:
  """'/'-joined key path; NNX ``.value`` attribute keys are dropped."""
  parts = []
  for k in path:
    if isinstance(k, jax.tree_util.DictKey):
      parts.append(str(k.key))
    elif isinstance(k, jax.tree_util.SequenceKey):
      parts.append(str(k.idx))
    elif isinstance(k, jax.tree_util.GetAttrKey):
      if k.name in ('value', 'raw_value', '_value'):
        continue  # nnx.Variable wrapper
      parts.append(k.name)
    elif isinstance(k, jax.tree_util.FlattenedIndexKey):
      parts.append(str(k.key))
    else:
      parts.append(str(k))
  return '/'.join(parts)


def path_seed(path_str: str) -> int:
  """A stable 31-bit integer for a leaf path, used to fold per-leaf streams.

  Folding the path (not the leaf's position in the tree) into the key keeps a
  leaf's random stream the same whether or not other leaves are masked out.
  """
  return zlib.crc32(path_str.encode()) & 0x7FFFFFFF


def flatten_like(treedef: Any, tree: Any, message: str) -> list[Any]:
  """``tree``'s leaves in the order of ``treedef``; ``ValueError`` if not.

  ``message`` says which two trees disagree; the mismatch follows it.
  """
  try:
    return treedef.flatten_up_to(tree)
  except (ValueError, TypeError) as e:
    raise ValueError(f'{message}: {e}') from e


def leaves_with_paths(tree: Any, is_leaf: Callable[[Any], bool] | None = None):
  """``[(path_str, leaf), ...]`` and the treedef of ``tree``."""
  flat, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)
  return [(path_to_str(p), x) for p, x in flat], treedef


def check_array_leaves(name: str, params: Any) -> None:
  """Raises a TypeError naming the first leaf of ``params`` that is no array.

  An unfiltered Equinox model (or any pytree holding functions, strings or
  other objects) is not a pytree of parameters; Optax would otherwise fail
  deep inside with an ``AttributeError`` or, worse, silently skip the leaf.
  Arrays, ``jax.ShapeDtypeStruct`` and Python/NumPy numbers are accepted.
  """
  for path, leaf in leaves_with_paths(params)[0]:
    if isinstance(leaf, (jax.Array, np.ndarray, np.generic, numbers.Number,
                         jax.ShapeDtypeStruct)) or is_traced(leaf):
      continue
    if hasattr(leaf, 'shape') and hasattr(leaf, 'dtype'):
      continue  # array-likes, e.g. nnx.Variable values
    raise TypeError(
        f'{name}: params leaf {path!r} is a {type(leaf).__name__} '
        f'({leaf!r:.80}), not an array. Pass only the arrays of a model: '
        f'with Equinox, params = eqx.filter(model, eqx.is_array) (and '
        f'eqx.filter_grad for the gradients); with Flax NNX, '
        f'nnx.state(model, nnx.Param).')


def check_floating(name: str, params: Any) -> None:
  """Raises a TypeError naming the first leaf of ``params`` that is not float.

  Works on arrays and ``jax.ShapeDtypeStruct``; called from ``init``.
  """
  check_array_leaves(name, params)
  for path, leaf in leaves_with_paths(params)[0]:
    dtype = getattr(leaf, 'dtype', None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
      raise TypeError(
          f'{name}: param {path!r} has dtype {dtype}; {name} updates every '
          f'leaf and needs floating-point params (wrap it with optax.masked '
          f'to leave integer leaves out).')
