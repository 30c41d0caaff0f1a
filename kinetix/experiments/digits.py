"""An MLP and a small CNN on scikit-learn's digits, with and without collisions.

Real data that needs no download: ``sklearn.datasets.load_digits`` ships
1,797 8×8 grey-level images of the digits 0-9 with scikit-learn. We take one
fixed stratified train/test split (70/30 by default, ``data_seed`` 0),
standardise the 64 pixels with the training set's mean and std, and train

* an MLP 64-128-128-10 (ReLU), and
* a small CNN: two 3×3 convolutions with 16 and 32 channels (``SAME``
  padding, ReLU, NHWC/HWIO; computed as im2col matmuls, see
  :func:`conv3x3`), a 2×2 average pool to 4×4×32, and a dense head 512-10,

with AdamW (lr 1e-3, weight decay 1e-4) and SGD (lr 0.05, momentum 0.9),
each plain, preceded by a soft collision (the paper's, and the authors'
norm-matched ``wg_e`` type), or preceded by a hard collision
(``optax.chain(collision, base)``) on the classifier head's kernel only
(``masks.by_path('head/kernel')``: its 10 neurons are the class columns).
The collisions use ``coll_coef = 0.1``; the hard one kinetix's default
``distance_scale = 0.05`` (the authors' code), since with the paper's 1.0
the head's neurons (about 1.4 apart) never pass the acceptance test and the
run is identical to the plain one.

All seeds of one configuration run in one computation (``vmap``); the
minibatch steps (batch 64, reshuffled every epoch with the seed's key, the
last incomplete batch dropped) run in a ``lax.scan`` over epochs around a
``lax.scan`` over batches, with no host round trips. A seed sets the
initialisation, the shuffling and the collisions' randomness; the split is
the same for every seed. We report the held-out accuracy, the final loss on
the whole training set, and the condensation of the head (max/mean ``|cos|``
between its neurons, :func:`kinetix.metrics.condensation`), mean ± std over
seeds, for hard collisions the mean fraction of accepted pairs, and for
every collision its own Theorem 3.3 rate: how much it changes
``d mean|cos| / dη`` of the head at each step, and on how many steps that
change is negative (decorrelating).

Run it with ``python -m kinetix digits``; programmatic use::

    from kinetix.experiments import digits
    settings = digits.Settings(epochs=5, seeds=2, models=('mlp',))
    results = digits.run_experiment(settings)
    summary = digits.summarize(results, settings)
"""

import argparse
import dataclasses
import functools
import time
from typing import Any

from kinetix.experiments import _common
import itertools

NAME = 'digits'

MODELS = ('mlp', 'cnn')
OPTIMIZERS = ('adamw', 'sgd')
METHODS = ('none', 'soft', 'normed', 'hard')
MODEL_LABELS = {'mlp': 'MLP', 'cnn': 'CNN'}
OPTIMIZER_LABELS = {'adamw': 'AdamW', 'sgd': 'SGD'}
METHOD_LABELS = {'none': 'no collision', 'soft': '+ soft',
                 'normed': '+ soft, norm-matched', 'hard': '+ hard'}
NUM_CLASSES = 10


