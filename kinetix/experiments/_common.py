"""Shared plumbing of the experiments: options, progress bars, result files."""

import argparse
import datetime
import json
import math
import pathlib
import platform
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

T = TypeVar('T')

DEFAULT_OUT = 'kinetix-out'
# XLA compile options for --quick runs: about 3x faster to compile, 2x slower
# to run.
FAST_COMPILE: dict[str, Any] = {'xla_backend_optimization_level': 0}


def positive_int(text: str) -> int:
  value = int(text)
  if value < 1:
    raise argparse.ArgumentTypeError(f'expected a positive integer, got {text}')
  return value


def add_common_arguments(parser: argparse.ArgumentParser, *,
                         default_seeds: int) -> None:
  """``--out``, ``--seeds``, ``--quick``, ``--no-progress``, ``--no-plot``."""
  group = parser.add_argument_group('common options')
  group.add_argument(
      '--out', type=pathlib.Path, default=pathlib.Path(DEFAULT_OUT),
      help=f'output directory for PNG/JSON/Markdown (default: {DEFAULT_OUT}/)')
  group.add_argument(
      '--seeds', type=positive_int, default=None,
      help=f'number of seeds, run as 0..N-1 in one vmapped computation '
           f'(default: {default_seeds}; --quick: 2)')
  group.add_argument(
      '--quick', action='store_true',
      help='tiny sizes for a smoke test (CI): seconds, not meaningful numbers')
  group.add_argument('--no-progress', action='store_true',
                     help='no progress bar (it is off anyway when stderr is '
                          'not a terminal)')
  group.add_argument('--no-plot', action='store_true',
                     help='skip the figures (no matplotlib needed)')


def plotting_unavailable(args: argparse.Namespace, command: str) -> bool:
  """True, after one line on stderr, when figures need a missing matplotlib.

  Checked before any work is done; the caller then exits with 2.
  """
  import importlib.util  # pylint: disable=g-import-not-at-top
  if args.no_plot or importlib.util.find_spec('matplotlib') is not None:
    return False
  print(f'kinetix {command}: drawing the figures needs matplotlib; install '
        f'the extras with: pip install "kinetix-optax[examples]", or pass '
        f'--no-plot', file=sys.stderr)
  return True


class _PlainProgress:
  """What the experiments use of a tqdm bar, as plain lines on stderr.

  The fallback when tqdm is not installed (a core install): one line per
  finished run when stderr is a terminal, nothing otherwise or when off.
  """

  def __init__(self, total: int | None, desc: str, disable: bool):
    self.total, self.desc, self.n, self.postfix = total, desc, 0, ''
    self.enabled = not disable and sys.stderr.isatty()

  def set_postfix_str(self, text: str) -> None:
    self.postfix = text

  def update(self, n: int = 1) -> None:
    self.n += n
    if self.enabled:
      print(f'{self.desc}: {self.n}/{self.total} {self.postfix}',
            file=sys.stderr, flush=True)

  def close(self) -> None:
    pass


def progress(*, total: int | None = None, desc: str = '',
             disable: bool = False):
  """A tqdm bar on stderr, off when asked or when stderr is not a terminal.

  Without tqdm (it comes with the ``examples`` extra), plain progress lines.
  """
  try:
    from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
  except ImportError:
    return _PlainProgress(total, desc, disable)
  return tqdm(total=total, desc=desc, unit='run', leave=True,
              dynamic_ncols=True, disable=True if disable else None,
              file=sys.stderr)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
  """Mean and (population) standard deviation of per-seed numbers."""
  vals = [float(v) for v in values]
  mean = sum(vals) / len(vals)
  std = math.sqrt(sum((v - mean) ** 2 for v in vals) / len(vals))
  return mean, std


def seed_stats(values: Sequence[float]) -> dict[str, Any]:
  """``{'mean', 'std', 'per_seed'}`` of per-seed numbers, for the JSON."""
  vals = [float(v) for v in values]
  mean, std = mean_std(vals)
  return {'mean': mean, 'std': std, 'per_seed': vals}


