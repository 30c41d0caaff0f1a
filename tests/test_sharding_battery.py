"""Optax's sharding battery and same-shaped leaves sharded apart (8 devices).

Same-shaped leaves sharded differently, in one tree: under ``jit`` on a
mesh, and inside ``shard_map`` (one replicated, one per device).

Runs ``tests/_sharded_run.py optax_battery grouped`` in its own subprocess
(beside ``test_sharding``'s, so the two can run on different workers).
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

SCRIPT = pathlib.Path(__file__).with_name('_sharded_run.py')


@pytest.fixture(scope='module')
def rows():
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  proc = subprocess.run([sys.executable, str(SCRIPT), 'optax_battery',
                         'grouped'], env=env, capture_output=True, text=True,
                        timeout=900, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return [json.loads(line) for line in proc.stdout.splitlines()
          if line.startswith('{')]


def test_optax_sharding_battery_for_every_optimizer(rows):
  """Optax's contrib sharding test: state types survive update (eager, jit)."""
  from _cases import NAMES  # pylint: disable=g-import-not-at-top
  rows = {r['optimizer']: r for r in rows if r['mode'] == 'optax_battery'}
  assert set(rows) == set(NAMES)
  for name, r in rows.items():
    assert 'error' not in r, f"{name}: {r.get('error')}"
    assert r['init_jit'] and r['eager'] and r['jit'], (name, r)


def test_same_shapes_with_different_shardings_in_one_tree(rows):
  rows = {r['optimizer']: r for r in rows if r['mode'] == 'grouped'}
  assert set(rows) == {'soft', 'hard'}
  for name, r in rows.items():
    assert 'error' not in r, f"{name}: {r.get('error')}"
    assert r['max_error'] < 1e-5, (name, r)
    assert r['specs'] == {'a': "P(None, 'x')", 'b': "P('x', None)",
                          'c': 'P(None, None)', 'd': "P(None, 'x')"}, r

    if 'accepted' in r:
      assert r['accepted'][0] == r['accepted'][1] > 0, r


def test_replicated_and_per_device_leaves_in_one_tree_in_shard_map(rows):
  rows = {r['optimizer']: r for r in rows
          if r['mode'] == 'grouped_shard_map'}
  assert set(rows) == {'soft', 'hard', 'disjoint'}
  for name, r in rows.items():
    assert 'error' not in r, f"{name}: {r.get('error')}"
    assert r['max_error'] < 1e-5, (name, r)