@dataclasses.dataclass(frozen=True)
class Settings:
  """Everything that defines one run (written into the JSON and figures)."""
  models: tuple[str, ...] = MODELS
  optimizers: tuple[str, ...] = OPTIMIZERS
  methods: tuple[str, ...] = METHODS
  seeds: int = 5
  epochs: int = 30
  batch_size: int = 64
  adamw_lr: float = 1e-3
  weight_decay: float = 1e-4
  sgd_lr: float = 0.05
  momentum: float = 0.9
  coll_coef: float = 0.1
  # The authors' code's κ: with the paper's κ = 1 no pair of this head's
  # neurons (|w_i - w_j| ≈ 1.4) ever passes the acceptance test.
  distance_scale: float = 0.05
  mlp_hidden: tuple[int, ...] = (128, 128)
  cnn_channels: tuple[int, ...] = (16, 32)
  test_fraction: float = 0.3
  data_seed: int = 0

  def __post_init__(self):
    """Rejects unknown names and out-of-range numbers (``ValueError``)."""
    for field, values, allowed in (('model', self.models, MODELS),
                                   ('optimizer', self.optimizers, OPTIMIZERS),
                                   ('method', self.methods, METHODS)):
      if not values:
        raise ValueError(f'no {field} chosen; choose from '
                         f'{", ".join(allowed)}')
      for v in values:
        if v not in allowed:
          raise ValueError(f'unknown {field} {v!r}; choose from '
                           f'{", ".join(allowed)}')
    if self.seeds < 1 or self.epochs < 1 or self.batch_size < 1:
      raise ValueError('seeds, epochs and batch_size must be >= 1')
    if not 0.0 < self.test_fraction < 1.0:
      raise ValueError(f'test_fraction must be in (0, 1); got '
                       f'{self.test_fraction}')
    if not 0.0 <= self.coll_coef <= 1.0:
      raise ValueError(f'coll_coef must be in [0, 1]; got {self.coll_coef}')

  def describe(self) -> str:
    """One line for the tables, figures and the console."""
    hidden = '-'.join(str(h) for h in self.mlp_hidden)
    chans = '/'.join(str(c) for c in self.cnn_channels)
    return (f'load_digits, stratified {1 - self.test_fraction:.0%}/'
            f'{self.test_fraction:.0%} split (seed {self.data_seed}); MLP '
            f'64-{hidden}-10, CNN 3×3 convs {chans} + pool + head; '
            f'{self.epochs} epochs, batch {self.batch_size}; AdamW lr '
            f'{self.adamw_lr:g} wd {self.weight_decay:g}, SGD lr '
            f'{self.sgd_lr:g} momentum {self.momentum:g}; collisions on '
            f'head/kernel, coll_coef {self.coll_coef:g}, hard distance_scale '
            f'{self.distance_scale:g}; {self.seeds} seeds')


# --------------------------------------------------------------------------
# Data, models, optimizers


@functools.lru_cache(maxsize=4)
def load_data(test_fraction: float = 0.3, data_seed: int = 0):
  """``(x_train, y_train, x_test, y_test)`` as float32/int32 NumPy arrays.

  ``x`` has shape ``(n, 64)``, standardised per pixel with the training
  set's statistics (pixels that are constant in the training set are only
  centred).
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  from sklearn import model_selection  # pylint: disable=g-import-not-at-top
  from sklearn import preprocessing  # pylint: disable=g-import-not-at-top
  x, y = datasets.load_digits(return_X_y=True)
  x_train, x_test, y_train, y_test = model_selection.train_test_split(
      x, y, test_size=test_fraction, stratify=y, random_state=data_seed)
  scaler = preprocessing.StandardScaler().fit(x_train)
  return (scaler.transform(x_train).astype(np.float32),
          y_train.astype(np.int32),
          scaler.transform(x_test).astype(np.float32),
          y_test.astype(np.int32))


def _dense(key, fan_in: int, fan_out: int, scale: float = 2.0):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  std = (scale / fan_in) ** 0.5
  return {'kernel': std * jax.random.normal(key, (fan_in, fan_out)),
          'bias': jnp.zeros((fan_out,))}


def init_params(key, model: str, settings: Settings):
  """He-normal kernels (LeCun-normal head), zero biases."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  params = {}
  if model == 'mlp':
    sizes = (64, *tuple(settings.mlp_hidden))
    keys = jax.random.split(key, len(sizes))
    for k, (a, b) in enumerate(itertools.pairwise(sizes)):
      params[f'hidden{k + 1}'] = _dense(keys[k], a, b)
    params['head'] = _dense(keys[-1], sizes[-1], NUM_CLASSES, scale=1.0)
  elif model == 'cnn':
    chans = (1, *tuple(settings.cnn_channels))
    keys = jax.random.split(key, len(chans))
    for k, (a, b) in enumerate(itertools.pairwise(chans)):
      std = (2.0 / (9 * a)) ** 0.5
      params[f'conv{k + 1}'] = {
          'kernel': std * jax.random.normal(keys[k], (3, 3, a, b)),
          'bias': jnp.zeros((b,))}
    params['head'] = _dense(keys[-1], 4 * 4 * chans[-1], NUM_CLASSES,
                            scale=1.0)
  else:
    raise ValueError(f'unknown model {model!r}')
  return params


