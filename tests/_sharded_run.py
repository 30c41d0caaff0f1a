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


# Hard collisions compile slowly (counter-based random directions): they
# collide the dense kernel only; soft collision uses the default
# mask (both leaves).
DENSE = kinetix.masks.by_path('dense/kernel')


def optimizers():
  return {
      'soft': optax.chain(kinetix.soft_collision(0.3), optax.sgd(0.05)),
      # Stacked layers (nn.scan): collide per layer along axis 0.
      'soft_stacked': optax.chain(
          kinetix.soft_collision(0.3, layer_axes=0,
                                 mask=kinetix.masks.by_path('stack')),
          optax.sgd(0.05)),
      'hard_stacked': optax.chain(
          kinetix.hard_collision(0.8, layer_axes=0,
                                 mask=kinetix.masks.by_path('stack')),
          optax.sgd(0.05)),
      'soft_blocked_noise': optax.chain(
          kinetix.soft_collision(0.3, block_size=8, noise_scale=1e-2),
          optax.sgd(0.05)),
      'hard': optax.chain(kinetix.hard_collision(0.8, key=1, mask=DENSE),
                          optax.sgd(0.05)),
      # Every pair accepted, collided in chunks of 4 pairs.
      'hard_chunks': optax.chain(
          kinetix.hard_collision(1.0, key=2, distance_scale=0.0, max_pairs=4,
                                 mask=DENSE),
          optax.sgd(0.05)),
      'disjoint': optax.chain(
          kinetix.hard_collision(0.8, pairing='disjoint', mask=DENSE),
          optax.sgd(0.05)),
      'cool_momentum': kinetix.cool_momentum(0.05, 0.9, 10),
      'bbi': kinetix.bbi(0.05, threshold0=2, n_fixed_bounces=2,
                         delta_energy=0.2),
      'ecdsep': kinetix.ecdsep(0.05, nu=1e-2),
  }


def make_params():
  rng = np.random.default_rng(0)
  shapes = {'dense': {'kernel': (16, 32), 'bias': (32,)},
            'stack': (8, 6, 16)}
  params = jax.tree.map(
      lambda s: jnp.asarray(rng.normal(size=s), jnp.float32), shapes,
      is_leaf=lambda x: isinstance(x, tuple))
  target = jax.tree.map(
      lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
  return params, target


def specs(axis):
  if axis == 'neuron':
    return {'dense': {'kernel': P(None, 'x'), 'bias': P('x')},
            'stack': P(None, None, 'x')}
  # Features (and, for the stacked leaf, the layer axis).
  return {'dense': {'kernel': P('x', None), 'bias': P('x')},
          'stack': P('x', None, None)}


def train(tx, params, target):
  def loss_fn(p):
    sq = jax.tree.map(lambda a, b: jnp.sum((a - b) ** 2), p, target)
    return 0.1 + 0.5 * sum(jax.tree.leaves(sq))

  @jax.jit
  def step(params, state):
    value, grads = jax.value_and_grad(loss_fn)(params)
    updates, state = tx.update(grads, state, params, value=value)
    # The new state must be interchangeable with the old one (lax.cond).
    state = jax.lax.cond(value > 0, lambda: state, lambda: state)
    return optax.apply_updates(params, updates), state

  state = tx.init(params)
  for _ in range(STEPS):
    params, state = step(params, state)
  return params, state


def main(modes):
  params, target = make_params()
  refs = {}
  for mode in modes:
    if mode == 'shard_map':
      run_shard_map(params['dense']['kernel'], target['dense']['kernel'])
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
            row['max_error'] = float(jnp.max(jnp.abs(out - ref)))
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


if __name__ == '__main__':
  main(sys.argv[1:])