def fmt_stat(stat: Mapping[str, Any], digits: int = 3,
             scale: float = 1.0) -> str:
  """``'mean ± std'`` of a :func:`seed_stats` entry, times ``scale``."""
  return (f"{scale * stat['mean']:.{digits}f} ± "
          f"{scale * stat['std']:.{digits}f}")


def environment() -> dict[str, Any]:
  """What the numbers were measured on (written into every JSON)."""
  import jax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  import kinetix  # pylint: disable=g-import-not-at-top
  return {
      'date': datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec='seconds'),
      'kinetix': kinetix.__version__,
      'jax': jax.__version__,
      'optax': optax.__version__,
      'python': platform.python_version(),
      'platform': platform.platform(),
      'devices': [str(d) for d in jax.devices()],
  }


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
  def cell(c: Any) -> str:  # a literal '|' (as in |cos|) would split a cell
    return str(c).replace('|', '\\|')
  lines = ['| ' + ' | '.join(cell(h) for h in header) + ' |',
           '| ' + ' | '.join('---' for _ in header) + ' |']
  lines += ['| ' + ' | '.join(cell(c) for c in row) + ' |' for row in rows]
  return '\n'.join(lines) + '\n'


def write_json(path: pathlib.Path, obj: Any) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(obj, indent=2, allow_nan=False) + '\n')


def write_text(path: pathlib.Path, text: str) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(text)


def save_figure(fig: Any, path: pathlib.Path, dpi: int = 130) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=dpi)


def resolve_seeds(args: argparse.Namespace, default: int) -> int:
  if args.seeds is not None:
    return args.seeds
  return 2 if args.quick else default


def settings_from_json(cls: type[T], fields: Mapping[str, Any]) -> T:
  """A settings dataclass from its ``dataclasses.asdict`` in a JSON file.

  JSON has no tuples: lists become tuples again.
  """
  return cls(**{k: tuple(v) if isinstance(v, list) else v
                for k, v in fields.items()})


def names(text: str) -> tuple[str, ...]:
  """The items of a comma-separated option, e.g. ``'tanh, xtanh'``."""
  return tuple(t.strip() for t in text.split(',') if t.strip())


def run_command(
    args: argparse.Namespace, command: str, *,
    settings_from_args: Callable[[argparse.Namespace], Any],
    compute: Callable[[Any], tuple[Any, dict[str, Any]]],
    markdown: Callable[[dict[str, Any]], str],
    figures: Callable[[Any, dict[str, Any], Any], Mapping[str, Any]],
) -> int:
  """The body of every experiment's ``run(args)``.

  Checks that figures can be drawn, builds the settings (a bad option is one
  line on stderr and exit code 2), runs ``compute(settings) -> (results,
  summary)``, adds the run time, the environment and ``quick`` to the
  summary, and writes ``<command>.json``, ``<command>.md`` and, unless
  ``--no-plot``, each ``{file name: figure}`` of ``figures(results, summary,
  settings)`` to ``--out``.

  Returns:
    The exit code: 0, or 2 for bad options or a missing matplotlib.
  """
  if plotting_unavailable(args, command):
    return 2
  try:
    settings = settings_from_args(args)
  except ValueError as e:
    print(f'kinetix {command}: {e}', file=sys.stderr)
    return 2
  print(f'kinetix {command}: {settings.describe()}', flush=True)
  start = time.perf_counter()
  results, summary = compute(settings)
  summary['runtime_s'] = time.perf_counter() - start
  summary['environment'] = environment()
  summary['quick'] = bool(args.quick)
  out = args.out
  files = [out / f'{command}.json', out / f'{command}.md']
  write_json(files[0], summary)
  table = markdown(summary)
  write_text(files[1], table)
  if not args.no_plot:
    for name, fig in figures(results, summary, settings).items():
      save_figure(fig, out / name)
      files.append(out / name)
  # The settings line was printed first: the table does not repeat it.
  described = settings.describe()
  print(table.replace(f' ({described})', '').replace(
      described, '(Settings above.)'))
  print('wrote ' + ', '.join(str(f) for f in files))
  return 0


