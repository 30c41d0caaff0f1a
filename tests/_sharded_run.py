"""Run by tests/test_sharding.py in a subprocess with 8 host devices.

``python tests/_sharded_run.py nomesh explicit auto`` trains every kinetix optimizer
for a few steps unsharded and with params sharded along the neuron axis and
along the feature axis of an 8-device mesh, and prints one JSON line per
case: the largest deviation from the unsharded run and the shardings seen.
``nomesh`` puts the params on a mesh with Explicit axes and never enters
``jax.set_mesh``: the mesh is known only from the arrays' types, as for a
user who wrote ``jax.device_put(w, NamedSharding(mesh, spec))`` and jitted.
"""

import contextlib
import json
import os
import sys
import time
import warnings

if __name__ == '__main__':  # not when a test imports the definitions
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             ' --xla_force_host_platform_device_count=8')

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import kinetix

import _cases

STEPS = 3
# Which optimizer runs in which mode, sharded along which axes. Every
# optimizer runs on Explicit axes without a mesh context (the mesh known only
# from the arrays' types, the harder case), the three collisions along
# both axes; with jax.set_mesh and on Auto axes (GSPMD's home ground) one case of
# each kind of collision and one energy-conserving optimizer. Compilation
# dominates, so the matrix is kept to what differs between the cases.
BOTH = ('neuron', 'feature')
PLAN = {
    # Each collision is sharded along both axes across the modes.
    # The aliases (ko_sgd, ko_adamw) are these chains (tests/test_aliases.py).
    'nomesh': {'soft': BOTH, 'hard': BOTH, 'disjoint': ('neuron',),
               'bbi': ('neuron',),
               'soft_stacked': ('feature',), 'hard_stacked': ('neuron',),
               'soft_blocked_noise': ('neuron',), 'hard_chunks': ('feature',),
               'cool_momentum': ('feature',), 'ecdsep': ('neuron',)},
    'explicit': {'soft': ('neuron',), 'hard': ('feature',),
                 'ecdsep': ('feature',)},
    'auto': {'soft': ('feature',), 'hard': ('neuron',),
             'disjoint': ('feature',), 'bbi': ('neuron',)},
}


def optimizers():
  shared = _cases.sharded_optimizers()
  stack = kinetix.masks.by_path('stack')
  return {
      **shared,
      # Stacked layers (nn.scan): collide per layer along axis 0.
      'soft_stacked': optax.chain(
          kinetix.soft_collision(0.3, layer_axes=0, mask=stack),
          optax.sgd(0.05)),
      'hard_stacked': optax.chain(
          kinetix.hard_collision(0.8, layer_axes=0, mask=stack),
          optax.sgd(0.05)),
      # Blocked, norm-matched (the authors' wg_e), with noise.
      'soft_blocked_noise': optax.chain(
          kinetix.soft_collision(0.3, block_size=8, noise_scale=1e-2,
                                 normalize=True, include_self=False),
          optax.sgd(0.05)),
      # Every pair accepted, tested in blocks of 5 rows, collided in
      # chunks of 4 pairs.
      'hard_chunks': optax.chain(
          kinetix.hard_collision(1.0, key=2, distance_scale=0.0, max_pairs=4,
                                 block_size=5, mask=_cases.DENSE),
          optax.sgd(0.05)),
      'cool_momentum': kinetix.cool_momentum(0.05, 0.9, 10),
      'ecdsep': kinetix.ecdsep(0.05, nu=1e-2),
  }


SHAPES = {'dense': {'kernel': (16, 32), 'bias': (32,)}, 'stack': (8, 6, 16)}


def make_params():
  params, target = _cases.random_params(SHAPES)
  return jax.tree.map(jnp.asarray, params), jax.tree.map(jnp.asarray, target)


