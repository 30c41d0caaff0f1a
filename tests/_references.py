"""Dense, obviously-correct references shared by the test files.

Loops over neuron pairs in float64 NumPy, and NumPy transcriptions of the
authors' code: the tests compare kinetix against these, never against
itself.
"""

import functools
import itertools
import re

import jax
import jax.numpy as jnp
import numpy as np

from kinetix import _neurons
from kinetix import _utils


def rand(shape, seed, scale=1.0):
  return (np.random.default_rng(seed).normal(size=shape) * scale).astype(
      np.float32)


def neurons_np(x, neuron_axis=-1):
  """(N, D) float64 view: neurons on ``neuron_axis``, the rest flattened."""
  x = np.moveaxis(np.asarray(x, np.float64), neuron_axis, 0)
  return x.reshape(x.shape[0], -1)


def from_neurons_np(y, shape, neuron_axis=-1):
  moved = np.moveaxis(np.zeros(shape), neuron_axis, 0).shape
  return np.moveaxis(y.reshape(moved), 0, neuron_axis)


def soft_reference(w, g, c, include_self=True, min_similarity=None,
                   partners='all'):
  """Alg. 2 with explicit loops over neuron pairs (float64)."""
  n = w.shape[0]
  out = g.copy()
  for i in range(n):
    for j in range(n):
      if i == j and not include_self:
        continue
      if partners == 'higher' and j < i:
        continue
      nwi, nwj = np.linalg.norm(w[i]), np.linalg.norm(w[j])
      ngi, ngj = np.linalg.norm(g[i]), np.linalg.norm(g[j])
      cw = w[i] @ w[j] / max(nwi, 1e-12) / max(nwj, 1e-12)
      cg = g[i] @ g[j] / max(ngi, 1e-12) / max(ngj, 1e-12)
      s = cw * cg
      if min_similarity is not None and s < min_similarity:
        s = 0.0
      out[i] -= c * s * g[j]
  return out


def authors_soft(w, g, c, collision_type, thres=0.0):
  """The authors' ``apply_gradient_collision`` (``ko.py``), in NumPy.

  ``w``, ``g``: ``(N, D)`` float64, neurons as rows (PyTorch
  ``Linear.weight``); no noise. A line-by-line transcription: F.normalize
  with eps 1e-12, the Hadamard product clamped at ``thres``, then the
  repulsion of each collision type.
  """
  def normalize(x):
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
  wn, gn = normalize(w), normalize(g)
  s = (wn @ wn.T) * (gn @ gn.T)
  s = np.where(s < thres, 0.0, s)
  eye = np.eye(len(w))
  if collision_type == 'wg':
    r = c * s @ g
  elif collision_type == 'wg_i':
    r = c * (s - eye) @ g
  elif collision_type == 'wg_t':
    r = (np.triu(s) - eye) @ g * c
  elif collision_type == 'wg_e':
    r = (s - eye) @ g
    r = r / (np.linalg.norm(r) + 1e-20) * np.linalg.norm(g) * c
  else:
    raise ValueError(collision_type)
  return g - r


def hard_pairs(w, g, c, kappa):
  """Eq. 7's verdicts: the accepted pairs ``i < j`` of a layer, in order."""
  n = g.shape[0]
  g_r = np.array([[np.linalg.norm(g[i] - g[j]) for j in range(n)]
                  for i in range(n)])
  w_r = np.array([[np.linalg.norm(w[i] - w[j]) for j in range(n)]
                  for i in range(n)])
  g_max = g_r.max()
  return [(i, j) for i, j in itertools.combinations(range(n), 2)
          if g_max > 0 and g_r[i, j] * np.exp(-kappa * w_r[i, j]) / g_max
          > 1 - c]


@functools.partial(jax.jit, static_argnames='dim')
def _pair_directions(key, i, j, dim):
  """``n_ij`` of the pairs ``(i, j)``: one jitted program per shape."""
  return _neurons.unit_directions(_neurons.pair_keys(key, i, j), dim,
                                  jnp.float32)