# --------------------------------------------------------------------------
# Optimizers with a collision, and the collision's own correlation rate


class WithCollision:
  """``pre → collision → base`` as one Optax chain, and the same without it.

  The experiments need both from one optimizer state: the update a
  collision produces and the update the chain would produce without it (for
  :func:`collision_rate`). ``pre`` is an optional first step (e.g. gradient
  clipping); ``collision`` may be ``optax.identity()``.
  """

  def __init__(self, collision: Any, base: Any, pre: Any = None):
    import optax  # pylint: disable=g-import-not-at-top
    self.pre = optax.identity() if pre is None else pre
    self.collision = collision
    self.base = base
    self.tx = optax.chain(self.pre, collision, base)

  def init(self, params: Any) -> Any:
    return self.tx.init(params)

  def update(self, grads: Any, state: Any, params: Any):
    """``(updates, new state, plain updates)``: plain skips the collision."""
    updates, new_state = self.tx.update(grads, state, params)
    plain, _ = self.pre.update(grads, state[0], params)
    plain, _ = self.base.update(plain, state[2], params)
    return updates, new_state, plain

  @staticmethod
  def collision_state(state: Any) -> Any:
    """The collision's own state inside the chain's state."""
    return state[1]


def collision_stats(state: Any) -> tuple[Any, Any]:
  """``(relative_change, accepted_fraction)`` of a collision state (0s)."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  coll = WithCollision.collision_state(state)
  zero = jnp.zeros([], jnp.float32)
  return (getattr(coll, 'relative_change', zero),
          getattr(coll, 'accepted_fraction', zero))


def collision_rate(params: Any, collided: Any, plain: Any,
                   view: Callable[[Any], Mapping[str, Any]]) -> Any:
  """The collision's own Theorem 3.3 rate, averaged over the collided layers.

  ``view(tree)`` picks the collided layers of a tree as ``{name: (L, D, N)
  array}`` (layers along the leading axis, neurons last). The result is the
  mean over them of :func:`kinetix.metrics.correlation_rate` along the
  collided update minus the same along the plain update: ``d/dη`` of the
  layers' mean ``|cos|`` that the collision adds. Negative: the collision
  decorrelates the neurons, as the paper's Theorem 3.3 says it should for a
  small enough learning rate.
  """
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from kinetix import metrics  # pylint: disable=g-import-not-at-top
  w = view(params)
  with_c = metrics.correlation_rate(w, view(collided), layer_axes=0)
  without = metrics.correlation_rate(w, view(plain), layer_axes=0)
  return jnp.mean(jnp.stack([with_c[k] - without[k] for k in with_c]))


def rate_stats(rates: Any) -> dict[str, Any]:
  """Per-seed ``(seeds, steps)`` rates → their mean, the share of steps <0.

  Also the share > 0 (a step where a hard collision accepted no pair has a
  rate of exactly 0, neither).
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  r = np.asarray(rates, np.float64)
  return {'rate': seed_stats(r.mean(axis=1)),
          'negative_fraction': seed_stats((r < 0).mean(axis=1)),
          'positive_fraction': seed_stats((r > 0).mean(axis=1))}


RATE_HEADER = "collision's d mean|cos|/dη: mean (steps < 0 / > 0)"


def fmt_rate(entry: Mapping[str, Any] | None) -> str:
  """``'rate (x % / y %)'`` of a :func:`rate_stats` entry; '—' if none."""
  if entry is None:
    return '—'
  return (f"{entry['rate']['mean']:+.1e} "
          f"({100 * entry['negative_fraction']['mean']:.0f} % / "
          f"{100 * entry['positive_fraction']['mean']:.0f} %)")