def specs(axis):
  if axis == 'neuron':
    return {'dense': {'kernel': P(None, 'x'), 'bias': P('x')},
            'stack': P(None, None, 'x')}
  # Features (and, for the stacked leaf, the layer axis).
  return {'dense': {'kernel': P('x', None), 'bias': P('x')},
          'stack': P('x', None, None)}


def train(tx, params, target):
  return _cases.train(tx, params, target, STEPS)


def main(modes):
  params, target = make_params()
  refs = {}
  for mode in modes:
    if mode == 'shard_map':
      run_shard_map(params['dense']['kernel'], target['dense']['kernel'])
    elif mode == 'optax_battery':
      run_optax_battery()
    elif mode == 'grouped':
      run_grouped()
    else:
      run_mode(mode, params, target, refs)


# Inside jax.shard_map kinetix sees each device's block. Cases: the leaf
# replicated (the exact result, no warning); one whole model per device (a
# population: each member as if trained alone, with a warning, since the
# values cannot tell this from a split leaf); the leaf split along its
# neurons (a warning that the physics is per block); a replicated model
# given each device's own loss (a forgotten pmean: a warning).
SHARD_MAP_PLAN = {'soft': ('replicated', 'per_device', 'split'),
                  'hard': ('per_device',),
                  'bbi': ('per_device', 'unreduced_loss'),
                  'ecdsep': ('per_device',)}


def run_shard_map(w, target):
  mesh = jax.make_mesh((8,), ('x',))
  txs = optimizers()

  def two_steps(tx, w, t):
    def loss_fn(w):
      return 0.1 + 0.5 * jnp.sum((w - t) ** 2)
    def step(carry, _):
      params, state = carry
      value, grads = jax.value_and_grad(
          lambda p: loss_fn(p['dense']['kernel']))(params)
      updates, state = tx.update(grads, state, params, value=value)
      return (optax.apply_updates(params, updates), state), None

    params = {'dense': {'kernel': w}}
    # A scan: the state must keep its type (where it varies) across steps.
    (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), None, 2)
    return params['dense']['kernel']

  members = jnp.stack([w * (1.0 + 0.1 * k) for k in range(8)])
  for name, cases in SHARD_MAP_PLAN.items():
    tx = txs[name]
    for case in cases:
      if case == 'per_device':
        spec = P('x')
        args = (members, jnp.broadcast_to(target, members.shape))
        fn = lambda w, t, tx=tx: two_steps(tx, w[0], t[0])[None]  # noqa: E731
        alone = jax.jit(lambda w, t, tx=tx: two_steps(tx, w, t))
        ref = jnp.stack([alone(m, target) for m in members])
      elif case == 'unreduced_loss':
        spec, args, ref = P(), (w, target), None

        def fn(w, t, tx=tx):
          # One step: the params come out differing per device, which no
          # lax.scan carry (of any optimizer) would accept.
          params = {'dense': {'kernel': w}}
          loss = (0.1 + 0.5 * jnp.sum((w - t) ** 2)
                  + 0.01 * jax.lax.axis_index('x'))
          grads = {'dense': {'kernel': w - t}}
          updates, _ = tx.update(grads, tx.init(params), params, value=loss)
          return jax.lax.pmean(w + updates['dense']['kernel'], 'x')
      else:
        spec = P() if case == 'replicated' else P(None, 'x')
        args = (w, target)
        fn = lambda w, t, tx=tx: two_steps(tx, w, t)  # noqa: E731
        ref = jax.jit(fn)(w, target) if case == 'replicated' else None
      row = {'mode': 'shard_map', 'optimizer': name, 'case': case}
      sharding = NamedSharding(mesh, spec)
      with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        try:
          out = jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=(spec, spec),
                                      out_specs=spec))(
              *(jax.device_put(a, sharding) for a in args))
          if ref is not None:
            # Relative to max(1, |x|): rounding grows with the values.
            row['max_error'] = float(jnp.max(
                jnp.abs(out - ref) / jnp.maximum(1.0, jnp.abs(ref))))
          row['finite'] = bool(jnp.all(jnp.isfinite(out)))
        except Exception as e:  # pylint: disable=broad-except
          row['error'] = f'{type(e).__name__}: {e}'[:2000]
      row['warned'] = any('shard_map axes' in str(c.message) for c in caught)
      print(json.dumps(row), flush=True)


