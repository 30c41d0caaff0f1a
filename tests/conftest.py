"""Test ordering for ``pytest -n 2`` (``--dist worksteal``, see pyproject).

worksteal gives each worker one half of the collected items and steals
from the end of a queue only. The two long subprocess modules go to the
front of each half, so that both workers begin with one of them, and their
module-scoped fixture (one subprocess run shared by the module's tests) runs
once.
"""

import os
import subprocess
import sys

# XLA:CPU compile time dominates this suite (hundreds of small programs, most
# run once). Two XLA flags make compiling about 2.5x cheaper: LLVM's
# optimisations off, and the classic fused-kernel emitters instead of the
# MLIR ones. The programs compute the same results (references are compared
# with tolerances, and paths that must agree bit for bit run under the same
# flags); test_default_codegen.py runs the collisions under XLA's defaults,
# what users compile. Speed is measured by ``python -m kinetix bench``, never
# here. The subprocesses of the suite inherit the flags.
FAST_COMPILE_FLAGS = ('--xla_backend_optimization_level=0',)
# Known to the jaxlibs kinetix supports today; a later one may drop it.
OPTIONAL_FLAGS = ('--xla_cpu_use_fusion_emitters=false',)
# Set by the first process (the controller) for the workers it starts.
_CHECKED = 'KINETIX_TESTS_XLA_FLAGS_CHECKED'


def _xla_knows(flag: str) -> bool:
  """Whether this jaxlib's XLA accepts ``flag`` (an unknown flag aborts)."""
  env = dict(os.environ, XLA_FLAGS=flag, JAX_PLATFORMS='cpu')
  probe = subprocess.run([sys.executable, '-c', 'import jax; jax.devices()'],
                         env=env, capture_output=True, timeout=300,
                         check=False)
  return probe.returncode == 0


if not os.environ.get(_CHECKED):
  _flags = os.environ.get('XLA_FLAGS', '').split()
  _flags += [f for f in FAST_COMPILE_FLAGS if f not in _flags]
  _flags += [f for f in OPTIONAL_FLAGS if f not in _flags and _xla_knows(f)]
  os.environ['XLA_FLAGS'] = ' '.join(_flags)
  os.environ[_CHECKED] = '1'

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
