"""Small shared helpers: keys, hyperparameter validation, dtypes, leaf paths.

Nothing here creates a jnp array at import or at transformation-construction
time; everything that touches device memory runs inside ``init``/``update``.
"""

import numbers
import warnings
import zlib
from collections.abc import Callable, Sequence
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


def varying_axes(x: Any) -> frozenset[str]:
  """The ``shard_map`` axes along which ``x`` differs between devices."""
  try:
    aval = jax.typeof(x)
  except (TypeError, AttributeError):
    return frozenset()
  mat = getattr(aval, 'manual_axis_type', None)    # JAX >= 0.9
  if mat is not None:
    return frozenset(getattr(mat, 'varying', ()))
  return frozenset(getattr(aval, 'vma', ()))       # earlier: the aval's vma


def vary_like(tree: Any, *others: Any) -> Any:
  """``tree``, its arrays marked as varying wherever ``others`` vary.

  "Varying" is ``shard_map``'s word for differing between devices. Branches
  of a ``lax.cond`` must agree on where their outputs vary: an optimizer
  state that starts out the same on every device meets gradients and losses
  that differ per device. A no-op outside ``shard_map``; PRNG keys are left
  as they are.
  """
  axes = frozenset().union(
      *(varying_axes(o) for o in jax.tree.leaves(others)))
  if not axes:
    return tree
  pcast = getattr(jax.lax, 'pcast', None)

  def cast(x):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      return x
    missing = tuple(sorted(axes - varying_axes(x)))
    if not missing:
      return x
    if pcast is not None:
      return pcast(x, missing, to='varying')
    return jax.lax.pvary(x, missing)  # pyrefly: ignore[missing-attribute]

  return jax.tree.map(cast, tree)


def varying_branches(branches: Sequence[Callable[..., Any]],
                     *others: Any) -> tuple[Callable[..., Any], ...]:
  """``lax.cond``/``switch`` branches whose outputs all vary like ``others``.

  Inside ``shard_map`` a branch that returns a constant (a reset counter)
  and one that returns a value computed from per-device data would
  otherwise differ in type.
  """
  def wrap(fn):
    return lambda *args: vary_like(fn(*args), *others)
  return tuple(wrap(fn) for fn in branches)


def with_varying_state(init_fn: Callable[..., Any],
                       update_fn: Callable[..., Any]):
  """``(init, update)`` whose states vary like the params and updates.

  Inside ``shard_map`` with one model per device, a state built from
  constants (counts, statistics) would otherwise be the same on every
  device at ``init`` and differ after an ``update``, which breaks a
  ``lax.scan`` over steps (its carry changes type). Outside ``shard_map``
  both are the functions themselves in effect.
  """
  def init(params):
    return vary_like(init_fn(params), params)

  def update(updates, state, params=None, **extra_args):
    new, new_state = update_fn(updates, state, params, **extra_args)
    others = (updates, state, params, extra_args.get('value'))
    return vary_like(new, *others), vary_like(new_state, *others)

  return init, update


def warn_if_device_local(name: str, leaves: Sequence[tuple[str, Any]],
                         consequence: str, stacklevel: int = 5) -> None:
  """Warns when a leaf differs between devices inside ``shard_map``.

  Inside ``jax.shard_map`` each device holds its own block of a leaf that is
  split across the mesh (its type names the manual axes it varies over)
  and kinetix sees that block alone; ``consequence`` says what
  that does to the physics. The value cannot tell a split leaf from a whole
  per-device copy (one model per device), so this warns rather than raises.
  With ``check_vma=False`` nothing is known and nothing is said.
  """
  for path, x in leaves:
    axes = varying_axes(x)
    if axes:
      warnings.warn(
          f'{name}: leaf {path!r} differs between devices along the '
          f'shard_map axes {tuple(sorted(axes))}, so kinetix sees only this '
          f"device's block of it: {consequence}. For the exact result call "
          f'the update outside shard_map (jit with sharded params; see the '
          f"README's sharding section) or pass the leaf replicated. If every "
          f'device holds a whole copy of its own (one model per device), '
          f'this is what you want.', UserWarning, stacklevel=stacklevel)
      return


def _is_explicit(mesh: Any) -> bool:
  return (mesh is not None and not mesh.empty and any(
      t == jax.sharding.AxisType.Explicit for t in mesh.axis_types))


def explicit_mesh(*xs: Any) -> Any:
  """The mesh with Explicit axes that ``xs`` live on, or ``None``.

  The context mesh (``jax.set_mesh``) when it has Explicit axes; otherwise
  the mesh carried in the type of any of ``xs``: ``jax.make_mesh`` creates
  Explicit axes by default, and arrays put on such a mesh carry it in their
  type (``jax.typeof(x).sharding``) even when no mesh context is set.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if _is_explicit(mesh):
    return mesh
  for leaf in jax.tree.leaves(xs):
    try:
      sharding = jax.typeof(leaf).sharding
    except (TypeError, AttributeError):
      continue
    mesh = getattr(sharding, 'mesh', None)
    if _is_explicit(mesh):
      return mesh
  return None


def call_with_auto_axes(fn: Callable[..., Any], out_like: Sequence[Any],
                        *args: Any) -> Any:
  """``fn(*args)``, whose outputs are sharded like ``out_like``.

  ``out_like`` has one entry per output of ``fn``: an array whose sharding
  that output takes, or ``None`` for a replicated scalar. On a mesh with
  Explicit axes (sharding in types), the neuron layout's dot products and
  gathers of a sharded leaf have no single well-typed sharding. There ``fn``
  runs with those axes switched to Auto (``jax.sharding.auto_axes``): GSPMD
  chooses the communication (e.g. one all-reduce of the Gram matrices for a
  feature-sharded soft collision). The mesh comes from the context or, when
  no ``jax.set_mesh`` is active, from the arguments' types. Elsewhere ``fn``
  is called directly.
  """
  mesh = explicit_mesh(*args)
  if mesh is None:
    return fn(*args)
  replicated = jax.sharding.PartitionSpec()
  specs = tuple(replicated if o is None else jax.typeof(o).sharding.spec
                for o in out_like)
  call = jax.sharding.auto_axes(fn, out_sharding=specs)
  if _is_explicit(jax.sharding.get_abstract_mesh()):
    return call(*args)
  with jax.sharding.use_abstract_mesh(mesh):
    return call(*args)


def sharding_like(x: Any) -> Any:
  """``out_sharding`` for an array drawn to match ``x`` (None off Explicit).

  On a mesh with Explicit axes, random draws and constants are created
  replicated unless told otherwise; pass this as ``out_sharding`` so they
  carry ``x``'s sharding (the values do not depend on it: JAX's threefry is
  partitionable).
  """
  if explicit_mesh(x) is None:
    return None
  return jax.typeof(x).sharding