def run_mode(mode, params, target, refs):
  if mode in ('explicit', 'nomesh'):
    mesh = jax.make_mesh((8,), ('x',))  # current JAX: Explicit axes
  else:
    mesh = jax.make_mesh((8,), ('x',), axis_types=(AxisType.Auto,))
  for name, tx in optimizers().items():
    if name not in PLAN[mode]:
      continue
    start = time.perf_counter()
    if name not in refs:
      refs[name] = train(tx, params, target)
    ref, ref_state = refs[name]
    for axis in PLAN[mode][name]:
      sharding = jax.tree.map(lambda s: NamedSharding(mesh, s), specs(axis),
                              is_leaf=lambda x: isinstance(x, P))
      sp = jax.device_put(params, sharding)
      st = jax.device_put(target, sharding)
      row = {'mode': mode, 'axis_types': str(mesh.axis_types),
             'optimizer': name, 'axis': axis}
      try:
        context = (contextlib.nullcontext() if mode == 'nomesh' else
                   jax.set_mesh(mesh))
        with context:
          out, state = train(tx, sp, st)
          cond = float(kinetix.metrics.condensation(
              out)['dense/kernel']['max_abs_cos'])
        ref_cond = float(kinetix.metrics.condensation(
            ref)['dense/kernel']['max_abs_cos'])
        row['max_error'] = max(
            float(jnp.max(jnp.abs(a - b)))
            for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(ref)))
        row['state_rel_error'] = max(
            [float(jnp.max(jnp.abs(a - b)) / jnp.maximum(jnp.max(jnp.abs(b)),
                                                          1.0))
             for a, b in
             zip(jax.tree.leaves(state), jax.tree.leaves(ref_state))
             if jnp.issubdtype(a.dtype, jnp.inexact)] or [0.0])
        row['condensation_error'] = abs(cond - ref_cond)
        row['out_spec'] = str(out['dense']['kernel'].sharding.spec)
        row['same_sharding'] = all(
            a.sharding.is_equivalent_to(b.sharding, a.ndim)
            for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(sp)))
      except Exception as e:  # pylint: disable=broad-except
        row['error'] = f'{type(e).__name__}: {e}'[:2000]
      row['seconds'] = time.perf_counter() - start
      start = time.perf_counter()
      print(json.dumps(row), flush=True)


def run_optax_battery():
  """Optax's contrib sharding test, for every kinetix optimizer.

  float16 params ``(2, 8, 4)`` sharded ``P(None, 'x')`` on an 8-device
  Explicit mesh inside ``jax.set_mesh``: the state's types (shapes, dtypes
  and shardings) after ``init`` equal those after ``update``, eagerly and
  under ``jit``.
  """
  mesh = jax.make_mesh((8,), ('x',), axis_types=(AxisType.Explicit,))
  sharding = NamedSharding(mesh, P(None, 'x'))
  types = lambda tree: jax.tree.map(jax.typeof, tree)  # noqa: E731
  for name in _cases.NAMES:
    row = {'mode': 'optax_battery', 'optimizer': name}
    try:
      with jax.set_mesh(mesh):
        params = jnp.zeros((2, 8, 4), jnp.float16, out_sharding=sharding)
        tx = _cases.make(name)
        extra = {'value': jnp.asarray(1.0, jnp.float16)}
        state = tx.init(params)
        row['init_jit'] = types(jax.jit(tx.init)(params)) == types(state)
        _, eager = tx.update(params, state, params, **extra)
        row['eager'] = types(eager) == types(state)
        _, jitted = jax.jit(
            lambda u, s, p: tx.update(u, s, p, **extra))(params, state,
                                                         params)
        row['jit'] = types(jitted) == types(state)
    except Exception as e:  # pylint: disable=broad-except
      row['error'] = f'{type(e).__name__}: {e}'[:2000]
    print(json.dumps(row), flush=True)


