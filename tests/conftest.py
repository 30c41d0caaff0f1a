"""Test ordering for ``pytest -n 2`` (``--dist worksteal``, see pyproject).

worksteal gives each worker one half of the collected items and steals
from the end of a queue only. The two long subprocess modules go to the
front of each half, so that both workers begin with one of them, and their
module-scoped fixture (one subprocess run shared by the module's tests) runs
once.
"""

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
