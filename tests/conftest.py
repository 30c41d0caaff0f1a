"""Test ordering: the long subprocess tests start first.

With ``pytest -n 2`` the two workers then each begin with one of them while
the other tests fill the remaining time, instead of one worker finishing
them alone at the end.
"""

SLOW_FIRST = ('test_sharding.py', 'test_multiprocess.py')


def pytest_collection_modifyitems(config, items):
  del config

  def rank(item):
    name = item.path.name
    return SLOW_FIRST.index(name) if name in SLOW_FIRST else len(SLOW_FIRST)

  items.sort(key=rank)
