"""Test ordering for ``pytest -n 2`` (``--dist worksteal``, see pyproject).

worksteal gives each worker one half of the collected items and steals
from the end of a queue only. The two long subprocess modules go to the
front of each half, so that both workers begin with one of them, and their
module-scoped fixture (one subprocess run shared by the module's tests) runs
once.
"""

import os

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
  if config.cache is None:
    return
  path = str(config.cache.mkdir('jax-compilation-cache'))
  os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', path)
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')
