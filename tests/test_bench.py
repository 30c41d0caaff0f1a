"""Smoke test of ``python -m kinetix bench --quick`` (no timing targets)."""

import json
import math

from kinetix import __main__ as cli
from kinetix.experiments import bench


def _finite_positive(x):
  return (isinstance(x, (int, float)) and not isinstance(x, bool)
          and math.isfinite(x) and x > 0)


def test_quick_bench_writes_all_rows(tmp_path, capsys):
  path = tmp_path / 'bench.json'
  code = cli.main(['bench', '--quick', '--repeats', '2', '--quiet', '--json',
                   str(path)])
  assert code == 0
  printed = capsys.readouterr().out
  assert 'Device: ' in printed
  assert '| case |' in printed

  result = json.loads(path.read_text())
  assert result['quick'] is True
  assert 'jax' in result['environment']
  rows = result['rows']
  assert {r['kind'] for r in rows} == set(bench.KINDS)
  for r in rows:
    assert r['case'] and r['case'] in printed
    for field in ('time_s', 'reference_time_s', 'ratio'):
      assert _finite_positive(r[field]), (r['case'], field, r[field])
    assert math.isclose(r['ratio'], r['time_s'] / r['reference_time_s'])
    for field in ('temp_bytes', 'memory_limit_bytes'):
      assert r[field] is None or (isinstance(r[field], int)
                                  and not isinstance(r[field], bool)
                                  and r[field] >= 0), (r['case'], field)
    assert r['holds'] in (True, False, None)
    if r['target'] is None:
      assert r['holds'] is None

  hard = [r for r in rows if r['kind'] == 'hard_vs_soft']
  full = [r for r in hard if r['accepted'] == 'all']
  few = [r for r in hard if r['accepted'] == 'few']
  assert full and few
  assert all(r['accepted_fraction'] > 0.9 for r in full)
  assert all(0 < r['accepted_pairs'] <= 4 * r['n'] for r in few)
  # The hard-collision and lm_head memory rows carry a 2 GiB memory target.
  assert any(r['memory_limit_bytes'] for r in hard)
  # The cliff case really accepted more pairs than its max_pairs.
  cliff = [r for r in rows if r['kind'] == 'capacity_cliff']
  assert cliff and all(r['accepted_pairs'] > r['max_pairs'] for r in cliff)
  # The RNG floor row collides every pair of its leaf.
  floor = [r for r in rows if r['kind'] == 'hard_vs_rng_floor']
  assert floor and all(r['accepted_pairs'] == r['n'] * (r['n'] - 1) // 2
                       for r in floor)
  lm_head = [r for r in rows if r['kind'] == 'blocked_lm_head']
  assert all(r['memory_limit_bytes'] == bench.MEMORY_LIMIT for r in lm_head)
  # Whole-model compile rows: every collision against its 1-block tree,
  # with the 2x target; the Optax references carry none.
  model = {r['optimizer']: r for r in rows
           if r['kind'] == 'model_compile' and r['chained']}
  assert set(model) == {'soft', 'hard', 'disjoint', 'adamw', 'muon', 'bbi',
                        'ecdsep'}
  for name in ('soft', 'hard', 'disjoint'):
    assert model[name]['target_ratio'] == bench.MODEL_COMPILE_TARGET
    assert model[name]['blocks'] > 1
  # Optax's and the loss-driven optimizers' rows are informational.
  for name in ('adamw', 'bbi', 'ecdsep'):
    assert model[name]['target_ratio'] is None
    assert model[name]['holds'] is None
  # The collision alone, without AdamW: informational.
  alone = [r for r in rows if r['kind'] == 'model_compile'
           and not r['chained']]
  assert [r['optimizer'] for r in alone] == ['soft']   # --quick: soft only
  assert alone[0]['target_ratio'] is None and alone[0]['holds'] is None
  assert 'alone' in alone[0]['case']
  # Run time of each collision grouped vs one transformation per leaf.
  update = {r['optimizer']: r for r in rows
            if r['kind'] == 'model_update' and not r['chained']}
  assert set(update) == {'soft', 'disjoint'}      # --quick skips 'hard'
  assert all(r['target_ratio'] == bench.MODEL_UPDATE_TARGET
             for r in update.values())
  # Disjoint pairing followed by AdamW, as trained: informational.
  chained = [r for r in rows if r['kind'] == 'model_update' and r['chained']]
  assert [r['optimizer'] for r in chained] == ['disjoint']
  assert chained[0]['target_ratio'] is None and chained[0]['holds'] is None
  heads = [r for r in rows if r['kind'] == 'vocab_head_memory']
  assert {r['optimizer'] for r in heads} == set(bench.VOCAB_HEADS)
  assert all(r['memory_limit_bytes'] and r['temp_bytes'] is not None
             for r in heads)


def test_gpt2_tree_has_the_shapes_of_gpt2_small():
  import jax  # pylint: disable=g-import-not-at-top
  params = bench.gpt2_params(12)
  n = sum(x.size for x in jax.tree.leaves(params))
  assert n == 124_439_808           # GPT-2 small, tied head
  kernels = [x for p, x in jax.tree_util.tree_leaves_with_path(params)
             if 'kernel' in jax.tree_util.keystr(p)]
  assert len(kernels) == 48


def test_temp_bytes_handles_missing_analysis():

  class NoAnalysis:

    def memory_analysis(self):
      return None

  class Broken:

    def memory_analysis(self):
      raise NotImplementedError

  assert bench.temp_bytes(NoAnalysis()) is None
  assert bench.temp_bytes(Broken()) is None


def test_compile_times_build_a_new_transformation_per_sample():
  # A transformation caches what it traces (one jitted function per group of
  # leaves): a sample that reused one would time less than a restart does.
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import kinetix  # pylint: disable=g-import-not-at-top
  made = []

  def make_tx():
    made.append(kinetix.soft_collision(0.1))
    return made[-1]

  params = {'a': jax.ShapeDtypeStruct((4, 6), jnp.float32),
            'b': jax.ShapeDtypeStruct((4, 6), jnp.float32)}
  ref_params = {'a': params['a']}
  t, t_ref, compiled = bench.compare_compile_times(make_tx, params,
                                                   ref_params, repeats=3)
  assert len(made) == 6 and len({id(tx) for tx in made}) == 6
  assert _finite_positive(t) and _finite_positive(t_ref)
  assert bench.temp_bytes(compiled) is not None
