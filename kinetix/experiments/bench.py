"""The performance benchmark: KO collisions timed against references.

Every figure is a *ratio* against a reference measured in the same process
(absolute times on shared machines are not comparable across runs):

1. soft collision vs the three ``N×N×D`` matrix products it needs
   (``WᵀW``, ``GᵀG`` and ``G·C``, default precision, float32);
2. hard collision (``pairing="all"``) vs soft collision on the same leaf,
   with few and with all pairs accepted, and the compiled temporary memory
   of hard collision at ``N = D = 2048``;
   With all pairs accepted, also against its own floor: drawing the
   ``N²/2 × D`` Gaussian directions from the pairs' counter-based keys in
   the same chunks, without colliding anything;
3. the capacity cliff: hard collision with about twice as many accepted
   pairs as ``max_pairs`` vs the same call with a large enough
   ``max_pairs``;
4. hard collision with ``pairing="disjoint"``, every matched pair
   accepted, vs its floor: drawing the ``N/2 × D`` Gaussian directions
   alone with ``jax.random.normal`` (and, informational, the same numbers
   as kinetix draws them, and an AdamW update, for scale);
5. blocked soft collision on a GPT-2 ``lm_head`` leaf (768 × 50,257): it
   runs and its compiled temporary memory stays small;
6. a whole jitted MLP train step with soft collision on the head vs the same
   step with plain AdamW;
7. soft collision vs the ``optax.contrib.muon`` update of the same matrix;
8. a whole model: the update of a GPT-2-small-shaped param tree (768 wide,
   collision on the 4 kernels of every block, AdamW after it) is compiled
   with 12 blocks and with 1; the ratio of the two compile times says
   whether compilation grows with the model (``optax.adamw`` alone and
   ``optax.contrib.muon`` on the same trees for scale);
9. vocabulary heads, compile only: XLA's temporary memory of the update on
   a GPT-2 head (768 × 50,257) and a Qwen2 head (896 × 151,936).

Protocol: ``jax.jit``, one warm-up call (compile), ``block_until_ready`` on
all outputs, then ``repeats`` timed samples with ``time.perf_counter``; the
figure is the median. The two sides of a ratio are sampled alternately, so
slow drifts of the machine hit both alike; a sample of a short call loops it
until it lasts about 20 ms. Memory is XLA's ``temp_size_in_bytes`` from
``jitted.lower(...).compile().memory_analysis()`` (``None`` where the
backend does not report it).

Run it with ``python -m kinetix bench`` (``--quick`` for a smoke test of a
few seconds); programmatic use::

    from kinetix.experiments import bench
    rows = bench.run_benchmarks(quick=True, repeats=3)
    print(bench.format_table(rows))
"""

import argparse
import math
import os
import pathlib
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from kinetix.experiments import _common

NAME = 'bench'

GIB = 1 << 30
MEMORY_LIMIT = 2 * GIB
SAMPLE_SECONDS = 0.02     # a timed sample loops a short call for about this
MAX_LOOP = 1000           # ... but at most this many calls per sample

KINDS = ('soft_vs_matmuls', 'hard_vs_soft', 'hard_vs_rng_floor',
         'capacity_cliff',
         'disjoint_vs_floor', 'blocked_lm_head', 'train_step', 'soft_vs_muon',
         'model_compile', 'model_update', 'vocab_head_memory')

# Targets of the performance contract (ratios, see the module docstring).
SOFT_TARGET = 1.1
SOFT_TARGET_SIZES = (1024, 2048)   # the contract's N = D
HARD_ALL_TARGET = 50.0
HARD_FLOOR_TARGET = 1.5
CLIFF_TARGET = 3.0
DISJOINT_TARGET = 2.0
MODEL_COMPILE_TARGET = 2.0         # compile(12 blocks) / compile(1 block)
MODEL_COMPILE_REPEATS = 5          # compile times: the median of this many
MODEL_UPDATE_TARGET = 1.1          # grouped update / each leaf on its own

NOTES = (
    'float32 everywhere, default matmul precision (full float32 on CPU); '
    'jit, one warm-up call, block_until_ready, median of alternating '
    'samples; times are per call. Memory: XLA temp_size_in_bytes of the '
    'compiled update. Kernels are (D, N): N neurons of D features.')

HEADER = ('case', 'time', 'reference', 'ref. time', 'ratio', 'temp memory',
          'target', 'holds')


# --------------------------------------------------------------------------
# Timing and memory


def _block(out: Any) -> Any:
  import jax  # pylint: disable=g-import-not-at-top
  return jax.block_until_ready(out)


def _call_time(fn: Callable[..., Any], args: Sequence[Any]) -> float:
  start = time.perf_counter()
  _block(fn(*args))
  return time.perf_counter() - start


def _sample(fn: Callable[..., Any], args: Sequence[Any], loop: int) -> float:
  """Seconds per call, averaged over ``loop`` blocked calls."""
  start = time.perf_counter()
  for _ in range(loop):
    _block(fn(*args))
  return (time.perf_counter() - start) / loop


def _loop_count(fn: Callable[..., Any], args: Sequence[Any]) -> int:
  """Calls per sample so that one sample lasts about ``SAMPLE_SECONDS``."""
  once = _call_time(fn, args)
  if once >= SAMPLE_SECONDS:
    return 1
  return min(MAX_LOOP, math.ceil(SAMPLE_SECONDS / max(once, 1e-7)))


def median_time(fn: Callable[..., Any], args: Sequence[Any], *, repeats: int,
                warmup: bool = True) -> float:
  """Median seconds per call of ``fn(*args)`` (jitted or compiled).

  Compiles (the first call), warms up once, then takes ``repeats`` samples
  with ``block_until_ready`` on all outputs.
  """
  if warmup:
    _block(fn(*args))
  loop = _loop_count(fn, args) if warmup else 1
  return statistics.median(_sample(fn, args, loop) for _ in range(repeats))


