"""The collisions under XLA's default flags: the programs users compile.

The suite compiles with fast-compile XLA flags (``conftest.py``). Here a
subprocess without them runs each collision against its dense reference
on a tree with two leaves of one layout (the engine's loop over a group)
and one leaf alone.
"""

import json
import os
import pathlib
import subprocess
import sys

_SCRIPT = '''
import json, os, sys
sys.path.insert(0, sys.argv[1])
import jax, numpy as np, kinetix
from _references import (apply, disjoint_reference, from_neurons_np,
                         hard_reference, layer_key, neurons_np, rand,
                         soft_reference)

# Two leaves of one layout (one group: the engine's loop) and one alone.
shapes = {'a': (8, 12), 'b': (8, 12), 'c': (6, 5)}
params = {k: rand(s, 10 + i, 0.3) for i, (k, s) in enumerate(shapes.items())}
grads = {k: rand(s, 20 + i) for i, (k, s) in enumerate(shapes.items())}
out = {'xla_flags': os.environ.get('XLA_FLAGS', '')}

def check(name, tx, reference):
  updates, state = apply(tx, grads, params)
  errors, pairs = [], 0
  for k in shapes:
    ref, accepted = reference(neurons_np(params[k]), neurons_np(grads[k]), k)
    pairs += accepted
    errors.append(float(np.max(np.abs(np.asarray(updates[k], np.float64)
                                      - from_neurons_np(ref, shapes[k])))))
  out[name] = max(errors)
  if hasattr(state, 'accepted_pairs'):       # hard collisions count pairs
    out[name + '_pairs'] = [int(state.accepted_pairs), pairs]

check('soft', kinetix.soft_collision(0.3),
      lambda w, g, k: (soft_reference(w, g, 0.3), 0))
check('hard', kinetix.hard_collision(0.9, key=3, distance_scale=0.05),
      lambda w, g, k: hard_reference(w, g, 0.9, 0.05, layer_key(3, k)))
check('disjoint', kinetix.hard_collision(0.4, key=3, pairing='disjoint',
                                         distance_scale=0.2),
      lambda w, g, k: disjoint_reference(w, g, 0.4, 0.2, layer_key(3, k),
                                         True)[:2])
print(json.dumps(out))
'''


def test_collisions_equal_their_references_under_default_xla_flags():
  tests = pathlib.Path(__file__).parent
  env = dict(os.environ, XLA_FLAGS='', JAX_PLATFORMS='cpu')
  proc = subprocess.run([sys.executable, '-c', _SCRIPT, str(tests)], env=env,
                        capture_output=True, text=True, timeout=600,
                        check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert out['xla_flags'] == ''
  for name in ('soft', 'hard', 'disjoint'):
    assert out[name] < 1e-5, (name, out)
  for name in ('hard', 'disjoint'):
    counted, expected = out[name + '_pairs']
    assert counted == expected > 0, (name, out)
