"""Sharded training equals unsharded training (8 simulated CPU devices).

Runs ``tests/_sharded_run.py`` in a subprocess, because the device count is
fixed when JAX starts. Every optimizer is trained with params sharded along
the neuron axis and along the feature axis (the layer axis for a stacked
leaf), on a mesh with Explicit axes (``jax.make_mesh``'s default) with and
without ``jax.set_mesh``, and on one with Auto axes; the random streams must not depend on the sharding.
Inside ``jax.shard_map`` (where kinetix sees each device's block): a
replicated leaf gives the exact result, one whole model per device trains as
if alone, and a leaf split across devices is warned about.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest


SCRIPT = pathlib.Path(__file__).with_name('_sharded_run.py')
sys.path.insert(0, str(SCRIPT.parent))
import _sharded_run as run  # noqa: E402  pylint: disable=g-import-not-at-top
EXPECTED = {'soft', 'soft_stacked', 'hard_stacked', 'soft_blocked_noise',
            'hard', 'hard_chunks', 'disjoint', 'cool_momentum', 'bbi',
            'ecdsep'}


MODES = ('nomesh', 'explicit', 'auto')


@pytest.fixture(scope='module')
def rows():
  """All modes in one subprocess: unsharded references are computed once."""
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  proc = subprocess.run([sys.executable, str(SCRIPT), *MODES, 'shard_map'],
                        env=env,
                        capture_output=True, text=True, timeout=900,
                        check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return [json.loads(line) for line in proc.stdout.splitlines()
          if line.startswith('{')]


@pytest.mark.parametrize('mode', MODES)
def test_sharded_updates_equal_unsharded(rows, mode):
  rows = [r for r in rows if r['mode'] == mode]
  cases = {(r['optimizer'], r['axis']) for r in rows}
  assert cases == {(name, axis) for name, axes in run.PLAN[mode].items()
                   for axis in axes}
  if mode == 'nomesh':
    assert {r['optimizer'] for r in rows} == EXPECTED
  axis_type = 'Auto' if mode == 'auto' else 'Explicit'
  assert all(axis_type in r['axis_types'] for r in rows)
  for r in rows:
    case = f"{r['optimizer']} sharded along {r['axis']}"
    assert 'error' not in r, f"{case}: {r.get('error')}"
    assert r['max_error'] < 1e-5, case
    # State errors relative to max(1, |x|): ECD momenta are square roots of
    # energy differences (e^E/V - s), ill-conditioned in float32, so a
    # different summation order of the sharded loss moves them by ~1e-6.
    assert r['state_rel_error'] < 1e-4, case
    assert r['condensation_error'] < 1e-5, case
    # The updated params keep the sharding they came with.
    assert r['same_sharding'], f"{case}: came back as {r['out_spec']}"


def test_inside_shard_map(rows):
  rows = [r for r in rows if r['mode'] == 'shard_map']
  assert {(r['optimizer'], r['case']) for r in rows} == {
      (name, case) for name, cases in run.SHARD_MAP_PLAN.items()
      for case in cases}
  for r in rows:
    case = f"{r['optimizer']} inside shard_map, {r['case']}"
    assert 'error' not in r, f"{case}: {r.get('error')}"
    assert r['finite'], case
    # Replicated: nothing to say. Per device or split: the values cannot
    # tell the two apart, so both warn that kinetix sees one block. A
    # replicated model with each device's own loss: BBI warns of the loss.
    assert r['warned'] == (r['case'] != 'replicated'), case
    if r['case'] in ('replicated', 'per_device'):
      # Replicated: the unsharded result. Per device: each member exactly
      # as when trained alone (lax.scan over steps: the state keeps its type),
      # up to float32 rounding (error relative to max(1, |x|)).
      assert r['max_error'] < 1e-6, case


_EXPLICIT_ON_OLD_JAX = '''
import jax, jax.numpy as jnp, numpy as np, kinetix
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
mesh = jax.make_mesh((2,), ('x',), axis_types=(AxisType.Explicit,))
w = jnp.arange(32.0).reshape(4, 8) % 5 + 1.0
g = jnp.cos(w)
tx = kinetix.soft_collision(0.1)
state = tx.init({'w': w})
ref = tx.update({'w': g}, state, {'w': w})[0]['w']
put = lambda x: jax.device_put(x, NamedSharding(mesh, P(None, 'x')))
try:
  out = jax.jit(tx.update)({'w': put(g)}, state, {'w': put(w)})[0]['w']
  print('ok', float(np.max(np.abs(np.asarray(out) - np.asarray(ref)))))
except RuntimeError as e:
  print('error', e)
'''


@pytest.mark.floors
def test_explicit_axes_work_or_name_the_jax_they_need():
  """On a JAX with ``jax.sharding.auto_axes`` Explicit axes give the
  unsharded result; on an older one (the core's floor is lower) a
  ``RuntimeError`` names the JAX they need and the Auto-axes way out."""
  import jax  # pylint: disable=g-import-not-at-top
  from kinetix import _sharding  # pylint: disable=g-import-not-at-top
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS=(
      os.environ.get('XLA_FLAGS', '')
      + ' --xla_force_host_platform_device_count=2').strip())
  proc = subprocess.run([sys.executable, '-c', _EXPLICIT_ON_OLD_JAX],
                        env=env, capture_output=True, text=True, timeout=300,
                        check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = proc.stdout.strip().splitlines()[-1]
  if _sharding.explicit_axes_supported():
    assert out.startswith('ok'), out
    assert float(out.split()[1]) < 1e-6, out
  else:
    assert out.startswith('error'), out
    assert f'jax >= {_sharding.EXPLICIT_AXES_JAX}' in out, out
    assert jax.__version__ in out and 'AxisType.Auto' in out, out