def conv3x3(x, kernel):
  """A 3×3 ``SAME`` convolution, NHWC input and HWIO kernel, as one matmul.

  Equals ``jax.lax.conv_general_dilated(x, kernel, (1, 1), 'SAME',
  dimension_numbers=('NHWC', 'HWIO', 'NHWC'))``. The nine shifted copies of
  the (zero-padded) input are concatenated along channels (im2col) and
  multiplied by the flattened kernel. On XLA's CPU backend (JAX 0.10) a
  convolution inside ``lax.scan`` is slow: one training step of this CNN
  (batch 64) took 57 ms in the scan against 1 ms outside it, and 330 ms for
  five seeds under ``vmap`` (per-seed kernels make it a grouped
  convolution); the im2col form takes 3 ms, and 12 ms for five seeds.
  """
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  _, h, w, _ = x.shape
  padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  patches = jnp.concatenate([padded[:, i:i + h, j:j + w, :]
                             for i in range(3) for j in range(3)], axis=-1)
  return patches @ kernel.reshape(-1, kernel.shape[-1])


def apply(params, x, model: str):
  """Logits ``(batch, 10)`` of standardised inputs ``x``, ``(batch, 64)``."""
  import jax  # pylint: disable=g-import-not-at-top
  if model == 'mlp':
    h = x
    for name in sorted(k for k in params if k.startswith('hidden')):
      h = jax.nn.relu(h @ params[name]['kernel'] + params[name]['bias'])
  else:
    h = x.reshape(x.shape[0], 8, 8, 1)
    for name in sorted(k for k in params if k.startswith('conv')):
      h = jax.nn.relu(conv3x3(h, params[name]['kernel']) + params[name]['bias'])
    b, _, _, c = h.shape
    h = h.reshape(b, 4, 2, 4, 2, c).mean(axis=(2, 4)).reshape(b, 16 * c)
  return h @ params['head']['kernel'] + params['head']['bias']


