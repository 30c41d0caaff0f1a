"""A real multi-process run: 2 JAX processes on 127.0.0.1, gloo collectives.

GSPMD across hosts is how kinetix runs on TPU pods and multi-node GPU
clusters. Two processes with 4 CPU devices each form one 8-device mesh;
each optimizer trains with params sharded along neurons and along features
and must equal an unsharded single-process run. An Orbax checkpoint of the
optimizer state written by the 2-process run is restored by a fresh
2-process run, which must continue bit-identically.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest


HERE = pathlib.Path(__file__).parent
sys.path.insert(0, str(HERE))
import _multiprocess_run as run  # noqa: E402  pylint: disable=g-import-not-at-top

TIMEOUT_S = 240


def _free_port():
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _launch(phase, workdir):
  """Starts the 2 processes, waits (bounded), kills only its own children."""
  port = _free_port()
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  # Each process sets its own device count; other flags pass through.
  env['XLA_FLAGS'] = ' '.join(
      f for f in env.get('XLA_FLAGS', '').split()
      if not f.startswith('--xla_force_host_platform_device_count'))
  procs = [subprocess.Popen(
      [sys.executable, str(HERE / '_multiprocess_run.py'), str(i), str(port),
       phase, str(workdir)], env=env, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True) for i in range(run.NUM_PROCESSES)]
  outputs = []
  try:
    for p in procs:
      outputs.append(p.communicate(timeout=TIMEOUT_S))
  except subprocess.TimeoutExpired:
    for p in procs:
      p.kill()
    pytest.fail(f'{phase}: the 2-process run exceeded {TIMEOUT_S} s')
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 0, f'{phase}: process failed:\n{err[-3000:]}'
  return json.loads((workdir / f'{phase}.json').read_text())


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('multiprocess')
  train = _launch('train', workdir)
  resume = _launch('resume', workdir)
  return train, resume


def test_two_processes_form_one_mesh(runs):
  train, _ = runs
  assert train['process_count'] == 2 and train['device_count'] == 8
  assert set(train['cases']) == {f'{n}/{run.AXES[n]}'
                                 for n in run.optimizers()}
  assert set(run.AXES.values()) == {'neuron', 'feature'}
  for case in train['cases'].values():
    assert case['global']            # spans both processes' devices


@pytest.mark.parametrize('name', list(run.optimizers()))
def test_two_process_training_equals_single_process(runs, name):
  train, _ = runs
  params, target = run.make_params()
  ref, _ = run.train(run.optimizers()[name], params, target)
  assert not np.allclose(ref['dense']['kernel'], params['dense']['kernel'])
  for axis in (run.AXES[name],):
    case = train['cases'][f'{name}/{axis}']
    assert case['same_sharding'], f'{name} along {axis}: sharding changed'
    for got, want in zip(case['params'], jax.tree.leaves(ref), strict=True):
      np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=1e-5,
                                 err_msg=f'{name} sharded along {axis}')


def test_orbax_checkpoint_from_two_processes_resumes_bit_identically(runs):
  train, resume = runs
  a, b = train['final'], resume['final']
  assert len(a) == len(b) > 4
  for x, y in zip(a, b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