def hard_reference(w, g, c, kappa, key):
  """Eqs. 5-8 with explicit pair loops; n_ij from kinetix's pair keys."""
  d = g.shape[1]
  out = g.copy()
  pairs = hard_pairs(w, g, c, kappa)
  if not pairs:
    return out, 0
  # Every pair's direction from its own key, drawn in one call.
  i_s, j_s = (jnp.array(x, jnp.int32) for x in zip(*pairs, strict=True))
  directions = np.asarray(_pair_directions(key, i_s, j_s, d), np.float64)
  for (i, j), n_ij in zip(pairs, directions, strict=True):
    g_cm = (g[i] + g[j]) / 2
    speed = np.linalg.norm(g[i] - g[j])
    out[i] += g_cm + 0.5 * speed * n_ij - g[i]
    out[j] += g_cm - 0.5 * speed * n_ij - g[j]
  return out, len(pairs)


def disjoint_reference(w, g, c, kappa, key, columns):
  """The matching and directions kinetix draws, collided with NumPy loops.

  ``w``, ``g``: (N, D) float64. Pair k is (perm[2k], perm[2k + 1]); its
  direction is row k of a (N/2, D) normal draw for the row layout and
  column k of a (D, N/2) draw for the column layout.
  """
  n, d = g.shape
  half = n // 2
  perm_key, dir_key = jax.random.split(key)
  perm = np.asarray(jax.random.permutation(perm_key, n))
  if columns:
    z = np.asarray(jax.random.normal(dir_key, (d, half)), np.float64).T
  else:
    z = np.asarray(jax.random.normal(dir_key, (half, d)), np.float64)
  pairs = [(perm[2 * k], perm[2 * k + 1]) for k in range(half)]
  speed = np.array([np.linalg.norm(g[b] - g[a]) for a, b in pairs])
  dist = np.array([np.linalg.norm(w[b] - w[a]) for a, b in pairs])
  norms = np.linalg.norm(w, axis=1)
  cosines = [abs(w[a] @ w[b]) / (norms[a] * norms[b]) for a, b in pairs
             if norms[a] > 0 and norms[b] > 0]
  out, accepted = g.copy(), 0
  for k, (a, b) in enumerate(pairs):
    if speed.max() == 0 or speed[k] * np.exp(-kappa * dist[k]) / speed.max(
    ) <= 1 - c:
      continue
    accepted += 1
    delta = 0.5 * (g[b] - g[a]) + 0.5 * speed[k] * z[k] / np.linalg.norm(z[k])
    out[a] += delta
    out[b] -= delta
  return out, accepted, sum(cosines) / half


def leaf_key(tx_key, path, step=0):
  """The key kinetix folds for leaf ``path`` at step ``step`` (0-based)."""
  key = _utils.canonicalize_key(tx_key)
  for _ in range(step + 1):
    key, step_key = jax.random.split(key)
  return jax.random.fold_in(step_key, _utils.path_seed(path))


def layer_key(tx_key, path, layer=0):
  """The key kinetix uses for ``layer`` of leaf ``path`` at the first step."""
  return jax.random.fold_in(leaf_key(tx_key, path), layer)


def apply(tx, grads, params):
  """One jitted update from a fresh state: ``(updates, state)``."""
  state = tx.init(params)
  updates, state = jax.jit(tx.update)(grads, state, params)
  return updates, state


def distinct_kernels(compiled) -> set[str]:
  """The distinct fused kernels of a compiled program, names stripped.

  XLA compiles one kernel per distinct fused computation.
  """
  text = compiled.as_text()
  kernels = set()
  for sig, body in re.findall(r'^%fused[\w.\-]* (\(.*?\)) -> .*?\{\n(.*?)\n\}',
                              text, re.M | re.S):
    body = re.sub(r', metadata=\{[^}]*\}', '', body)
    kernels.add(re.sub(r'[\w.\-]+:', '', sig)
                + re.sub(r'%[\w.\-]+', '%', body))
  return kernels
