r"""The KO paper's condensation study (Sec. 4.1, Fig. 2), reproducible on a CPU.

A two-layer 5-50-1 network fits 80 points of

.. math::  y = \sum_{k=1}^{5} 3.5 \sin(5 x_k + 1), \qquad
   x \sim U[-4, 2]^5,

from the small initialisation :math:`N(0, 0.005^2)` (every parameter) that
makes neurons *condense* (Zhou et al., 2022), trained full-batch with Adam,
Adam + soft collision (the paper's, and the authors' norm-matched ``wg_e``
type) and Adam + hard collision on the hidden layer's kernel. We record the
cosine similarities of the hidden neurons' input weights (the kernel's
columns, bias excluded) at every step, and each collision's own
Theorem 3.3 rate (how much it changes ``d mean|cos| / dη``), for several
seeds at once (``vmap``; one ``lax.scan`` over steps, no host round trips).

The paper gives neither the learning rate, nor ``coll_coef``, nor the
number of steps beyond "epoch 100" in Fig. 2: the defaults here are
``lr = 5e-4``, 100 full-batch steps (= epochs), ``coll_coef = 0.1`` (the
authors' code) and kinetix's default ``distance_scale = 0.05`` (with
weights this small, ``exp(-κ|w_i − w_j|) ≈ 1`` for the paper's κ = 1 too).
Every figure and table states them.

Run it with ``python -m kinetix condensation``; programmatic use::

    from kinetix.experiments import condensation
    settings = condensation.Settings(steps=100, seeds=4)
    results = condensation.run_experiment(settings)
    summary = condensation.summarize(results, settings)
"""

import argparse
import dataclasses
import time
from collections.abc import Callable
from typing import Any

from kinetix.experiments import _common

NAME = 'condensation'

METHODS = ('adam', 'soft', 'normed', 'hard')
METHOD_LABELS = {'adam': 'Adam', 'soft': 'Adam + soft',
                 'normed': 'Adam + soft, norm-matched', 'hard': 'Adam + hard'}


def _activations() -> dict[str, Callable[[Any], Any]]:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  return {
      'tanh': jnp.tanh,
      'xtanh': lambda z: z * jnp.tanh(z),
      'relu': jax.nn.relu,
      'sigmoid': jax.nn.sigmoid,
      'softplus': jax.nn.softplus,
      'gelu': jax.nn.gelu,
      'silu': jax.nn.silu,
      'sin': jnp.sin,
  }


ACTIVATIONS = ('tanh', 'xtanh', 'relu', 'sigmoid', 'softplus', 'gelu', 'silu',
               'sin')


@dataclasses.dataclass(frozen=True)
class Settings:
  """Everything that defines one run (written into the JSON and figures)."""
  activations: tuple[str, ...] = ('tanh', 'xtanh')
  methods: tuple[str, ...] = METHODS
  seeds: int = 8
  steps: int = 100
  learning_rate: float = 5e-4
  coll_coef: float = 0.1
  distance_scale: float = 0.05      # kinetix's default (the authors' code)
  width: int = 50
  input_dim: int = 5
  n_samples: int = 80
  init_std: float = 0.005
  data_seed: int = 0

  def __post_init__(self):
    """Rejects unknown names and out-of-range numbers (``ValueError``)."""
    for a in self.activations:
      if a not in ACTIVATIONS:
        raise ValueError(f'unknown activation {a!r}; choose from '
                         f'{", ".join(ACTIVATIONS)}')
    for m in self.methods:
      if m not in METHODS:
        raise ValueError(f'unknown method {m!r}; choose from '
                         f'{", ".join(METHODS)}')
    if self.seeds < 1 or self.steps < 1 or self.width < 2:
      raise ValueError('seeds and steps must be >= 1 and width >= 2')

  def describe(self) -> str:
    """One line for the tables, figures and the console."""
    return (f'5-{self.width}-1 net, init N(0, {self.init_std}²), '
            f'{self.n_samples} points, full-batch Adam lr '
            f'{self.learning_rate:g}, '
            f'{self.steps} steps; collisions on the hidden kernel, coll_coef '
            f'{self.coll_coef:g}, hard distance_scale {self.distance_scale:g}; '
            f'{self.seeds} seeds')


# --------------------------------------------------------------------------
# Problem, model, optimizers


