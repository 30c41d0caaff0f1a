"""Test ordering for ``pytest -n 2`` (``--dist worksteal``, see pyproject).

worksteal gives each worker one half of the collected items and steals
from the end of a queue only. The two long subprocess modules go to the
front of each half, so that both workers begin with one of them, and their
module-scoped fixture (one subprocess run shared by the module's tests) runs
once.
"""

import os

# XLA:CPU compile time dominates this suite (hundreds of small programs, most
# run once). With LLVM's optimisations off, compiling takes about 40 % less
# CPU; the programs compute the same results (references are compared with
# tolerances, and paths that must agree bit for bit run under the same
# flags). Speed is measured by ``python -m kinetix bench``, never here.
# The subprocesses of the suite inherit the flag.
FAST_COMPILE_FLAG = '--xla_backend_optimization_level=0'
if FAST_COMPILE_FLAG not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' ' +
                             FAST_COMPILE_FLAG).strip()

FIRST_HALF = 'test_sharding.py'
SECOND_HALF = 'test_multiprocess.py'


def pytest_collection_modifyitems(config, items):
  del config
  first = [i for i in items if i.path.name == FIRST_HALF]
  second = [i for i in items if i.path.name == SECOND_HALF]
  rest = [i for i in items if i.path.name not in (FIRST_HALF, SECOND_HALF)]
  half = len(items) // 2
  head = first + rest[:max(0, half - len(first))]
  items[:] = head + second + rest[len(head) - len(first):]


def pytest_configure(config):
  """A persistent XLA compilation cache shared by the workers and the
  subprocesses of one run: many tests build the same optimizer in a fresh
  closure, which misses ``jax.jit``'s in-memory cache but compiles to the
  same program. Entries are keyed by the program's fingerprint, the
  compile options and the JAX version, so a stale entry is never used."""
  if getattr(config, 'cache', None) is None:  # -p no:cacheprovider
    return
  path = str(config.cache.mkdir('jax-compilation-cache'))
  os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', path)
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')
