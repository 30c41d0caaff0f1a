"""``python -m kinetix``: the experiments and the benchmark.

Each subcommand lives in ``kinetix/experiments/<name>.py``, which exposes
``add_arguments(parser)`` and ``run(args) -> int``. Only the chosen module is
imported, so ``--help`` is fast and matplotlib is needed only where figures
are drawn.
"""

import argparse
import importlib
import sys
import types
from collections.abc import Sequence

# name -> (one-line help, description)
COMMANDS = {
    'condensation': (
        "the KO paper's Sec. 4.1 condensation study (5-50-1 net, Fig. 2)",
        'Fits sum_k 3.5 sin(5 x_k + 1) on 80 points of U[-4, 2]^5 with a '
        '5-50-1 network (init N(0, 0.005^2)), full-batch Adam vs Adam + soft '
        'collision vs Adam + hard collision on the hidden layer, for tanh and '
        'xtanh (and others with --activations), several seeds at once. Writes '
        'the '
        'similarity heat maps (PNG), curves, and a JSON/Markdown table of '
        'max/mean |cos| of the hidden neurons and the loss.'),
    'digits': (
        "MLP and CNN on scikit-learn's digits, with/without collisions",
        'Trains an MLP and a small CNN on load_digits (shipped with '
        'scikit-learn, no download) with AdamW and SGD, each without and with '
        'soft/hard collision on the classifier head, over several seeds; '
        'writes held-out accuracy (mean ± std), head condensation, a PNG and '
        'a JSON/Markdown table.'),
    'lm': (
        'KO on a byte-level GPT (Flax NNX) trained on Python\'s own docs',
        "Trains a small GPT on Python's pydoc_data.topics (bytes as tokens, "
        'validation split by topic; --text PATH for any UTF-8 file) with '
        'AdamW, and with soft/hard collisions on the lm_head and soft '
        'collisions on the stacked MLP kernels (layer_axes=0), over several '
        'seeds; writes validation bits per byte, condensation, collision '
        'statistics and time per step (JSON/Markdown/PNG).'),
    'bench': (
        'the performance benchmark (ratios against references, JSON)',
        'Times KO collisions against the matrix products they need, Muon and '
        'plain training steps; reports ratios measured in one process.'),
}


class _CommandUnavailable(Exception):
  pass


# Packages of the ``examples`` extra that some commands need.
OPTIONAL = ('matplotlib', 'sklearn', 'tqdm', 'flax')


def _missing(command: str, module: str) -> str:
  return (f'kinetix {command}: needs the optional package '
          f'{module.split(".", maxsplit=1)[0]!r}; install the extras with: '
          f'pip install "kinetix-optax[examples]"')


def _load(name: str):
  module_name = f'kinetix.experiments.{name}'
  try:
    return importlib.import_module(module_name)
  except ModuleNotFoundError as e:
    if e.name == module_name:
      raise _CommandUnavailable(
          f"kinetix {name}: this installation has no '{module_name}' module, "
          f'so the {name!r} command is not available yet.') from e
    if e.name and e.name.split('.')[0] in OPTIONAL:
      raise _CommandUnavailable(_missing(name, e.name)) from e
    raise


def _chosen_command(argv: Sequence[str]) -> str | None:
  """The subcommand named in ``argv`` (the first non-option token)."""
  for token in argv:
    if token == '--':
      return None
    if not token.startswith('-'):
      return token if token in COMMANDS else None
  return None


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
  """Appends ``(default: …)`` once: not where the help already says it.

  Options whose default depends on ``--quick`` state it in their help
  (``(default: 16; --quick: 8)``); ``None`` defaults and flags show none.
  """

  def _get_help_string(self, action):
    text = action.help or ''
    if ('(default' in text or action.nargs == 0
        or action.default in (None, argparse.SUPPRESS)):
      return text
    return super()._get_help_string(action)


def build_parser(
    argv: Sequence[str] = (),
) -> tuple[argparse.ArgumentParser, types.ModuleType | None]:
  """The parser; only the subcommand named in ``argv`` gets its options.

  Returns ``(parser, module)`` where ``module`` is the loaded experiment
  module of that subcommand (``None`` when none was named).

  Raises:
    _CommandUnavailable: the named subcommand's module cannot be imported.
  """
  parser = argparse.ArgumentParser(
      prog='python -m kinetix',
      description='kinetix experiments: physics-inspired optimizers (KO '
                  'collisions) on small, fully reproducible problems.',
      epilog='Run "python -m kinetix COMMAND --help" for the options of one '
             'command. Outputs go to --out (default kinetix-out/).')
  from kinetix import __version__  # pylint: disable=g-import-not-at-top
  parser.add_argument('--version', action='version',
                      version=f'kinetix {__version__}')
  sub = parser.add_subparsers(dest='command', metavar='COMMAND',
                              title='commands')
  subparsers = {}
  for name, (help_text, description) in COMMANDS.items():
    subparsers[name] = sub.add_parser(
        name, help=help_text, description=description,
        formatter_class=_DefaultsFormatter)
  chosen = _chosen_command(argv)
  module = None
  if chosen is not None:
    module = _load(chosen)
    module.add_arguments(subparsers[chosen])
  return parser, module


def main(argv: Sequence[str] | None = None) -> int:
  """Entry point of ``python -m kinetix`` and the ``kinetix`` script."""
  argv = list(sys.argv[1:] if argv is None else argv)
  try:
    parser, module = build_parser(argv)
  except _CommandUnavailable as e:
    print(str(e), file=sys.stderr)
    return 2
  args = parser.parse_args(argv)
  if args.command is None or module is None:
    parser.print_help()
    return 2
  try:
    return int(module.run(args) or 0)
  except ModuleNotFoundError as e:
    # One line and exit code 2 for a missing extra, not a traceback.
    if e.name and e.name.split('.')[0] in OPTIONAL:
      print(_missing(args.command, e.name), file=sys.stderr)
      return 2
    raise


if __name__ == '__main__':
  sys.exit(main())