def compare_times(fn: Callable[..., Any], args: Sequence[Any],
                  ref: Callable[..., Any], ref_args: Sequence[Any], *,
                  repeats: int, warmup: bool = True,
                  fn_warm: bool = False) -> tuple[float, float]:
  """Median seconds per call of ``fn`` and ``ref``, sampled alternately.

  ``warmup=False`` is for executables compiled ahead of time whose calls are
  too slow to repeat: no warm-up call and one call per sample.
  ``fn_warm=True``: ``fn(*args)`` has already been called once (compiled).
  """
  if warmup:
    if not fn_warm:
      _block(fn(*args))
    _block(ref(*ref_args))
    loop_a, loop_b = _loop_count(fn, args), _loop_count(ref, ref_args)
  else:
    loop_a = loop_b = 1
  times_a, times_b = _alternately(lambda: _sample(fn, args, loop_a),
                                  lambda: _sample(ref, ref_args, loop_b),
                                  repeats)
  return statistics.median(times_a), statistics.median(times_b)


def _alternately(sample_a: Callable[[], Any], sample_b: Callable[[], Any],
                 repeats: int) -> tuple[list[Any], list[Any]]:
  """``repeats`` samples of each side, alternating which side goes first.

  No side always follows the other, so a slow stretch of a shared machine
  falls on both.
  """
  a, b = [], []
  for i in range(repeats):
    if i % 2:
      b.append(sample_b())
      a.append(sample_a())
    else:
      a.append(sample_a())
      b.append(sample_b())
  return a, b


def compile_fn(fn: Callable[..., Any], args: Sequence[Any]) -> Any:
  """``jax.jit(fn).lower(*args).compile()``: an executable, no warm-up."""
  import jax  # pylint: disable=g-import-not-at-top
  jitted: Any = fn if hasattr(fn, 'lower') else jax.jit(fn)
  return jitted.lower(*args).compile()


def temp_bytes(compiled: Any) -> int | None:
  """XLA's temporary buffer size of a compiled executable, or ``None``."""
  try:
    stats = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if stats is None:
    return None
  value = getattr(stats, 'temp_size_in_bytes', None)
  if value is None and isinstance(stats, dict):
    value = stats.get('temp_size_in_bytes')
  return None if value is None else int(value)


# --------------------------------------------------------------------------
# Inputs


def _leaf_inputs(d: int, n: int, seed: int = 0):
  """A ``(D, N)`` kernel (N neurons of D features), N(0, 1/D), and a grad."""
  import jax  # pylint: disable=g-import-not-at-top
  kw, kg = jax.random.split(jax.random.key(seed))
  w = jax.random.normal(kw, (d, n)) / math.sqrt(d)
  g = jax.random.normal(kg, (d, n))
  return w, g


def _update_fn(tx) -> Callable[..., Any]:
  import jax  # pylint: disable=g-import-not-at-top
  return jax.jit(tx.update)


def _soft_args(w, g, **kwargs):
  import kinetix  # pylint: disable=g-import-not-at-top
  tx = kinetix.soft_collision(0.1, **kwargs)
  params, grads = {'w': w}, {'w': g}
  return _update_fn(tx), (grads, tx.init(params), params)


def _matmul_reference(w, g):
  """The soft collision's three products on a ``(D, N)`` leaf, nothing else.

  ``C = (WᵀW) ⊙ (GᵀG)`` (two ``N×N×D`` Grams), then ``G·C`` (the third,
  ``= (C·G_neurons)ᵀ``); default precision, the float32 of the inputs.
  """
  return g @ ((w.T @ w) * (g.T @ g))


