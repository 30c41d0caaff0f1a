"""One JAX process of a real 2-process run; launched by test_multiprocess.py.

``python tests/_multiprocess_run.py PROCESS_ID PORT PHASE WORKDIR``: two such
processes on 127.0.0.1, each with 4 CPU devices and gloo collectives, form
one 8-device mesh (``jax.distributed``, as on a TPU pod or a multi-node GPU
cluster). Params are global arrays built with
``jax.make_array_from_callback``.

* ``train``: every case of :func:`optimizers` trains ``STEPS`` steps with
  params sharded along neurons or along features (``AXES``); process 0 writes the
  gathered results. Then ``ko_adamw`` with hard collision trains 2 steps,
  saves params and optimizer state with Orbax, and trains 2 more.
* ``resume``: fresh processes restore that checkpoint and train the same 2
  steps; the test checks they end bit-identical to the uninterrupted run.
"""

import json
import os
import pathlib
import sys

if __name__ == '__main__':  # not when a test imports the definitions
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             ' --xla_force_host_platform_device_count=4')

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

NUM_PROCESSES = 2
STEPS = 3


# Each case is sharded along one axis, alternating, so that both
# communication patterns cross the process boundary (neurons: all-gathers;
# features: all-reduces); tests/test_sharding.py shards each along both.
AXES = {'soft': 'neuron', 'hard': 'feature', 'disjoint': 'neuron',
        'bbi': 'feature'}


def optimizers():
  # ko_adamw (hard) trains in the checkpoint phase.
  return _cases.sharded_optimizers(hard_mask=None)


def checkpoint_optimizer():
  return kinetix.ko_adamw(0.05, collision='hard', coll_coef=0.5)


SHAPES = {'dense': {'kernel': (16, 32), 'bias': (32,)},
          'conv': {'kernel': (3, 3, 8, 16)}}


def make_params():
  return _cases.random_params(SHAPES)


def specs(axis):
  if axis == 'neuron':
    return {'dense': {'kernel': P(None, 'x'), 'bias': P('x')},
            'conv': {'kernel': P(None, None, None, 'x')}}
  return {'dense': {'kernel': P('x', None), 'bias': P('x')},
          'conv': {'kernel': P(None, None, 'x', None)}}


def train(tx, params, target, steps=STEPS, state=None):
  return _cases.train(tx, params, target, steps, state)


def global_arrays(tree, mesh, spec_tree):
  """Global arrays on ``mesh``: each process fills its own shards."""
  def one(x, spec):
    sharding = NamedSharding(mesh, spec)
    return jax.make_array_from_callback(x.shape, sharding, lambda i: x[i])
  return jax.tree.map(one, tree, spec_tree)


def gathered(tree):
  from jax.experimental import multihost_utils
  def one(x):
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
      x = jax.random.key_data(x)
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return jax.tree.map(one, tree)


def to_lists(tree):
  """The leaves of ``tree`` as nested lists, in tree order."""
  return [np.asarray(x).tolist() for x in jax.tree.leaves(tree)]


def main(process_id, port, phase, workdir):
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(
      coordinator_address=f'127.0.0.1:{port}',
      coordinator_bind_address=f'127.0.0.1:{port}',
      num_processes=NUM_PROCESSES, process_id=process_id,
      initialization_timeout=60)
  assert jax.process_count() == NUM_PROCESSES
  assert len(jax.devices()) == 4 * NUM_PROCESSES
  mesh = jax.make_mesh((8,), ('x',), axis_types=(AxisType.Auto,))
  params, target = make_params()
  workdir = pathlib.Path(workdir)
  out = {'process_count': jax.process_count(),
         'device_count': len(jax.devices()), 'cases': {}}
  import orbax.checkpoint as ocp
  with jax.set_mesh(mesh):
    sp = global_arrays(params, mesh, specs('neuron'))
    st = global_arrays(target, mesh, specs('neuron'))
    tx = checkpoint_optimizer()
    ckpt = workdir / 'ckpt'
    if phase == 'train':
      for name, case_tx in optimizers().items():
        for axis in (AXES[name],):
          p = global_arrays(params, mesh, specs(axis))
          t = global_arrays(target, mesh, specs(axis))
          result, _ = train(case_tx, p, t)
          kernel = result['dense']['kernel']
          out['cases'][f'{name}/{axis}'] = {
              'params': to_lists(gathered(result)),
              'same_sharding': all(
                  a.sharding.is_equivalent_to(b.sharding, a.ndim)
                  for a, b in zip(jax.tree.leaves(result),
                                  jax.tree.leaves(p))),
              'global': not kernel.is_fully_addressable,
          }
      p1, s1 = train(tx, sp, st, steps=2)
      checkpointer = ocp.StandardCheckpointer()
      checkpointer.save(ckpt, {'params': p1, 'opt': s1})
      checkpointer.wait_until_finished()
      final = train(tx, p1, st, steps=2, state=s1)
    else:
      fresh = {'params': sp, 'opt': tx.init(sp)}
      abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, fresh)
      restored = ocp.StandardCheckpointer().restore(ckpt, abstract)
      final = train(tx, restored['params'], st, steps=2,
                    state=restored['opt'])
    out['final'] = to_lists(gathered(final))
  if process_id == 0:
    (workdir / f'{phase}.json').write_text(json.dumps(out))
  jax.distributed.shutdown()


if __name__ == '__main__':
  main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