def make_data(settings: Settings):
  """``(x, y)``: ``n_samples`` points of U[-4, 2]^d and Σ_k 3.5 sin(5x_k+1)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  x = jax.random.uniform(jax.random.key(settings.data_seed),
                         (settings.n_samples, settings.input_dim),
                         minval=-4.0, maxval=2.0)
  y = jnp.sum(3.5 * jnp.sin(5.0 * x + 1.0), axis=1, keepdims=True)
  return x, y


def init_params(key, settings: Settings):
  """Every parameter ~ N(0, init_std²), as in the paper."""
  import jax  # pylint: disable=g-import-not-at-top
  k = jax.random.split(key, 4)
  std, d, m = settings.init_std, settings.input_dim, settings.width
  normal = jax.random.normal
  return {
      'hidden': {'kernel': std * normal(k[0], (d, m)),
                 'bias': std * normal(k[1], (m,))},
      'output': {'kernel': std * normal(k[2], (m, 1)),
                 'bias': std * normal(k[3], (1,))},
  }


def apply(params, x, activation: Callable[[Any], Any]):
  """The 5-50-1 network's output ``(n, 1)`` for inputs ``x``, ``(n, 5)``."""
  h = activation(x @ params['hidden']['kernel'] + params['hidden']['bias'])
  return h @ params['output']['kernel'] + params['output']['bias']


