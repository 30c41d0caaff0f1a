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


def test_temp_bytes_handles_missing_analysis():

  class NoAnalysis:

    def memory_analysis(self):
      return None

  class Broken:

    def memory_analysis(self):
      raise NotImplementedError

  assert bench.temp_bytes(NoAnalysis()) is None
  assert bench.temp_bytes(Broken()) is None
