"""Masks that select which leaves collide.

A mask is what ``optax.masked`` takes: a pytree of bools with the structure
of params (or a prefix of it), or a callable ``params -> such a pytree``.
Callables are the robust choice for Flax NNX, whose ``nnx.Optimizer`` passes
``Variable``-wrapped state to ``init`` and raw arrays to ``update``: the
callables here work on both.

Paths are the '/'-joined key path of a leaf, e.g. ``params/head/kernel`` for
Linen and ``head/kernel`` for an NNX ``nnx.state(model, nnx.Param)``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any

import jax

from kinetix import _utils

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


def by_path(*patterns: str) -> MaskFn:
  """Selects the leaves whose '/'-joined key path matches any pattern.

  Args:
    *patterns: segment globs, e.g. ``"head/kernel"``, ``"*/kernel"``,
      ``"blocks/**/kernel"``, ``"/params/Dense_0/kernel"`` (anchored).

  Returns:
    A callable ``params -> pytree of bools`` usable as ``mask=`` of every
    kinetix transformation and of ``optax.masked``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kinetix import masks
    >>> params = {'body': {'kernel': jnp.ones((3, 4)), 'bias': jnp.ones(4)},
    ...           'head': {'kernel': jnp.ones((4, 2)), 'bias': jnp.ones(2)}}
    >>> masks.by_path('head/kernel')(params)['head']
    {'bias': False, 'kernel': True}
  """
  if not patterns:
    raise ValueError('by_path needs at least one pattern, e.g. '
                     "by_path('head/kernel').")
  for p in patterns:
    if not isinstance(p, str) or not p.strip('/'):
      raise ValueError(f'by_path patterns must be non-empty strings; got {p!r}')

  def mask_fn(params: Any) -> Any:
    return jax.tree_util.tree_map_with_path(
        lambda path, _: any(
            path_matches(p, _utils.path_to_str(path)) for p in patterns),
        params)

  mask_fn.__name__ = f'by_path{patterns!r}'
  return mask_fn


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