def run_grouped():
  """Three same-shaped leaves, sharded three ways, in one tree.

  Leaves that share shape and dtype but not sharding are collided apart
  (stacking them would reshard); each must equal its unsharded update.
  """
  mesh = jax.make_mesh((8,), ('x',))
  shapes = {'a': (16, 32), 'b': (16, 32), 'c': (16, 32), 'd': (16, 32)}
  params, target = _cases.random_params(shapes, seed=1)
  spec = {'a': P(None, 'x'), 'b': P('x', None), 'c': P(), 'd': P(None, 'x')}
  shard = lambda t: jax.device_put(t, {  # noqa: E731
      k: NamedSharding(mesh, v) for k, v in spec.items()})
  txs = {name: optax.chain(tx, optax.sgd(0.05)) for name, tx in (
      ('soft', kinetix.soft_collision(0.3, noise_scale=1e-3)),
      ('hard', kinetix.hard_collision(0.9, key=1)),
      ('disjoint', kinetix.hard_collision(0.9, key=1, pairing='disjoint')))}
  for name in ('soft', 'hard'):
    tx = txs[name]
    row = {'mode': 'grouped', 'optimizer': name}
    try:
      ref, ref_state = _cases.train(tx, params, target, STEPS)
      out, state = _cases.train(tx, shard(params), shard(target), STEPS)
      row['max_error'] = max(float(jnp.max(jnp.abs(out[k] - ref[k])))
                             for k in shapes)
      row['specs'] = {k: str(out[k].sharding.spec) for k in shapes}
      if name != 'soft':
        row['accepted'] = [int(state[0].accepted_pairs),
                           int(ref_state[0].accepted_pairs)]
    except Exception as e:  # pylint: disable=broad-except
      row['error'] = f'{type(e).__name__}: {e}'[:2000]
    print(json.dumps(row), flush=True)
  for name, tx in txs.items():
    run_grouped_shard_map(name, tx, mesh, params)


def run_grouped_shard_map(name, tx, mesh, params):
  """Inside ``shard_map``: a replicated leaf and a per-device one, same shape.

  Both equal their updates outside ``shard_map`` on every device: leaves
  that vary over different mesh axes are not collided as one group (its
  ``lax.switch`` needs one type).
  """
  w = params['a']
  members = jnp.stack([params['b'] * (1.0 + 0.1 * k) for k in range(8)])

  def update(w, v):
    p = {'r': w, 'v': v}
    g = jax.tree.map(lambda x: jnp.sin(3.0 * x), p)
    return tx.update(g, tx.init(p), p)[0]

  def per_device(w, v):
    u = update(w, v[0])
    return u['r'][None], u['v'][None]

  row = {'mode': 'grouped_shard_map', 'optimizer': name}
  try:
    with warnings.catch_warnings():
      warnings.simplefilter('ignore')    # per-device leaves: a warning
      out_r, out_v = jax.jit(jax.shard_map(
          per_device, mesh=mesh, in_specs=(P(), P('x')),
          out_specs=(P('x'), P('x'))))(
              jax.device_put(w, NamedSharding(mesh, P())),
              jax.device_put(members, NamedSharding(mesh, P('x'))))
    alone = jax.jit(update)
    refs = [alone(w, m) for m in members]
    row['max_error'] = max(
        float(jnp.max(jnp.abs(out_r - refs[0]['r']))),
        float(jnp.max(jnp.abs(out_v - jnp.stack([r['v'] for r in refs])))))
  except Exception as e:  # pylint: disable=broad-except
    row['error'] = f'{type(e).__name__}: {e}'[:2000]
  print(json.dumps(row), flush=True)


if __name__ == '__main__':
  main(sys.argv[1:])
