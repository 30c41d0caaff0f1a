"""Masks that select which leaves collide.

A mask is what ``optax.masked`` takes: a pytree of bools with the structure
of params (or a prefix of it), or a callable ``params -> such a pytree``.
Callables are the robust choice for Flax NNX, whose ``nnx.Optimizer`` passes
``Variable``-wrapped state to ``init`` and raw arrays to ``update``: the
callables here work on both.

Paths are the '/'-joined key path of a leaf, e.g. ``params/head/kernel`` for
Linen and ``head/kernel`` for an NNX ``nnx.state(model, nnx.Param)``.
"""

import fnmatch
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from kinetix import _utils

__all__ = [
    'by_path',
    'by_ndim',
    'invert',
    'all_of',
    'path_matches',
    'MaskFn',
]

#: A callable mask: params → a pytree of bools (or a prefix of one).
MaskFn = Callable[[Any], Any]


def _split(pattern: str) -> tuple[bool, list[str]]:
  anchored = pattern.startswith('/')
  segs = [s for s in pattern.strip('/').split('/')]
  return anchored, segs


def _match_segments(pat: list[str], path: list[str]) -> bool:
  if not pat:
    return not path
  head, rest = pat[0], pat[1:]
  if head == '**':
    return any(_match_segments(rest, path[k:]) for k in range(len(path) + 1))
  return bool(path) and fnmatch.fnmatchcase(path[0], head) and _match_segments(
      rest, path[1:])


def path_matches(pattern: str, path: str) -> bool:
  """Whether a '/'-joined ``path`` matches ``pattern``.

  Each pattern segment is a shell glob for one path segment (``*``, ``?``,
  ``[abc]``); ``**`` spans any number of segments. A pattern matches the
  whole path or any trailing part of it (``head/kernel`` matches
  ``params/head/kernel``); a leading ``/`` anchors it at the root.
  """
  anchored, pat = _split(pattern)
  segs = path.split('/') if path else []
  if anchored:
    return _match_segments(pat, segs)
  return any(_match_segments(pat, segs[k:]) for k in range(len(segs) + 1))


INJECT_HINT = (
    "If the mask was passed through optax.inject_hyperparams, Optax treated "
    "it as a schedule and called it with the step count: pass "
    "static_args=('mask',), e.g. optax.inject_hyperparams("
    "kinetix.soft_collision, static_args=('mask',))(0.1, mask=...).")


def _closest(pattern: str, paths: list[str]) -> list[str]:
  """Up to 3 leaf paths closest to ``pattern`` (or to its last segments)."""
  import difflib  # pylint: disable=g-import-not-at-top
  tails = {}
  depth = len(pattern.strip('/').split('/'))
  for path in paths:
    tails.setdefault('/'.join(path.split('/')[-depth:]), path)
  near = difflib.get_close_matches(pattern.strip('/'), list(tails), n=3,
                                   cutoff=0.4)
  return [tails[t] for t in near]


def by_path(*patterns: str, allow_empty: bool = False) -> MaskFn:
  """Selects the leaves whose '/'-joined key path matches any pattern.

  A pattern that matches no leaf is almost always a typo or a renamed layer,
  which would silently turn the transformation off for that part of the
  model; the returned mask therefore raises a ``ValueError`` listing the
  patterns that matched nothing and the closest leaf paths. Pass
  ``allow_empty=True`` for programmatic use where an empty match is
  expected.

  Args:
    *patterns: segment globs, e.g. ``"head/kernel"``, ``"*/kernel"``,
      ``"blocks/**/kernel"``, ``"/params/Dense_0/kernel"`` (anchored).
    allow_empty: do not raise when a pattern matches no leaf.

  Returns:
    A callable ``params -> pytree of bools`` usable as ``mask=`` of every
    kinetix transformation and of ``optax.masked``. Under
    ``optax.inject_hyperparams`` pass ``static_args=('mask',)``: Optax
    treats every other callable as a schedule.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kinetix import masks
    >>> params = {'body': {'kernel': jnp.ones((3, 4)), 'bias': jnp.ones(4)},
    ...           'head': {'kernel': jnp.ones((4, 2)), 'bias': jnp.ones(2)}}
    >>> masks.by_path('head/kernel')(params)['head']
    {'bias': False, 'kernel': True}
    >>> masks.by_path('classifier/kernel')(params)
    Traceback (most recent call last):
      ...
    ValueError: by_path: pattern 'classifier/kernel' matches no leaf. ...
  """
  if not patterns:
    raise ValueError('by_path needs at least one pattern, e.g. '
                     "by_path('head/kernel').")
  for p in patterns:
    if not isinstance(p, str) or not p.strip('/'):
      raise ValueError(f'by_path patterns must be non-empty strings; got {p!r}')
  if not isinstance(allow_empty, bool):
    raise TypeError(f'allow_empty must be a bool; got {allow_empty!r}')

  def mask_fn(params: Any) -> Any:
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    paths = [_utils.path_to_str(path) for path, _ in flat]
    hits = [[path_matches(p, path) for p in patterns] for path in paths]
    if not allow_empty:
      missing = [p for k, p in enumerate(patterns)
                 if not any(h[k] for h in hits)]
      if missing:
        raise ValueError(_no_match_message(missing, paths, flat))
    return jax.tree_util.tree_unflatten(treedef, [any(h) for h in hits])

  mask_fn.__name__ = f'by_path{patterns!r}'
  return mask_fn