def make_optimizer(method: str, settings: Settings, key: Any = 0
                   ) -> _common.WithCollision:
  """Adam, preceded by the collision of ``method`` on ``hidden/kernel``.

  ``normed``: the authors' norm-matched ``wg_e`` type (the repulsion
  rescaled to ``coll_coef`` times the gradient's norm, diagonal excluded,
  negative products dropped).
  """
  import optax  # pylint: disable=g-import-not-at-top
  from kinetix import kinetic, masks  # pylint: disable=g-import-not-at-top
  mask = masks.by_path('hidden/kernel')
  if method == 'adam':
    collision = optax.identity()
  elif method == 'soft':
    collision = kinetic.soft_collision(settings.coll_coef, mask=mask, key=key)
  elif method == 'normed':
    collision = kinetic.soft_collision(
        settings.coll_coef, mask=mask, key=key, include_self=False,
        normalize=True, min_similarity=0.0)
  elif method == 'hard':
    n = settings.width
    # All n(n-1)/2 pairs fit the sparse pair list: under vmap over seeds a
    # lax.cond between the sparse and the dense path would run both.
    collision = kinetic.hard_collision(
        settings.coll_coef, mask=mask, key=key,
        distance_scale=settings.distance_scale, max_pairs=n * (n - 1) // 2)
  else:
    raise ValueError(f'unknown method {method!r}')
  return _common.WithCollision(collision, optax.adam(settings.learning_rate))


def _hidden_view(tree):
  """The collided layer of a tree: the hidden kernel, ``(1, 5, width)``."""
  return {'hidden': tree['hidden']['kernel'][None]}


def train(activation: str, method: str, settings: Settings) -> dict[str, Any]:
  """Trains all seeds at once; returns NumPy arrays.

  Returns:
    ``loss`` (seeds, steps): the loss before each step; ``max_abs_cos`` and
    ``mean_abs_cos`` (seeds, steps + 1): the hidden layer's condensation
    before each step and after the last; ``accepted_fraction`` and
    ``relative_change`` (seeds, steps): from the collision state (zeros for
    Adam); ``collision_rate`` (seeds, steps): the collision's own
    Theorem 3.3 rate (:func:`kinetix.experiments._common.collision_rate`,
    zeros for Adam); ``final_loss`` (seeds,); ``cosine`` (seeds, width,
    width): the final cosine matrix.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from kinetix import metrics  # pylint: disable=g-import-not-at-top

  act = _activations()[activation]
  x, y = make_data(settings)

  def loss_fn(params):
    return jnp.mean((apply(params, x, act) - y) ** 2)

  def condensation(params):
    stats = metrics.condensation({'hidden': params['hidden']})['hidden/kernel']
    return stats['max_abs_cos'], stats['mean_abs_cos']

  def one_seed(seed):
    base = jax.random.key(seed)
    params = init_params(base, settings)
    tx = make_optimizer(method, settings, key=jax.random.fold_in(base, 1))
    state = tx.init(params)

    def step(carry, _):
      params, state = carry
      loss, grads = jax.value_and_grad(loss_fn)(params)
      updates, state, plain = tx.update(grads, state, params)
      rel, acc = _common.collision_stats(state)
      rate = (jnp.zeros([], jnp.float32) if method == 'adam' else
              _common.collision_rate(params, updates, plain, _hidden_view))
      logs = (loss, *condensation(params), acc, rel, rate)
      return (optax.apply_updates(params, updates), state), logs

    (params, _), (loss, mx, mn, acc, rel, rate) = jax.lax.scan(
        step, (params, state), None, length=settings.steps)
    last_mx, last_mn = condensation(params)
    return {
        'loss': loss,
        'final_loss': loss_fn(params),
        'max_abs_cos': jnp.concatenate([mx, last_mx[None]]),
        'mean_abs_cos': jnp.concatenate([mn, last_mn[None]]),
        'accepted_fraction': acc,
        'relative_change': rel,
        'collision_rate': rate,
        'cosine': metrics.neuron_cosine(params['hidden']['kernel']),
    }

  out = jax.jit(jax.vmap(one_seed))(jnp.arange(settings.seeds))
  return {k: np.asarray(v) for k, v in jax.device_get(out).items()}


def run_experiment(settings: Settings, *, progress: bool = False
                   ) -> dict[str, dict[str, dict[str, Any]]]:
  """``results[activation][method]`` = :func:`train`'s arrays (+ seconds)."""
  results: dict[str, dict[str, dict[str, Any]]] = {}
  runs = [(a, m) for a in settings.activations for m in settings.methods]
  bar = _common.progress(total=len(runs), desc='condensation',
                         disable=not progress)
  for activation, method in runs:
    bar.set_postfix_str(f'{activation}/{method}')
    start = time.perf_counter()
    res = train(activation, method, settings)
    res['seconds'] = time.perf_counter() - start
    results.setdefault(activation, {})[method] = res
    bar.update(1)
  bar.close()
  return results


# --------------------------------------------------------------------------
# Summaries, tables, figures


def summarize(results, settings: Settings) -> dict[str, Any]:
  """JSON-able numbers: per activation and method, mean ± std over seeds."""
  table: dict[str, Any] = {}
  for activation, by_method in results.items():
    table[activation] = {}
    for method, r in by_method.items():
      entry = {
          'max_abs_cos': _common.seed_stats(r['max_abs_cos'][:, -1]),
          'mean_abs_cos': _common.seed_stats(r['mean_abs_cos'][:, -1]),
          'final_loss': _common.seed_stats(r['final_loss']),
          'init_mean_abs_cos': _common.seed_stats(r['mean_abs_cos'][:, 0]),
          'seconds': float(r['seconds']),
      }
      if method != 'adam':
        entry['relative_change'] = _common.seed_stats(
            r['relative_change'].mean(axis=1))
        entry['collision_rate'] = _common.rate_stats(r['collision_rate'])
      if method == 'hard':
        entry['accepted_fraction'] = _common.seed_stats(
            r['accepted_fraction'].mean(axis=1))
      table[activation][method] = entry
  return {'settings': dataclasses.asdict(settings), 'results': table}


def markdown(summary: dict[str, Any]) -> str:
  """The Markdown table and its caption, from :func:`summarize`'s output."""
  s = _common.settings_from_json(Settings, summary['settings'])
  rows = []
  for activation, by_method in summary['results'].items():
    for method, e in by_method.items():
      acc = e.get('accepted_fraction')
      rows.append([
          activation, METHOD_LABELS[method],
          _common.fmt_stat(e['max_abs_cos']),
          _common.fmt_stat(e['mean_abs_cos']),
          _common.fmt_stat(e['final_loss'], 2),
          '—' if acc is None else f"{100 * acc['mean']:.2f} %",
          _common.fmt_rate(e.get('collision_rate')),
      ])
  init = next(iter(next(iter(summary['results'].values())).values()))
  text = (f'Condensation of the hidden layer after {s.steps} steps '
          f'({s.describe()}). Mean ± std over seeds; |cos| between the '
          f"hidden neurons' input weights, off-diagonal. At initialisation "
          f"mean |cos| = {init['init_mean_abs_cos']['mean']:.3f}.\n\n")
  text += _common.markdown_table(
      ['activation', 'optimizer', 'max |cos|', 'mean |cos|', 'final MSE',
       'hard: pairs accepted / step',
       _common.RATE_HEADER], rows)
  if 'runtime_s' in summary:
    text += f"\nRun time: {summary['runtime_s']:.1f} s.\n"
  return text


def representative_seed(results) -> int:
  """The seed whose final mean ``|cos|`` is closest to the mean over seeds.

  Distances are in units of each configuration's std over seeds, summed over
  the (activation, optimizer) panels: the heat maps of this seed look like
  the table, not like an outlier.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  score = 0.0
  for by_method in results.values():
    for r in by_method.values():
      final = np.asarray(r['mean_abs_cos'])[:, -1]
      score = score + np.abs(final - final.mean()) / (final.std() + 1e-6)
  return int(np.argmin(score))


def heatmap_figure(results, settings: Settings, seed: int | None = None):
  """Fig. 2: rows are optimizers, columns activations; one seed's matrices.

  ``seed=None``: the :func:`representative_seed`; the title names it.
  """
  from kinetix import plotting  # pylint: disable=g-import-not-at-top
  which = 'seed'
  if seed is None:
    seed = representative_seed(results)
    which = 'the seed closest to the mean over seeds:'
  acts = list(results)
  methods = [m for m in METHODS if m in results[acts[0]]]
  mats, notes = [], []
  for m in methods:
    mats.append([results[a][m]['cosine'][seed] for a in acts])
    notes.append([
        f"mean |cos| {results[a][m]['mean_abs_cos'][seed, -1]:.2f}"
        f" (seeds {results[a][m]['mean_abs_cos'][:, -1].mean():.2f}"
        f" ± {results[a][m]['mean_abs_cos'][:, -1].std():.2f})" for a in acts
    ])
  import textwrap  # pylint: disable=g-import-not-at-top
  # Characters that fit above the panels; the settings are in the
  # Markdown table and under the curves, not in this title.
  width = max(48, 30 * len(acts))
  title = textwrap.fill(
      f'Hidden-neuron |cos| after {settings.steps} steps ({which} {seed}; '
      f'spectral order)', width)
  return plotting.similarity_grid(
      mats, [METHOD_LABELS[m] for m in methods], acts, title=title,
      annotations=notes, cell_size=2.4)


def _wide_range(curves) -> bool:
  """True for curves spanning more than a decade (then a log axis).

  On a narrower range a log axis has no labelled ticks.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  values = np.concatenate([np.ravel(c) for c in curves])
  values = values[np.isfinite(values) & (values > 0)]
  return values.size > 0 and values.max() > 10 * values.min()


def curves_figure(results, settings: Settings):
  """Mean ``|cos|`` and loss vs step, mean ± std over seeds, per activation."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  from kinetix import plotting  # pylint: disable=g-import-not-at-top
  acts = list(results)
  fig = Figure(figsize=(3.6 * len(acts), 5.4), layout='constrained')
  axes = fig.subplots(2, len(acts), squeeze=False)
  for c, a in enumerate(acts):
    plotting.training_curves(
        {METHOD_LABELS[m]: r['mean_abs_cos'] for m, r in results[a].items()},
        axes[0, c], ylabel='mean |cos| (hidden)', title=a)
    plotting.training_curves(
        {METHOD_LABELS[m]: r['loss'] for m, r in results[a].items()},
        axes[1, c], ylabel='MSE (training set)', logy=_wide_range(
            [r['loss'] for r in results[a].values()]))
  import textwrap  # pylint: disable=g-import-not-at-top
  fig.suptitle(textwrap.fill(settings.describe(), 40 * len(acts) + 10),
               fontsize=8)
  return fig


# --------------------------------------------------------------------------
# CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
  """The options of ``python -m kinetix condensation``."""
  d = Settings()
  parser.add_argument('--activations', default=','.join(d.activations),
                      help=f'comma-separated, from: {", ".join(ACTIVATIONS)}')
  parser.add_argument('--methods', default=','.join(d.methods),
                      help=f'comma-separated, from: {", ".join(METHODS)}')
  parser.add_argument('--steps', type=_common.positive_int, default=None,
                      help=f'full-batch Adam steps (= epochs) (default: '
                           f'{d.steps}; --quick: 10)')
  parser.add_argument('--lr', type=float, default=d.learning_rate,
                      help='Adam learning rate')
  parser.add_argument('--coll-coef', type=float, default=d.coll_coef,
                      help='collision coefficient c (soft and hard)')
  parser.add_argument('--distance-scale', type=float,
                      default=d.distance_scale,
                      help='hard collision kappa in exp(-kappa |w_i - w_j|) '
                           '(paper 1.0, authors\' code 0.05)')
  parser.add_argument('--width', type=_common.positive_int, default=d.width,
                      help='hidden neurons')
  parser.add_argument('--init-std', type=float, default=d.init_std,
                      help='std of the Gaussian initialisation')
  _common.add_common_arguments(parser, default_seeds=d.seeds)


def settings_from_args(args: argparse.Namespace) -> Settings:
  """The :class:`Settings` of the command-line options."""
  return Settings(
      activations=_common.names(args.activations),
      methods=_common.names(args.methods),
      seeds=_common.resolve_seeds(args, Settings.seeds),
      steps=args.steps or (10 if args.quick else Settings.steps),
      learning_rate=args.lr, coll_coef=args.coll_coef,
      distance_scale=args.distance_scale, width=args.width,
      init_std=args.init_std)


def run(args: argparse.Namespace) -> int:
  """``python -m kinetix condensation``: runs, writes the files, prints."""
  def compute(settings):
    results = run_experiment(settings, progress=not args.no_progress)
    return results, summarize(results, settings)

  def figures(results, summary, settings):
    del summary
    return {'condensation.png': heatmap_figure(results, settings),
            'condensation_curves.png': curves_figure(results, settings)}

  return _common.run_command(
      args, NAME, settings_from_args=settings_from_args, compute=compute,
      markdown=markdown, figures=figures)
