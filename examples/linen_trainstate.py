"""KO in a Flax Linen ``TrainState`` loop: an MLP on scikit-learn's digits.

``kinetix.ko_adamw`` is hard collision → AdamW in one transformation; the
collision runs on the classifier head only (as in the KO paper) and
``TrainState.apply_gradients`` passes the params it needs::

    tx = kinetix.ko_adamw(1e-3, collision='hard',
                          mask=kinetix.masks.by_path('head/kernel'),
                          collision_options={'distance_scale': 0.05})
    state = train_state.TrainState.create(apply_fn=model.apply,
                                          params=params, tx=tx)

``distance_scale`` is κ in the acceptance test
``|g_i − g_j| exp(−κ |w_i − w_j|) / max |g_k − g_l| > 1 − coll_coef``:
the paper's κ = 1 accepts almost no pairs of a freshly initialised head (its
neurons are about 1.4 apart), so we use the authors' code's κ = 0.05 and print
the fraction of pairs that collided.

Same data as ``examples/nnx_mlp.py`` (no download). Run it with::

    python examples/linen_trainstate.py --steps 500
"""

import argparse
import time
from typing import Any

from flax import linen as nn
from flax.training import train_state
import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn import datasets
from sklearn import model_selection

import kinetix

HEAD = kinetix.masks.by_path('head/kernel')


def load_data(test_size: float = 0.25, seed: int = 0):
  """Standardised digits: ``(x_train, y_train, x_test, y_test)``."""
  x, y = datasets.load_digits(return_X_y=True)
  x_train, x_test, y_train, y_test = model_selection.train_test_split(
      x.astype(np.float32), y.astype(np.int32), test_size=test_size,
      random_state=seed, stratify=y)
  mean, std = x_train.mean(axis=0), x_train.std(axis=0)
  std = np.where(std > 0, std, 1.0)  # constant border pixels
  return (x_train - mean) / std, y_train, (x_test - mean) / std, y_test


class MLP(nn.Module):
  """64 → hidden (tanh) → 10; the classifier layer is ``head``."""
  hidden: int = 128

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = jnp.tanh(nn.Dense(self.hidden, name='body')(x))
    return nn.Dense(10, name='head')(x)


def make_optimizer(collision: str = 'hard', learning_rate: float = 1e-3,
                   coll_coef: float = 0.1) -> optax.GradientTransformation:
  """``ko_adamw`` with the collision on ``head/kernel`` (``'none'``: AdamW)."""
  options = {'distance_scale': 0.05} if collision == 'hard' else None
  return kinetix.ko_adamw(learning_rate, collision=collision,
                          coll_coef=coll_coef, mask=HEAD,
                          collision_options=options)


def create_state(collision: str = 'hard', seed: int = 0
                 ) -> train_state.TrainState:
  model = MLP()
  params = model.init(jax.random.key(seed), jnp.zeros((1, 64)))['params']
  return train_state.TrainState.create(apply_fn=model.apply, params=params,
                                       tx=make_optimizer(collision))


def loss_fn(params, apply_fn, x: jax.Array, y: jax.Array) -> jax.Array:
  logits = apply_fn({'params': params}, x)
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


@jax.jit
def train_step(state: train_state.TrainState, x: jax.Array, y: jax.Array):
  loss, grads = jax.value_and_grad(loss_fn)(state.params, state.apply_fn, x,
                                            y)
  return state.apply_gradients(grads=grads), loss


@jax.jit
def accuracy(state: train_state.TrainState, x: jax.Array,
             y: jax.Array) -> jax.Array:
  logits = state.apply_fn({'params': state.params}, x)
  return jnp.mean(jnp.argmax(logits, axis=-1) == y)


def collision_state(state: train_state.TrainState):
  """The ``HardCollisionState`` inside ``ko_adamw``'s state (or ``None``)."""
  found = [s for s in jax.tree.leaves(
      state.opt_state, is_leaf=lambda s: isinstance(
          s, kinetix.HardCollisionState))
           if isinstance(s, kinetix.HardCollisionState)]
  return found[0] if found else None


def head_condensation(params) -> dict[str, float]:
  stats = kinetix.metrics.condensation(params, HEAD)
  (head,) = stats.values()  # one selected leaf: head/kernel
  return {k: float(v) for k, v in head.items()}


def train(steps: int = 500, *, collision: str = 'hard',
          batch_size: int = 128, seed: int = 0, data=None):
  """Minibatch training; returns the final state, the losses and the
  per-step fraction of head-neuron pairs that collided."""
  x_train, y_train, _, _ = data if data is not None else load_data()
  state = create_state(collision, seed)
  rng = np.random.default_rng(seed)
  losses, accepted = [], []
  for _ in range(steps):
    idx = rng.choice(len(x_train), batch_size, replace=False)
    state, loss = train_step(state, x_train[idx], y_train[idx])
    losses.append(loss)
    coll = collision_state(state)
    if coll is not None:
      accepted.append(coll.accepted_fraction)
  losses, accepted = jax.device_get((losses, accepted))
  return state, [float(l) for l in losses], [float(a) for a in accepted]


def main(steps: int = 500, quiet: bool = False) -> dict[str, Any]:
  """Trains with the head collision; returns (and prints) the final metrics."""
  data = load_data()
  start = time.perf_counter()
  state, losses, accepted = train(steps, data=data)
  _, _, x_test, y_test = data
  result = {
      'steps': steps,
      'train_loss': float(np.mean(losses[-20:])),
      'test_accuracy': float(accuracy(state, x_test, y_test)),
      'head_condensation': head_condensation(state.params),
      'accepted_fraction': float(np.mean(accepted)),
      'seconds': time.perf_counter() - start,
  }
  if not quiet:
    cond = result['head_condensation']
    print(f'Linen MLP + TrainState, ko_adamw with hard collision on '
          f'head/kernel, {steps} steps ({result["seconds"]:.1f} s)')
    print(f'  train loss {result["train_loss"]:.4f}   '
          f'test accuracy {result["test_accuracy"]:.4f}')
    print(f'  head condensation: max |cos| {cond["max_abs_cos"]:.3f}, '
          f'mean |cos| {cond["mean_abs_cos"]:.3f}; pairs collided per step: '
          f'{100 * result["accepted_fraction"]:.2f} %')
  return result


if __name__ == '__main__':
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--steps', type=int, default=500,
                      help='minibatch steps (batch 128)')
  main(steps=parser.parse_args().steps)