def _no_match_message(missing: list[str], paths: list[str],
                      flat: list[Any]) -> str:
  lines = []
  for p in missing:
    near = _closest(p, [q for q in paths if q])
    hint = f' Closest leaf paths: {near}.' if near else ''
    lines.append(f'by_path: pattern {p!r} matches no leaf.{hint}')
  shown = paths[:20]
  more = f' (and {len(paths) - 20} more)' if len(paths) > 20 else ''
  lines.append(f'Available leaf paths: {shown}{more}. Pass allow_empty=True '
               f'if an empty match is intended.')
  if len(flat) == 1 and not paths[0] and jnp.ndim(flat[0][1]) == 0:
    lines.append('The mask was called on a single scalar, not on params. '
                 + INJECT_HINT)
  return ' '.join(lines)


def by_ndim(min_ndim: int = 2) -> MaskFn:
  """Selects leaves with ``ndim >= min_ndim`` (the collisions' default: 2)."""
  def mask_fn(params: Any) -> Any:
    return jax.tree.map(lambda x: len(getattr(x, 'shape', ())) >= min_ndim,
                        params)
  return mask_fn


def invert(mask: MaskFn) -> MaskFn:
  """The complement of a callable mask, e.g. ``invert(by_path('embed/*'))``."""
  def mask_fn(params: Any) -> Any:
    return jax.tree.map(lambda m: not m, mask(params))
  return mask_fn


def all_of(*masks: MaskFn) -> MaskFn:
  """Leaves selected by every one of ``masks``."""
  def mask_fn(params: Any) -> Any:
    trees = [m(params) for m in masks]
    return jax.tree.map(lambda *ms: all(ms), *trees)
  return mask_fn


# --------------------------------------------------------------------------
# Resolving a mask to one flag per leaf (used by every kinetix transformation)


def _default(params: Any) -> Any:
  """Every leaf with ``ndim >= 2`` (weights, not biases or scales)."""
  return jax.tree.map(lambda x: jnp.ndim(x) >= 2, params)


def _resolve(mask: Any, params: Any, treedef: Any,
             paths: Sequence[str], name: str) -> list[bool]:
  """Evaluates ``mask`` on ``params``; one Python bool per leaf of ``treedef``.

  ``mask`` is ``None`` (the default mask), a callable of params, or a pytree
  of bools with the structure of params or a prefix of it, as in
  ``optax.masked``.
  """
  if isinstance(mask, str):
    raise TypeError(
        f'{name}: mask={mask!r} is a string; a mask is a pytree of bools or a '
        f'callable of params. For leaves selected by path write '
        f'mask=kinetix.masks.by_path({mask!r}).')
  if isinstance(mask, (jax.Array, np.ndarray)) and np.ndim(mask) == 0 and (
      isinstance(mask, jax.Array) or _utils.is_traced(mask)):
    raise TypeError(
        f'{name}: mask is a scalar array ({mask!r}), not a pytree of Python '
        f'bools or a callable. ' + INJECT_HINT)
  if mask is None:
    mask_tree = _default(params)
  elif callable(mask) and not isinstance(mask, (bool, np.bool_)):
    mask_tree = mask(params)
  else:
    mask_tree = mask
  try:
    full = jax.tree.map(
        lambda m, sub: jax.tree.map(lambda _: m, sub), mask_tree, params,
        is_leaf=lambda m: isinstance(m, (bool, np.bool_, np.ndarray,
                                         jax.Array)))
    flags = treedef.flatten_up_to(full)
  except (ValueError, TypeError) as e:
    raise ValueError(
        f'{name}: the mask does not match the structure of params. A mask is '
        f'a pytree of bools with the structure of params (or a prefix of it), '
        f'or a callable params -> such a pytree. Details: {e}') from e
  out = []
  for flag, path in zip(flags, paths, strict=True):
    if _utils.is_traced(flag):
      raise TypeError(
          f'{name}: the mask value for leaf {path!r} is traced; masks must be '
          f'static (computed from shapes or paths, not from array values).')
    if not isinstance(flag, (bool, np.bool_)) and not (
        isinstance(flag, (np.ndarray, jax.Array)) and np.ndim(flag) == 0
        and np.asarray(flag).dtype == bool):
      raise TypeError(f'{name}: the mask value for leaf {path!r} must be a '
                      f'bool; got {flag!r}')
    out.append(bool(flag))
  return out