def make_optimizer(optimizer: str, method: str, settings: Settings,
                   key: Any = 0) -> _common.WithCollision:
  """AdamW or SGD after the collision of ``method`` on the head.

  ``key``: the collision's key, an int seed or a ``jax.random.key``.
  """
  import optax  # pylint: disable=g-import-not-at-top
  from kinetix import kinetic, masks  # pylint: disable=g-import-not-at-top
  if optimizer == 'adamw':
    base = optax.adamw(settings.adamw_lr, weight_decay=settings.weight_decay)
  elif optimizer == 'sgd':
    base = optax.sgd(settings.sgd_lr, momentum=settings.momentum)
  else:
    raise ValueError(f'unknown optimizer {optimizer!r}')
  mask = masks.by_path('head/kernel')
  if method == 'none':
    collision = optax.identity()
  elif method == 'soft':
    collision = kinetic.soft_collision(settings.coll_coef, mask=mask, key=key)
  elif method == 'normed':
    collision = kinetic.soft_collision(
        settings.coll_coef, mask=mask, key=key, include_self=False,
        normalize=True, min_similarity=0.0)
  elif method == 'hard':
    n = NUM_CLASSES
    # All n(n-1)/2 pairs fit the sparse pair list: under vmap over seeds a
    # lax.cond between the sparse and the dense path would run both.
    collision = kinetic.hard_collision(
        settings.coll_coef, mask=mask, key=key,
        distance_scale=settings.distance_scale, max_pairs=n * (n - 1) // 2)
  else:
    raise ValueError(f'unknown method {method!r}')
  return _common.WithCollision(collision, base)


def _head_view(tree):
  """The collided layer of a tree: the head kernel, ``(1, D, 10)``."""
  return {'head': tree['head']['kernel'][None]}


def train(model: str, optimizer: str, method: str, settings: Settings, *,
          fast_compile: bool = False) -> dict[str, Any]:
  """Trains all seeds at once; returns NumPy arrays.

  ``fast_compile`` compiles with XLA's backend optimisations off: about 3×
  faster to compile and 2× slower to run, the better trade for ``--quick``.

  Returns:
    Per seed: ``test_accuracy``, ``train_accuracy``, ``final_train_loss``
    (whole training set, after the last step), ``max_abs_cos`` and
    ``mean_abs_cos`` of the head kernel at the end, ``init_mean_abs_cos``
    at initialisation, ``accepted_fraction`` (mean over steps; zeros without
    hard collision), all ``(seeds,)``; ``collision_rate`` ``(seeds,
    steps)``, the collision's own Theorem 3.3 rate at each step
    (:func:`kinetix.experiments._common.collision_rate`; zeros without a
    collision); ``epoch_loss`` (mean minibatch loss)
    and ``epoch_test_accuracy`` (after each epoch), ``(seeds, epochs)``.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from kinetix import metrics  # pylint: disable=g-import-not-at-top

  data = tuple(jnp.asarray(a) for a in load_data(settings.test_fraction,
                                                 settings.data_seed))
  n_train = data[0].shape[0]
  batch = min(settings.batch_size, n_train)
  steps_per_epoch = n_train // batch

  def loss_fn(params, x, y):
    logits = apply(params, x, model)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  def accuracy(params, x, y):
    return jnp.mean(jnp.argmax(apply(params, x, model), axis=-1) == y)

  def head_condensation(params):
    stats = metrics.condensation({'head': params['head']})['head/kernel']
    return stats['max_abs_cos'], stats['mean_abs_cos']

  def one_seed(seed, data):
    x_train, y_train, x_test, y_test = data
    base = jax.random.key(seed)
    params = init_params(jax.random.fold_in(base, 0), model, settings)
    tx = make_optimizer(optimizer, method, settings,
                        key=jax.random.fold_in(base, 1))
    state = tx.init(params)
    shuffle_key = jax.random.fold_in(base, 2)

    def step(carry, idx):
      params, state = carry
      loss, grads = jax.value_and_grad(loss_fn)(params, x_train[idx],
                                                y_train[idx])
      updates, state, plain = tx.update(grads, state, params)
      _, acc = _common.collision_stats(state)
      rate = (jnp.zeros([], jnp.float32) if method == 'none' else
              _common.collision_rate(params, updates, plain, _head_view))
      return (optax.apply_updates(params, updates), state), (loss, acc, rate)

    def epoch(carry, e):
      perm = jax.random.permutation(jax.random.fold_in(shuffle_key, e),
                                    n_train)
      batches = perm[:steps_per_epoch * batch].reshape(steps_per_epoch, batch)
      carry, (loss, acc, rate) = jax.lax.scan(step, carry, batches)
      return carry, (loss.mean(), acc.mean(),
                     accuracy(carry[0], x_test, y_test), rate)

    _, init_mean = head_condensation(params)
    (params, _), (epoch_loss, accepted, epoch_acc, rate) = jax.lax.scan(
        epoch, (params, state), jnp.arange(settings.epochs))
    max_cos, mean_cos = head_condensation(params)
    return {
        'test_accuracy': accuracy(params, x_test, y_test),
        'train_accuracy': accuracy(params, x_train, y_train),
        'final_train_loss': loss_fn(params, x_train, y_train),
        'max_abs_cos': max_cos,
        'mean_abs_cos': mean_cos,
        'init_mean_abs_cos': init_mean,
        'accepted_fraction': accepted.mean(),
        'epoch_loss': epoch_loss,
        'epoch_test_accuracy': epoch_acc,
        'collision_rate': rate.reshape(-1),
    }

  # The data are arguments, not closed-over constants: XLA would otherwise
  # spend seconds constant-folding gathers from them.
  args = (jnp.arange(settings.seeds), data)
  compiled = jax.jit(jax.vmap(one_seed, in_axes=(0, None))).lower(
      *args).compile(
          _common.FAST_COMPILE if fast_compile else None)
  out = compiled(*args)
  return {k: np.asarray(v) for k, v in jax.device_get(out).items()}


def configurations(settings: Settings) -> list[tuple[str, str, str]]:
  """Every ``(model, optimizer, method)`` of ``settings``, in run order."""
  return [(m, o, c) for m in settings.models for o in settings.optimizers
          for c in settings.methods]


def run_experiment(settings: Settings, *, progress: bool = False,
                   fast_compile: bool = False
                   ) -> dict[tuple[str, str, str], dict[str, Any]]:
  """``results[(model, optimizer, method)]`` = :func:`train`'s arrays."""
  results = {}
  runs = configurations(settings)
  bar = _common.progress(total=len(runs), desc='digits', disable=not progress)
  for model, optimizer, method in runs:
    bar.set_postfix_str(f'{model}/{optimizer}/{method}')
    start = time.perf_counter()
    res = train(model, optimizer, method, settings,
                fast_compile=fast_compile)
    res['seconds'] = time.perf_counter() - start
    results[(model, optimizer, method)] = res
    bar.update(1)
  bar.close()
  return results


# --------------------------------------------------------------------------
# Summaries, tables, figures


def summarize(results, settings: Settings) -> dict[str, Any]:
  """JSON-able numbers: one entry per configuration, mean ± std over seeds."""
  rows = []
  for (model, optimizer, method), r in results.items():
    entry = {
        'model': model,
        'optimizer': optimizer,
        'method': method,
        'test_accuracy': _common.seed_stats(r['test_accuracy']),
        'train_accuracy': _common.seed_stats(r['train_accuracy']),
        'final_train_loss': _common.seed_stats(r['final_train_loss']),
        'head_max_abs_cos': _common.seed_stats(r['max_abs_cos']),
        'head_mean_abs_cos': _common.seed_stats(r['mean_abs_cos']),
        'head_init_mean_abs_cos': _common.seed_stats(r['init_mean_abs_cos']),
        'epoch_loss_mean': [float(v) for v in r['epoch_loss'].mean(axis=0)],
        'epoch_test_accuracy_mean': [
            float(v) for v in r['epoch_test_accuracy'].mean(axis=0)],
        'seconds': float(r['seconds']),
    }
    if method == 'hard':
      entry['accepted_fraction'] = _common.seed_stats(r['accepted_fraction'])
    if method != 'none':
      entry['collision_rate'] = _common.rate_stats(r['collision_rate'])
    rows.append(entry)
  x_train, _, x_test, _ = load_data(settings.test_fraction, settings.data_seed)
  return {'settings': dataclasses.asdict(settings),
          'data': {'train': int(x_train.shape[0]), 'test': int(x_test.shape[0]),
                   'features': int(x_train.shape[1]), 'classes': NUM_CLASSES},
          'results': rows}


def markdown(summary: dict[str, Any]) -> str:
  """The Markdown table and its caption, from :func:`summarize`'s output."""
  s = _common.settings_from_json(Settings, summary['settings'])
  rows = []
  for e in summary['results']:
    acc = e.get('accepted_fraction')
    rows.append([
        MODEL_LABELS[e['model']], OPTIMIZER_LABELS[e['optimizer']],
        METHOD_LABELS[e['method']],
        _common.fmt_stat(e['test_accuracy'], 2, 100.0),
        f"{e['final_train_loss']['mean']:.2e} ± "
        f"{e['final_train_loss']['std']:.1e}",
        _common.fmt_stat(e['head_max_abs_cos']),
        _common.fmt_stat(e['head_mean_abs_cos']),
        '—' if acc is None else f"{100 * acc['mean']:.2f} %",
        _common.fmt_rate(e.get('collision_rate')),
    ])
  data = summary['data']
  text = (f"scikit-learn digits ({data['train']} train / {data['test']} test "
          f"images). {s.describe()}. Mean ± std over seeds. Test accuracy on "
          'the held-out split; train loss: cross-entropy on the whole '
          'training set after the last step; head |cos|: off-diagonal |cos| '
          "between the head kernel's 10 class columns after training; hard: "
          'accepted share of the 45 head pairs, mean over steps.')
  if 'soft' in s.methods:
    cos = [e['head_mean_abs_cos']['mean'] for e in summary['results']]
    text += (' The soft collision multiplies the head gradient by 1 - c '
             '(which AdamW normalises away) and adds a repulsion weighted by '
             'the neurons\' |cos|, small here: the class neurons stay nearly '
             f'orthogonal (mean |cos| {min(cos):.2f} to {max(cos):.2f}).')
  text += '\n\n'
  text += _common.markdown_table(
      ['model', 'optimizer', 'collision', 'test accuracy (%)',
       'final train loss', 'head max |cos|', 'head mean |cos|',
       'hard: accepted / tested pairs',
       _common.RATE_HEADER], rows)
  text += '\n' + _verdict(summary) + '\n'
  if 'runtime_s' in summary:
    text += f"\nRun time: {summary['runtime_s']:.1f} s.\n"
  return text


def _verdict(summary: dict[str, Any]) -> str:
  """One honest sentence per (model, optimizer): do collisions change acc.?"""
  by_group: dict[tuple[str, str], dict[str, Any]] = {}
  for e in summary['results']:
    by_group.setdefault((e['model'], e['optimizer']), {})[e['method']] = e
  lines = []
  for (model, optimizer), by_method in by_group.items():
    plain = by_method.get('none')
    if plain is None:
      continue
    parts = []
    for method in ('soft', 'normed', 'hard'):
      if method not in by_method:
        continue
      e = by_method[method]
      diff = 100 * (e['test_accuracy']['mean'] - plain['test_accuracy']['mean'])
      noise = 100 * max(e['test_accuracy']['std'],
                        plain['test_accuracy']['std'])
      if abs(diff) <= noise:
        word = 'within one std of'
      elif diff > 0:
        word = 'above'
      else:
        word = 'below'
      parts.append(f'{METHOD_LABELS[method][2:]} {diff:+.2f} pt ({word} the '
                   'plain run)')
    if parts:
      lines.append(f'- {MODEL_LABELS[model]} + {OPTIMIZER_LABELS[optimizer]}: '
                   + '; '.join(parts) + '.')
  if not lines:
    return ''
  return ('Test accuracy with collisions minus without (percentage points, '
          'means over seeds; "within one std" means the difference is not '
          'larger than the seed-to-seed spread):\n' + '\n'.join(lines))


def figure(summary: dict[str, Any], results):
  """Bars: held-out accuracy and head mean ``|cos|``, mean ± std over seeds."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  from kinetix import plotting  # pylint: disable=g-import-not-at-top
  s = _common.settings_from_json(Settings, summary['settings'])
  acc_groups: dict[str, dict[str, Any]] = {}
  cos_groups: dict[str, dict[str, Any]] = {}
  for (model, optimizer, method), r in results.items():
    group = f'{MODEL_LABELS[model]}\n{OPTIMIZER_LABELS[optimizer]}'
    acc_groups.setdefault(group, {})[METHOD_LABELS[method]] = (
        100 * r['test_accuracy'])
    cos_groups.setdefault(group, {})[METHOD_LABELS[method]] = r['mean_abs_cos']
  lows = [np.mean(v) - 2 * np.std(v) for g in acc_groups.values()
          for v in g.values()]
  low = max(0.0, float(np.floor(min(lows) - 2.0)))
  fig = Figure(figsize=(max(6.0, 2.2 * len(acc_groups)), 6.4),
               layout='constrained')
  ax_acc, ax_cos = fig.subplots(2, 1)
  plotting.mean_std_bars(acc_groups, ax_acc, ylabel='test accuracy (%)',
                         title='held-out accuracy', ylim=(low, 100.0),
                         fmt='{:.1f}')
  plotting.mean_std_bars(cos_groups, ax_cos, ylabel='head mean |cos|',
                         title='condensation of the head kernel (10 class '
                               'neurons)', fmt='{:.3f}')
  highs = [np.mean(v) + np.std(v) for g in cos_groups.values()
           for v in g.values()]
  ax_cos.set_ylim(0.0, 1.3 * max(*highs, 0.001))
  for ax in (ax_acc, ax_cos):  # one row above the bars, not over them
    ax.legend(fontsize=7, loc='upper left', ncols=len(s.methods))
  fig.suptitle(s.describe(), fontsize=7, wrap=True)
  return fig


# --------------------------------------------------------------------------
# CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
  """The options of ``python -m kinetix digits``."""
  d = Settings()
  parser.add_argument('--models', default=','.join(d.models),
                      help=f'comma-separated, from: {", ".join(MODELS)}')
  parser.add_argument('--optimizers', default=','.join(d.optimizers),
                      help=f'comma-separated, from: {", ".join(OPTIMIZERS)}')
  parser.add_argument('--methods', default=','.join(d.methods),
                      help='comma-separated collisions on the head, from: '
                           f'{", ".join(METHODS)}')
  parser.add_argument('--epochs', type=_common.positive_int, default=None,
                      help=f'training epochs (default: {d.epochs}; --quick: 2)')
  parser.add_argument('--batch-size', type=_common.positive_int,
                      default=d.batch_size, help='minibatch size')
  parser.add_argument('--coll-coef', type=float, default=d.coll_coef,
                      help='collision coefficient c (soft and hard)')
  parser.add_argument('--distance-scale', type=float,
                      default=d.distance_scale,
                      help='hard collision kappa in exp(-kappa |w_i - w_j|) '
                           '(authors\' code 0.05; the paper\'s 1.0 accepts no '
                           'pair on this head)')
  _common.add_common_arguments(parser, default_seeds=d.seeds)


def settings_from_args(args: argparse.Namespace) -> Settings:
  """The :class:`Settings` of the command-line options."""
  return Settings(
      models=_common.names(args.models),
      optimizers=_common.names(args.optimizers),
      methods=_common.names(args.methods),
      seeds=_common.resolve_seeds(args, Settings.seeds),
      epochs=args.epochs or (2 if args.quick else Settings.epochs),
      batch_size=args.batch_size, coll_coef=args.coll_coef,
      distance_scale=args.distance_scale)


def run(args: argparse.Namespace) -> int:
  """``python -m kinetix digits``: runs, writes the files, prints."""
  def compute(settings):
    results = run_experiment(settings, progress=not args.no_progress,
                             fast_compile=bool(args.quick))
    return results, summarize(results, settings)

  def figures(results, summary, settings):
    del settings
    return {'digits.png': figure(summary, results)}

  return _common.run_command(
      args, NAME, settings_from_args=settings_from_args, compute=compute,
      markdown=markdown, figures=figures)
