"""Sharding: Explicit mesh axes, ``shard_map`` variation, group keys.

kinetix runs under ``jax.jit`` with sharded params (GSPMD), on meshes with
Explicit axes (sharding in types, with or without ``jax.set_mesh``) and
inside ``jax.shard_map``. Everything that depends on which of these holds
lives here; the physics modules call these helpers and stay the same.
"""

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

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


def switch(index: Any, branches: Sequence[Callable[..., Any]],
           operands: Any, *others: Any) -> Any:
  """``lax.switch(index, branches, operands)`` whose branches agree in type.

  Branches take ``operands`` as their argument rather than closing over
  arrays: a branch traced eagerly would see a closed-over concrete array
  without the sharding in its type (``float32[2,8,4]`` against the other
  branch's ``float32[2,8@x,4]`` on an Explicit mesh). Inside ``shard_map``
  a branch that returns a constant (a reset counter) and one that returns a
  value computed from per-device data would differ in type too: every
  output is marked as varying like ``operands`` and ``others``. A bool
  ``index`` picks ``branches[1]`` when true, as ``lax.cond`` does.
  """
  def wrap(fn):
    return lambda ops: vary_like(fn(ops), operands, *others)
  index = jnp.asarray(index)
  if index.dtype == bool:
    index = index.astype(jnp.int32)
  return jax.lax.switch(index, [wrap(fn) for fn in branches], operands)


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


# The oldest JAX with what Explicit mesh axes need here: auto_axes and
# use_abstract_mesh in jax.sharding.
EXPLICIT_AXES_JAX = '0.7.2'


def explicit_axes_supported() -> bool:
  """Whether this JAX has what kinetix needs for Explicit mesh axes."""
  return all(hasattr(jax.sharding, name)
             for name in ('auto_axes', 'use_abstract_mesh'))


def require_explicit_support() -> None:
  """Raises a ``RuntimeError`` naming the JAX needed for Explicit axes."""
  if explicit_axes_supported():
    return
  raise RuntimeError(
      f'kinetix: params on a mesh with Explicit axes need jax >= '
      f'{EXPLICIT_AXES_JAX} (jax.sharding.auto_axes); this is jax '
      f'{jax.__version__}. Upgrade jax (pip install -U "jax>='
      f'{EXPLICIT_AXES_JAX}"), or build the mesh with Auto axes: '
      f'jax.make_mesh(shape, names, axis_types=(jax.sharding.AxisType.Auto,)'
      f' * len(names)).')


def call_with_auto_axes(fn: Callable[..., Any], out_like: Any,
                        *args: Any) -> Any:
  """``fn(*args)``, whose outputs are sharded like ``out_like``.

  ``out_like`` is a pytree with the structure of ``fn``'s output: an array
  whose sharding that output takes, or ``None`` for a replicated value. On a
  mesh with Explicit axes (sharding in types), the neuron layout's dot
  products and gathers of a sharded leaf have no single well-typed
  sharding. There ``fn`` runs with those axes switched to Auto
  (``jax.sharding.auto_axes``): GSPMD chooses the communication (e.g. one
  all-reduce of the Gram matrices for a feature-sharded soft collision). The
  mesh comes from the context or, when no ``jax.set_mesh`` is active, from
  the arguments' types. Elsewhere ``fn`` is called directly.
  """
  mesh = explicit_mesh(*args)
  if mesh is None:
    return fn(*args)
  require_explicit_support()
  replicated = jax.sharding.PartitionSpec()
  specs = jax.tree.map(
      lambda o: replicated if o is None else jax.typeof(o).sharding.spec,
      out_like, is_leaf=lambda o: o is None)
  call = jax.sharding.auto_axes(fn, out_sharding=specs)
  if _is_explicit(jax.sharding.get_abstract_mesh()):
    return call(*args)
  with jax.sharding.use_abstract_mesh(mesh):
    return call(*args)


def group_key(x: Any) -> Any:
  """What, besides shape and dtype, two leaves must share to be grouped.

  The sharding in ``x``'s type (Explicit axes; empty under plain ``jit``),
  inside ``shard_map`` the mesh axes it varies over, and, for a concrete
  array, its sharding on devices: the leaves of one group are one type (a
  ``lax.switch`` reads them) and need no reshard to share a buffer.
  """
  try:
    typed = jax.typeof(x).sharding
    key: tuple[Any, ...] = (str(typed.mesh), str(typed.spec),
                            tuple(sorted(varying_axes(x))))
  except (TypeError, AttributeError):
    key = ()
  if isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer):
    key += (x.sharding,)
  return key


def sharding_like(x: Any) -> Any:
  """``out_sharding`` for an array drawn to match ``x`` (None off Explicit).

  On a mesh with Explicit axes, random draws and constants are created
  replicated unless told otherwise; pass this as ``out_sharding`` so they
  carry ``x``'s sharding (the values do not depend on it: JAX's threefry is
  partitionable).
  """
  if explicit_mesh(x) is None:
    return None
  require_explicit_support()
  return jax.typeof(x).sharding