def _blocked_matmul_reference(w, g, block: int):
  """:func:`_matmul_reference` in row blocks of ``block`` neurons."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  d, n = w.shape
  nb = -(-n // block)
  wt = jnp.pad(w.T, ((0, nb * block - n), (0, 0)))
  gt = jnp.pad(g.T, ((0, nb * block - n), (0, 0)))

  def one(i):
    wb = jax.lax.dynamic_slice_in_dim(wt, i * block, block)
    gb = jax.lax.dynamic_slice_in_dim(gt, i * block, block)
    return ((wb @ w) * (gb @ g)) @ g.T

  out = jax.lax.map(one, jnp.arange(nb))
  return out.reshape(nb * block, d)[:n].T


# --------------------------------------------------------------------------
# Rows


def _row(kind: str, case: str, *, time_s: float, reference: str,
         reference_time_s: float, target_ratio: float | None = None,
         temp: int | None = None, memory_limit: int | None = None,
         repeats: int, note: str = '', **extra: Any) -> dict[str, Any]:
  """One result row; ``holds`` is ``None`` when there is no target to hold."""
  ratio = time_s / reference_time_s
  checks: list[bool | None] = []
  target = []
  if target_ratio is not None:
    checks.append(ratio <= target_ratio)
    target.append(f'≤ {target_ratio:g}×')
  if memory_limit is not None:
    checks.append(None if temp is None else temp < memory_limit)
    target.append(f'temp < {memory_limit / GIB:g} GiB')
  holds = None
  if checks and None not in checks:
    holds = all(checks)
  return {
      'kind': kind,
      'case': case,
      'time_s': time_s,
      'reference': reference,
      'reference_time_s': reference_time_s,
      'ratio': ratio,
      'target': ' and '.join(target) or None,
      'target_ratio': target_ratio,
      'temp_bytes': temp,
      'memory_limit_bytes': memory_limit,
      'holds': holds,
      'repeats': repeats,
      'note': note,
      **extra,
  }


def _error_row(kind: str, label: str, error: Exception) -> dict[str, Any]:
  """The row of a case that raised: no numbers, ``holds`` is ``False``."""
  message = f'{type(error).__name__}: {error}'.splitlines()[0][:300]
  return {
      'kind': kind, 'case': label, 'time_s': None, 'reference': None,
      'reference_time_s': None, 'ratio': None, 'target': 'runs',
      'target_ratio': None, 'temp_bytes': None, 'memory_limit_bytes': None,
      'holds': False, 'repeats': 0, 'note': f'FAILED: {message}',
      'error': message,
  }


def bench_soft_vs_matmuls(n: int, repeats: int) -> dict[str, Any]:
  """Row 1: soft collision vs its three ``N×N×D`` products, ``N = D = n``.

  The target (``SOFT_TARGET``) is the performance contract's, for
  ``N = D`` in ``SOFT_TARGET_SIZES``; other sizes are informational (at
  small N the O(N·D) passes weigh more against the products).
  """
  import jax  # pylint: disable=g-import-not-at-top
  w, g = _leaf_inputs(n, n)
  soft, soft_args = _soft_args(w, g)
  ref = jax.jit(_matmul_reference)
  t, t_ref = compare_times(soft, soft_args, ref, (w, g), repeats=repeats)
  contract = n in SOFT_TARGET_SIZES
  return _row('soft_vs_matmuls', f'soft collision, N=D={n}', time_s=t,
              reference='3 matmuls (WᵀW, GᵀG, G·C)', reference_time_s=t_ref,
              target_ratio=SOFT_TARGET if contract else None,
              repeats=repeats, n=n, d=n,
              note='' if contract else 'informational, no target')


def _hard_inputs(n: int, planted_pairs: int):
  """Kernel and gradient with ``planted_pairs`` pairs that collide at c=0.1.

  Weights are N(0, 1/D), gradients N(0, 1). In the first ``planted_pairs``
  pairs of neurons the second neuron copies the first's weights and takes the
  opposite gradient, so these pairs have the largest ``|g_i − g_j|`` (twice
  ``|g_i|``, vs about ``√2·|g_i|`` for the others) at zero distance: for
  ``c = 0.1`` those of them within 10% of the largest pass the ``> 1 − c``
  test and no other pair does.
  """
  w, g = _leaf_inputs(n, n, seed=1)
  k = 2 * planted_pairs
  w = w.at[:, 1:k:2].set(w[:, 0:k:2])
  g = g.at[:, 1:k:2].set(-g[:, 0:k:2])
  return w, g


def bench_hard_vs_soft(n: int, repeats: int, *, accepted: str,
                       memory: bool = False, note: str = '') -> dict[str, Any]:
  """Row 2: hard collision (all pairs) vs soft collision on one leaf.

  ``accepted="few"``: ``coll_coef=0.1`` with 8 planted colliding pairs.
  ``accepted="all"``: ``coll_coef=1.0``, so every pair with ``g_i ≠ g_j``
  passes: ``N²/2·D`` random directions, collided in chunks of ``max_pairs``
  (target: at most ``HARD_ALL_TARGET`` times the soft collision).
  """
  import kinetix  # pylint: disable=g-import-not-at-top
  coef = 0.1 if accepted == 'few' else 1.0
  w, g = _hard_inputs(n, planted_pairs=8 if accepted == 'few' else 0)
  params, grads = {'w': w}, {'w': g}
  tx = kinetix.hard_collision(coef, key=0)
  state = tx.init(params)
  hard = _update_fn(tx)
  temp = None
  if memory:
    temp = temp_bytes(compile_fn(hard, (grads, state, params)))
  _, new_state = _block(hard(grads, state, params))   # also the warm-up
  pairs = int(new_state.accepted_pairs)
  fraction = float(new_state.accepted_fraction)
  soft, soft_args = _soft_args(w, g)
  t, t_ref = compare_times(hard, (grads, state, params), soft, soft_args,
                           repeats=repeats, fn_warm=True)
  label = ('few accepted' if accepted == 'few' else 'all accepted')
  return _row('hard_vs_soft',
              f"hard collision ('all', {label}: {pairs} pairs, "
              f'fraction {fraction:.3g}), N=D={n}', note=note,
              time_s=t, reference='soft collision', reference_time_s=t_ref,
              target_ratio=HARD_ALL_TARGET if accepted == 'all' else None,
              temp=temp, memory_limit=MEMORY_LIMIT if memory else None,
              repeats=repeats, n=n, d=n, coll_coef=coef, accepted=accepted,
              accepted_pairs=pairs, accepted_fraction=fraction)


def bench_hard_vs_rng_floor(n: int, repeats: int) -> dict[str, Any]:
  """Row 2b: hard collision with every pair accepted vs its RNG floor.

  The floor draws what the collision must draw and nothing else: one
  Gaussian direction in ``D`` dimensions per pair, from the pair's
  counter-based key, in chunks of the same ``max_pairs`` (summed so that
  nothing is materialised beyond a chunk).
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import kinetix  # pylint: disable=g-import-not-at-top
  from kinetix import _neurons  # pylint: disable=g-import-not-at-top
  w, g = _hard_inputs(n, planted_pairs=0)
  params, grads = {'w': w}, {'w': g}
  capacity = max(64, 4 * n)              # hard_collision's default
  tx = kinetix.hard_collision(1.0, key=0, max_pairs=capacity)
  state = tx.init(params)
  hard = _update_fn(tx)
  _, new_state = _block(hard(grads, state, params))
  pairs = int(new_state.accepted_pairs)
  i, j = jnp.triu_indices(n, 1)
  chunks = -(-i.shape[0] // capacity)
  pad = chunks * capacity - i.shape[0]
  i = jnp.pad(i.astype(jnp.int32), (0, pad))
  j = jnp.pad(j.astype(jnp.int32), (0, pad))

  @jax.jit
  def floor(key, i, j):
    def chunk(c, acc):
      ii = jax.lax.dynamic_slice(i, (c * capacity,), (capacity,))
      jj = jax.lax.dynamic_slice(j, (c * capacity,), (capacity,))
      keys = _neurons.pair_keys(key, ii, jj)
      return acc + _neurons.unit_directions(keys, n, jnp.float32).sum(0)
    return jax.lax.fori_loop(0, chunks, chunk, jnp.zeros(n, jnp.float32))

  t, t_ref = compare_times(hard, (grads, state, params), floor,
                           (jax.random.key(0), i, j), repeats=repeats,
                           fn_warm=True)
  return _row('hard_vs_rng_floor',
              f'hard collision (all {pairs} pairs accepted), N=D={n}',
              time_s=t, reference=f'drawing the {i.shape[0] - pad} pair '
              'directions alone', reference_time_s=t_ref,
              target_ratio=HARD_FLOOR_TARGET, repeats=repeats, n=n, d=n,
              accepted_pairs=pairs)


def _coef_for_pairs(w, g, pairs: int, distance_scale: float = 1.0) -> float:
  """A ``coll_coef`` that accepts about ``pairs`` pairs of the ``(D, N)`` leaf.

  The acceptance score of Eq. 7 computed in float64 NumPy; the coefficient
  sits halfway between the ``pairs``-th and the next-best score.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  wn = np.asarray(w, np.float64).T
  gn = np.asarray(g, np.float64).T

  def dist(x):
    sq = np.sum(x * x, axis=1)
    return np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0))

  g_r, w_r = dist(gn), dist(wn)
  score = g_r * np.exp(-distance_scale * w_r) / g_r.max()
  upper = np.sort(score[np.triu_indices(len(score), 1)])[::-1]
  threshold = 0.5 * (upper[pairs - 1] + upper[pairs])
  return float(1.0 - threshold)


def bench_capacity_cliff(n: int, pairs: int, max_pairs: int,
                         repeats: int) -> dict[str, Any]:
  """Row 3: ``pairs`` accepted, ``max_pairs`` < ``pairs`` vs ≥ ``pairs``.

  Several chunks of accepted pairs against one chunk, same call otherwise.
  """
  import kinetix  # pylint: disable=g-import-not-at-top
  w, g = _leaf_inputs(n, n, seed=2)
  coef = _coef_for_pairs(w, g, pairs)
  params, grads = {'w': w}, {'w': g}
  small = kinetix.hard_collision(coef, key=0, max_pairs=max_pairs)
  large = kinetix.hard_collision(coef, key=0, max_pairs=2 * pairs)
  args_s = (grads, small.init(params), params)
  args_l = (grads, large.init(params), params)
  fn_s, fn_l = _update_fn(small), _update_fn(large)
  _, st = _block(fn_s(*args_s))
  accepted = int(st.accepted_pairs)
  t, t_ref = compare_times(fn_s, args_s, fn_l, args_l, repeats=repeats,
                           fn_warm=True)
  return _row('capacity_cliff',
              f"hard collision ('all'), {accepted} pairs accepted, "
              f'max_pairs={max_pairs}, N=D={n}', time_s=t,
              reference=f'same with max_pairs={2 * pairs}',
              reference_time_s=t_ref, target_ratio=CLIFF_TARGET,
              repeats=repeats, n=n, d=n, accepted_pairs=accepted,
              max_pairs=max_pairs)


def bench_disjoint(n: int, repeats: int, *, reference: str,
                   neuron_axis: int = -1) -> dict[str, Any]:
  """Row 4: disjoint pairing vs its Gaussian floor (or vs an AdamW update).

  ``coll_coef=1.0``: every matched pair with ``g_a ≠ g_b`` collides, so all
  ``N/2`` directions are needed (with no pair accepted nothing is drawn).
  ``reference="normal"``: ``jax.random.normal`` of the ``N/2 × D``
  directions (the target's floor); ``"fused_normal"``: the same numbers,
  bit for bit, hashed in one fusion as kinetix draws them
  (``kinetix._rng.normal``; informational); ``"adamw"``: an AdamW update of
  the leaf, for scale. ``neuron_axis=0`` stores the same kernel transposed,
  ``(N, D)`` (informational, no target).
  """
  import jax  # pylint: disable=g-import-not-at-top
  import kinetix  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from kinetix import _rng  # pylint: disable=g-import-not-at-top
  w, g = _leaf_inputs(n, n)
  if neuron_axis == 0:
    w, g = w.T.copy(), g.T.copy()
  params, grads = {'w': w}, {'w': g}
  tx = kinetix.hard_collision(1.0, key=0, pairing='disjoint',
                              neuron_axis=neuron_axis)
  disjoint = _update_fn(tx)
  args = (grads, tx.init(params), params)
  _, new_state = _block(disjoint(*args))        # also the warm-up
  pairs = int(new_state.accepted_pairs)
  target = None
  if reference == 'normal':
    ref = jax.jit(lambda k: jax.random.normal(k, (n // 2, n)))
    ref_args = (jax.random.key(3),)
    label = f'jax.random.normal ({n // 2}, {n})'
    target = DISJOINT_TARGET if neuron_axis == -1 else None
  elif reference == 'fused_normal':
    ref = jax.jit(lambda k: _rng.normal(k, (n // 2, n)))
    ref_args = (jax.random.key(3),)
    label = f'the same normals, fused hash ({n // 2}, {n})'
  elif reference == 'adamw':
    adamw = optax.adamw(1e-3)
    ref = _update_fn(adamw)
    ref_args = (grads, adamw.init(params), params)
    label = 'optax.adamw(1e-3) update'
  else:
    raise ValueError(f'reference must be "normal", "fused_normal" or '
                     f'"adamw"; got {reference!r}')
  t, t_ref = compare_times(disjoint, args, ref, ref_args, repeats=repeats,
                           fn_warm=True)
  notes = [f'{pairs} of {n // 2} pairs accepted']
  if neuron_axis == 0:
    notes.append('(N, D) leaf, neuron_axis=0')
  if target is None:
    notes.append('informational, no target')
  return _row('disjoint_vs_floor', f"hard collision ('disjoint'), N=D={n}",
              time_s=t, reference=label, reference_time_s=t_ref,
              target_ratio=target, repeats=repeats, n=n, d=n,
              neuron_axis=neuron_axis, accepted_pairs=pairs,
              note='; '.join(notes))


def bench_blocked_lm_head(d: int, n: int, block: int, *,
                          repeats: int) -> dict[str, Any]:
  """Row 5: blocked soft collision on a ``(D, N)`` lm_head kernel.

  Both sides are compiled ahead of time (``lower().compile()``; the memory
  comes from those executables) and each call is timed without a separate
  warm-up: one call lasts tens of seconds on a CPU.
  """
  import functools  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  w, g = _leaf_inputs(d, n)
  soft, soft_args = _soft_args(w, g, block_size=block)
  soft_c = compile_fn(soft, soft_args)
  ref_c = compile_fn(
      jax.jit(functools.partial(_blocked_matmul_reference, block=block)),
      (w, g))
  temp = temp_bytes(soft_c)
  t, t_ref = compare_times(soft_c, soft_args, ref_c, (w, g), repeats=repeats,
                           warmup=False)
  return _row('blocked_lm_head',
              f'blocked soft collision, lm_head ({d}, {n}), block_size={block}',
              time_s=t, reference=f'3 matmuls in blocks of {block}',
              reference_time_s=t_ref, temp=temp, memory_limit=MEMORY_LIMIT,
              repeats=repeats, n=n, d=d, block_size=block,
              reference_temp_bytes=temp_bytes(ref_c),
              note='AOT-compiled, no warm-up call')


def _mlp(sizes: Sequence[int], seed: int = 0):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  keys = jax.random.split(jax.random.key(seed), len(sizes) - 1)
  params = {}
  layers = zip(keys, sizes[:-1], sizes[1:], strict=True)
  for i, (k, fan_in, fan_out) in enumerate(layers):
    params[f'dense_{i}'] = {
        'kernel': jax.random.normal(k, (fan_in, fan_out)) / math.sqrt(fan_in),
        'bias': jnp.zeros((fan_out,)),
    }
  return params


def _train_step(tx, n_layers: int):
  import jax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top

  def loss_fn(params, x, y):
    h = x
    for i in range(n_layers):
      layer = params[f'dense_{i}']
      h = h @ layer['kernel'] + layer['bias']
      if i < n_layers - 1:
        h = jax.nn.relu(h)
    return optax.softmax_cross_entropy_with_integer_labels(h, y).mean()

  def step(params, opt_state, x, y):
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return jax.jit(step)


def bench_train_step(sizes: Sequence[int], batch: int,
                     repeats: int) -> dict[str, Any]:
  """Row 6: MLP train step, AdamW + soft collision on the head vs AdamW."""
  import jax  # pylint: disable=g-import-not-at-top
  import kinetix  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  params = _mlp(sizes)
  n_layers = len(sizes) - 1
  head = f'dense_{n_layers - 1}'
  mask = {name: {'kernel': name == head, 'bias': False} for name in params}
  kx, ky = jax.random.split(jax.random.key(7))
  x = jax.random.normal(kx, (batch, sizes[0]))
  y = jax.random.randint(ky, (batch,), 0, sizes[-1])
  ko = optax.chain(kinetix.soft_collision(0.1, mask=mask), optax.adamw(1e-3))
  base = optax.adamw(1e-3)
  ko_args = (params, ko.init(params), x, y)
  base_args = (params, base.init(params), x, y)
  t, t_ref = compare_times(_train_step(ko, n_layers), ko_args,
                           _train_step(base, n_layers), base_args,
                           repeats=repeats)
  arch = '-'.join(str(s) for s in sizes)
  return _row('train_step',
              f'MLP {arch} train step, batch {batch}, AdamW + soft on head',
              time_s=t, reference='same step, plain AdamW',
              reference_time_s=t_ref, target_ratio=1.02, repeats=repeats,
              sizes=list(sizes), batch=batch)


def bench_soft_vs_muon(n: int, repeats: int) -> dict[str, Any]:
  """Row 7: soft collision vs ``optax.contrib.muon`` on one ``n×n`` matrix."""
  import optax  # pylint: disable=g-import-not-at-top
  w, g = _leaf_inputs(n, n)
  soft, soft_args = _soft_args(w, g)
  muon = optax.contrib.muon(learning_rate=1e-3)
  params, grads = {'w': w}, {'w': g}
  t, t_ref = compare_times(soft, soft_args, _update_fn(muon),
                           (grads, muon.init(params), params), repeats=repeats)
  return _row('soft_vs_muon', f'soft collision, N=D={n}', time_s=t,
              reference='optax.contrib.muon(1e-3) update',
              reference_time_s=t_ref, target_ratio=0.5, repeats=repeats,
              n=n, d=n, note='muon: optax defaults (5 Newton-Schulz steps)')


def gpt2_params(blocks: int, width: int = 768, vocab: int = 50257,
                context: int = 1024) -> Any:
  """A GPT-2-shaped param tree of shape-dtype structs (unstacked blocks).

  As Flax builds it: ``(in, out)`` kernels, ``blocks/<i>/attn/qkv`` of
  width ``3·width``, ``blocks/<i>/mlp/fc`` of ``4·width``; the token
  embedding is the (tied) head.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  def sd(*shape):
    return jax.ShapeDtypeStruct(shape, jnp.float32)

  def norm():
    return {'scale': sd(width), 'bias': sd(width)}

  def dense(fan_in, fan_out):
    return {'kernel': sd(fan_in, fan_out), 'bias': sd(fan_out)}

  return {
      'wte': {'embedding': sd(vocab, width)},
      'wpe': {'embedding': sd(context, width)},
      'blocks': {str(i): {
          'ln_1': norm(),
          'attn': {'qkv': dense(width, 3 * width),
                   'proj': dense(width, width)},
          'ln_2': norm(),
          'mlp': {'fc': dense(width, 4 * width),
                  'proj': dense(4 * width, width)}} for i in range(blocks)},
      'ln_f': norm(),
  }


BLOCK_KERNELS = 'blocks/*/*/*/kernel'


def _collision(name: str, mask: Any) -> Any:
  """Collision ``name`` of the model rows, on the leaves ``mask`` selects."""
  import kinetix  # pylint: disable=g-import-not-at-top
  return {
      'soft': lambda: kinetix.soft_collision(0.1, mask=mask),
      'hard': lambda: kinetix.hard_collision(0.1, mask=mask),
      'disjoint': lambda: kinetix.hard_collision(0.1, mask=mask,
                                                 pairing='disjoint'),
  }[name]()


def model_optimizer(name: str, pattern: str = BLOCK_KERNELS, *,
                    chained: bool = True) -> Any:
  """The update benchmarked on a whole model: a collision then AdamW.

  The collision acts on the leaves ``pattern`` selects (every block kernel
  by default); ``chained=False``: the collision alone.
  """
  import kinetix  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  if name == 'adamw':
    return optax.adamw(1e-3)
  if name == 'muon':
    return optax.contrib.muon(1e-3)
  if name in LOSS_OPTIMIZERS:
    return getattr(kinetix, name)(1e-3)
  collision = _collision(name, kinetix.masks.by_path(pattern))
  return optax.chain(collision, optax.adamw(1e-3)) if chained else collision


def compile_time(tx: Any, params: Any, repeats: int, *,
                 value: bool = False) -> tuple[float, Any]:
  """Best of ``repeats`` trace + lower + compile times of ``tx.update``.

  Each repeat starts from cleared JAX caches (``jax.clear_caches()``) and
  jits a new function, so nothing JAX traced before serves a repeat, as
  after a restart (``tx``'s own caches may: :func:`compare_compile_times`
  builds a new transformation per sample). ``value``: the update takes the
  loss (``value=``, traced). Returns ``(seconds, executable)``.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  state = jax.eval_shape(tx.init, params)
  loss = jax.ShapeDtypeStruct((), jnp.float32)
  best, compiled = math.inf, None
  for _ in range(repeats):
    jax.clear_caches()
    # A new function each time: jit's cache must not serve a repeat.
    if value:
      fn = jax.jit(lambda u, s, p, v: tx.update(u, s, p, value=v))
      args = (params, state, params, loss)
    else:
      fn = jax.jit(lambda u, s, p: tx.update(u, s, p))  # noqa: PLW0108
      args = (params, state, params)
    start = time.perf_counter()
    compiled = fn.lower(*args).compile()
    best = min(best, time.perf_counter() - start)
  return best, compiled


def compare_compile_times(make_tx: Callable[[], Any], params: Any,
                          ref_params: Any, *, repeats: int,
                          value: bool = False) -> tuple[float, float, Any]:
  """Median compile times of ``make_tx().update`` on two param trees.

  Trace + lower + compile, sampled alternately (as :func:`compare_times`
  samples run times), each sample with a new transformation from
  ``make_tx`` and a new jitted function, so that nothing traced or compiled
  for one sample serves another: what a restart compiles. Returns
  ``(seconds on params, seconds on ref_params, executable on params)``.
  """
  a, b = _alternately(
      lambda: compile_time(make_tx(), params, 1, value=value),
      lambda: compile_time(make_tx(), ref_params, 1, value=value)[0],
      repeats)
  return (statistics.median(t for t, _ in a), statistics.median(b),
          a[-1][1])


MODEL_LABELS = {'soft': 'soft collision + adamw',
                'hard': "hard collision ('all') + adamw",
                'disjoint': "hard collision ('disjoint') + adamw",
                'adamw': 'optax.adamw alone', 'muon': 'optax.contrib.muon',
                'bbi': 'kinetix.bbi', 'ecdsep': 'kinetix.ecdsep'}
LOSS_OPTIMIZERS = ('bbi', 'ecdsep')   # on every leaf, with value=loss


def bench_model_compile(name: str, blocks: int, width: int, vocab: int, *,
                        repeats: int, pattern: str = BLOCK_KERNELS,
                        chained: bool = True) -> dict[str, Any]:
  """Row 8: compile time of the update on ``blocks`` blocks vs on 1.

  A collision is followed by AdamW, as trained (the target's row);
  ``chained=False`` times the collision alone (informational): its own
  growth, apart from AdamW's. BBI and ECDSep (informational) act on every
  leaf and take ``value=``.
  """
  tn, t1, compiled = compare_compile_times(
      lambda: model_optimizer(name, pattern, chained=chained),
      gpt2_params(blocks, width, vocab), gpt2_params(1, width, vocab),
      repeats=repeats, value=name in LOSS_OPTIMIZERS)
  collision = name in ('soft', 'hard', 'disjoint')
  label = MODEL_LABELS[name] if chained else MODEL_LABELS[name].split(
      ' + ')[0] + ' alone'
  where = (f'collision on the {4 * blocks} block kernels'
           if pattern == BLOCK_KERNELS else f'collision on {pattern}')
  if collision:
    note = where if chained else f'{where}, no AdamW (informational, no target)'
  elif name in LOSS_OPTIMIZERS:
    note = 'on every leaf, value=loss (informational, no target)'
  else:
    note = 'reference, no target'
  return _row('model_compile',
              f'{label}, GPT-2 tree width {width}: compile, '
              f'{blocks} blocks', time_s=tn,
              reference='same, 1 block', reference_time_s=t1,
              target_ratio=(MODEL_COMPILE_TARGET if collision and chained
                            else None),
              temp=temp_bytes(compiled), repeats=repeats, optimizer=name,
              blocks=blocks, width=width, vocab=vocab, chained=chained,
              note=note)


def bench_model_update(name: str, blocks: int, width: int, *, repeats: int,
                       pattern: str = BLOCK_KERNELS,
                       chained: bool = False) -> dict[str, Any]:
  """Row 9: run time of a collision's update on a GPT-2 tree's blocks.

  The engine collides the leaves of one layout as one group (one loop);
  the reference runs the same collision as one transformation per leaf, so
  that no leaf shares a group: what grouping costs at run time. Both give
  the same updates (a leaf's keys come from its path). ``chained``: both
  followed by AdamW, as trained (informational, no target): the group's
  results are then read by AdamW's kernels instead of copied out.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import kinetix  # pylint: disable=g-import-not-at-top
  from kinetix import _utils  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  shapes = {'blocks': gpt2_params(blocks, width, vocab=1)['blocks']}
  leaves, treedef = _utils.leaves_with_paths(shapes)
  keys = jax.random.split(jax.random.key(0), len(leaves))
  params = treedef.unflatten(
      [0.02 * jax.random.normal(k, x.shape, x.dtype)
       for k, (_, x) in zip(keys, leaves, strict=True)])
  grads = jax.tree.map(lambda x: x + 0.01 * jnp.cos(100.0 * x), params)
  flags = jax.tree.leaves(kinetix.masks.by_path(pattern)(shapes))
  selected = [p for (p, _), on in zip(leaves, flags, strict=True) if on]
  grouped = _collision(name, kinetix.masks.by_path(pattern))
  alone = optax.chain(*[_collision(name, kinetix.masks.by_path(p))
                        for p in selected])
  if chained:
    grouped = optax.chain(grouped, optax.adamw(1e-3))
    alone = optax.chain(alone, optax.adamw(1e-3))
  t, t_ref = compare_times(
      _update_fn(grouped), (grads, grouped.init(params), params),
      _update_fn(alone), (grads, alone.init(params), params),
      repeats=repeats)
  label = MODEL_LABELS[name] if chained else MODEL_LABELS[name].split(
      ' + ')[0]
  return _row('model_update',
              f'{label}, GPT-2 blocks width {width}: update, {blocks} blocks',
              time_s=t, reference='the same, each leaf its own transformation',
              reference_time_s=t_ref,
              target_ratio=None if chained else MODEL_UPDATE_TARGET,
              repeats=repeats, optimizer=name, blocks=blocks, width=width,
              chained=chained,
              note=(f'collision on {len(selected)} kernels, then AdamW '
                    '(informational, no target)' if chained else
                    f'collision alone on {len(selected)} kernels'))


# The collisions measured on vocabulary heads: name -> keyword arguments.
VOCAB_HEADS: dict[str, dict[str, Any]] = {
    'hard': {}, 'soft_blocked': {'block_size': 1024},
    'disjoint': {'pairing': 'disjoint'}}


def bench_vocab_head(name: str, d: int, n: int, *,
                     limit_gib: float) -> dict[str, Any]:
  """Row 10: the compiled update's temp memory on a ``(D, N)`` head."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import kinetix  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  kwargs = VOCAB_HEADS[name]
  tx = (kinetix.soft_collision(0.1, **kwargs) if name.startswith('soft')
        else kinetix.hard_collision(0.1, **kwargs))
  params = {'head': jax.ShapeDtypeStruct((d, n), jnp.float32)}
  t, compiled = compile_time(tx, params, 1)
  t_ref, _ = compile_time(optax.adamw(1e-3), params, 1)
  label = {'hard': "hard collision ('all')",
           'soft_blocked': 'soft collision, block_size='
                           f"{kwargs.get('block_size')}",
           'disjoint': "hard collision ('disjoint')"}[name]
  return _row('vocab_head_memory', f'{label}, head ({d}, {n}): compile',
              time_s=t, reference='optax.adamw, compile',
              reference_time_s=t_ref,
              temp=temp_bytes(compiled),
              memory_limit=int(limit_gib * GIB), repeats=1, optimizer=name,
              n=n, d=d, note='compile only; leaf weights and gradients '
              f'{2 * 4 * d * n / GIB:.2f} GiB')


# --------------------------------------------------------------------------
# The whole benchmark


def _log(message: str, quiet: bool) -> None:
  if not quiet:
    print(f'[bench] {message}', file=sys.stderr, flush=True)


def run_benchmarks(quick: bool, repeats: int, *,
                   quiet: bool = True) -> list[dict[str, Any]]:
  """All rows; ``quick`` uses tiny sizes (a smoke test, not real numbers)."""
  big = max(1, min(repeats, 3))         # fewer repeats for the slow cases
  if quick:
    soft_sizes, hard_sizes, full_n, mem_n = (64, 128), (64, 128), 64, 128
    cliff = (64, 200, 100)
    disjoint_sizes, muon_n = (128,), 128
    lm_head, lm_block, lm_repeats = (64, 5000), 512, 1
    mlp, batch = (16, 64, 64, 10), 32
    model = (2, 16, 100)                 # blocks, width, vocab
    model_pattern = 'blocks/*/mlp/fc/kernel'   # one layout: compiles fast
    alone = ('soft',)                    # collisions timed without AdamW
    heads = ((16, 3000, 2),)
  else:
    soft_sizes, hard_sizes, full_n, mem_n = ((256, 1024, 2048),
                                             (256, 1024, 2048), 512, 2048)
    cliff = (512, 2048, 1024)
    disjoint_sizes, muon_n = (1024, 2048), 1024
    lm_head, lm_block, lm_repeats = (768, 50257), 1024, 1
    mlp, batch = (64, 512, 512, 10), 256
    model = (12, 768, 50257)
    model_pattern = BLOCK_KERNELS
    alone = ('soft', 'hard', 'disjoint')
    heads = ((768, 50257, 2), (896, 151936, 4))

  cases: list[tuple[tuple[str, str], Callable[[], dict[str, Any]]]] = []

  def add(kind: str, label: str, case: Callable[[], dict[str, Any]]) -> None:
    cases.append(((label, kind), case))

  for n in soft_sizes:
    add('soft_vs_matmuls', f'soft vs matmuls N={n}',
        lambda n=n: bench_soft_vs_matmuls(n, repeats if n < 2048 else big))
  for n in hard_sizes:
    add('hard_vs_soft', f'hard (few accepted) N={n}',
        lambda n=n: bench_hard_vs_soft(n, repeats if n < 2048 else big,
                                       accepted='few', memory=n == mem_n))
  add('hard_vs_soft', f'hard (all accepted) N={full_n}',
      lambda: bench_hard_vs_soft(full_n, big, accepted='all'))
  add('hard_vs_rng_floor', f'hard (all accepted) vs RNG floor N={full_n}',
      lambda: bench_hard_vs_rng_floor(full_n, big))
  add('capacity_cliff', f'capacity cliff N={cliff[0]}',
      lambda: bench_capacity_cliff(*cliff, repeats=big))
  for n in disjoint_sizes:
    for ref, axis in (('normal', -1), ('fused_normal', -1), ('adamw', -1),
                      ('normal', 0)):
      add('disjoint_vs_floor', f'disjoint vs {ref} N={n} neuron_axis={axis}',
          lambda n=n, ref=ref, axis=axis: bench_disjoint(
              n, repeats, reference=ref, neuron_axis=axis))
  add('train_step', 'train step',
      lambda: bench_train_step(mlp, batch, max(repeats, 15)))
  add('soft_vs_muon', f'soft vs muon N={muon_n}',
      lambda: bench_soft_vs_muon(muon_n, repeats))
  add('blocked_lm_head', f'blocked lm_head {lm_head}',
      lambda: bench_blocked_lm_head(*lm_head, lm_block, repeats=lm_repeats))

  reps = 1 if quick else MODEL_COMPILE_REPEATS
  # Each collision followed by AdamW (the target's rows), the Optax
  # references, and each collision's own growth without AdamW's
  # (informational; soft only in the quick run).
  # BBI and ECDSep on every leaf (informational; 3 samples: the 12-block
  # tree compiles for about 10 s).
  compile_cases = ([(name, True, reps) for name in
                    ('soft', 'hard', 'disjoint', 'adamw', 'muon')]
                   + [(name, False, reps) for name in alone]
                   + [(name, True, min(reps, 3)) for name in LOSS_OPTIMIZERS])
  for name, chained, n in compile_cases:
    add('model_compile',
        f'model compile {name}' + ('' if chained else ' alone'),
        lambda name=name, chained=chained, n=n: bench_model_compile(
            name, *model, repeats=n, pattern=model_pattern,
            chained=chained))
  # The quick run skips the all-pairs row: its per-leaf reference is the
  # slowest to compile, and the row's code is the same for every collision.
  # Disjoint pairing's update takes well under a second: the full repeats.
  # The others take 5-10 s a call (the per-leaf reference of 'all' longer).
  for name in ('soft', 'disjoint') if quick else ('soft', 'hard', 'disjoint'):
    add('model_update', f'model update {name}',
        lambda name=name: bench_model_update(
            name, model[0], model[1],
            repeats=repeats if name == 'disjoint' else reps,
            pattern=model_pattern))
  # Disjoint pairing, whose grouping costs the most, as it is trained.
  add('model_update', 'model update disjoint + adamw',
      lambda: bench_model_update('disjoint', model[0], model[1],
                                 repeats=repeats, pattern=model_pattern,
                                 chained=True))
  for name in VOCAB_HEADS:
    for d, n, limit in heads:
      add('vocab_head_memory', f'vocab head {name} ({d}, {n})',
          lambda name=name, d=d, n=n, limit=limit: bench_vocab_head(
              name, d, n, limit_gib=limit))

  rows = []
  for (label, kind), case in cases:
    _log(f'{label} ...', quiet)
    start = time.perf_counter()
    try:
      rows.append(case())
    except Exception as e:  # pylint: disable=broad-except
      # One broken case must not hide the others: record it as a failed row.
      _log(f'{label}: FAILED: {type(e).__name__}: {e}', quiet)
      rows.append(_error_row(kind, label, e))
    _log(f'{label}: {time.perf_counter() - start:.1f} s', quiet)
  order = {kind: i for i, kind in enumerate(KINDS)}
  rows.sort(key=lambda r: order[r['kind']])    # stable: keeps sizes in order
  return rows


# --------------------------------------------------------------------------
# Output


def _fmt_time(seconds: float) -> str:
  if seconds >= 1.0:
    return f'{seconds:.2f} s'
  if seconds >= 1e-3:
    return f'{seconds * 1e3:.2f} ms'
  return f'{seconds * 1e6:.1f} µs'


def _fmt_bytes(value: int | None) -> str:
  if value is None:
    return '—'
  if value >= GIB:
    return f'{value / GIB:.2f} GiB'
  return f'{value / (1 << 20):.1f} MiB'


def device_name() -> str:
  """The first JAX device, in words (CPU numbers are labelled as such)."""
  import jax  # pylint: disable=g-import-not-at-top
  dev = jax.devices()[0]
  return (f'{dev.platform} ({dev.device_kind}), {len(jax.devices())} '
          f'device(s), {os.cpu_count()} CPU cores')


COMPACT = ('case', 'ratio', 'reference', 'temp memory', 'target', 'holds')


def format_table(rows: Sequence[dict[str, Any]], *,
                 compact: bool = False) -> str:
  """The Markdown table of the rows (``compact``: no absolute times)."""
  columns = COMPACT if compact else HEADER
  body = []
  for r in rows:
    holds = {True: 'yes', False: 'no', None: '—'}[r['holds']]
    case = r['case'] + (f" ({r['note']})" if r.get('note') else '')
    if r.get('error'):
      cells = (case, '—', '—', '—', '—', '—', r['target'], holds)
    else:
      cells = (case, _fmt_time(r['time_s']), r['reference'],
               _fmt_time(r['reference_time_s']), f"{r['ratio']:.3f}×",
               _fmt_bytes(r['temp_bytes']), r['target'] or '—', holds)
    by_column = dict(zip(HEADER, cells, strict=True))
    body.append(tuple(by_column[h] for h in columns))
  return _common.markdown_table(columns, body)


def markdown_report(result: dict[str, Any], *, compact: bool = False) -> str:
  """A run's report (its JSON): the device, the table, how many hold.

  ``compact``: the table without absolute times (they are in the JSON).
  """
  rows = result['rows']
  held = [r for r in rows if r['holds'] is not None]
  failed = [r['case'] for r in rows if r.get('error')]
  summary = (f"{sum(r['holds'] for r in held)}/{len(held)} targets hold; "
             f"{result['elapsed_s']:.0f} s in all"
             + (f"; FAILED: {', '.join(failed)}" if failed else '')
             + (' (--quick: tiny sizes, not meaningful)' if result['quick']
                else ''))
  return (f"Device: {result['device']}; jax {result['environment']['jax']}; "
          f"repeats: {result['repeats']} (median; the largest cases "
          f'fewer)\n\n{format_table(rows, compact=compact)}\n{NOTES}\n\n'
          f'{summary}\n')


def add_arguments(parser: argparse.ArgumentParser) -> None:
  """The options of ``python -m kinetix bench``."""
  parser.add_argument(
      '--quick', action='store_true',
      help='tiny sizes for a smoke test (CI): seconds, not meaningful numbers')
  parser.add_argument('--repeats', type=_common.positive_int, default=None,
                      help='timed samples per measurement, median reported; '
                           'unset: 7, or 3 with --quick (the largest cases '
                           'use at most 3)')
  parser.add_argument('--json', type=pathlib.Path, default=None,
                      help='write the environment and the rows to this JSON')
  parser.add_argument('--out', type=pathlib.Path, default=None,
                      help='also write bench.json and bench.md to this '
                           'directory')
  parser.add_argument('--quiet', action='store_true',
                      help='no per-case progress lines on stderr')


def run(args: argparse.Namespace) -> int:
  """Runs every case, prints the table; 0, or 1 if a case raised."""
  repeats = args.repeats or (3 if args.quick else 7)
  start = time.perf_counter()
  rows = run_benchmarks(args.quick, repeats, quiet=args.quiet)
  elapsed = time.perf_counter() - start
  result = {'environment': _common.environment(), 'device': device_name(),
            'quick': bool(args.quick), 'repeats': repeats,
            'elapsed_s': elapsed, 'rows': rows}
  text = markdown_report(result)
  print(text, end='')
  failed = [r['case'] for r in rows if r.get('error')]
  if args.json is not None:
    _common.write_json(args.json, result)
  if args.out is not None:
    _common.write_json(args.out / 'bench.json', result)
    _common.write_text(args.out / 'bench.md', text)
  return 1 if failed else 0
