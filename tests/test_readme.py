"""The README's first example runs and does what it says."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / 'README.md'


def test_readme_example_runs():
  text = README.read_text()
  code = re.findall(r'```python\n(.*?)```', text, re.S)[0]
  namespace = {}
  exec(compile(code, 'README.md', 'exec'), namespace)  # pylint: disable=exec-used
  state = namespace['state'][0]
  assert int(state.count) == 1
  assert 0.0 < float(state.mean_abs_cos) < 1.0
  assert 0.0 < float(state.relative_change) < 1.0


def test_readme_commands_match_ci():
  text = README.read_text()
  ci = (README.parent / '.ci' / 'run').read_text()
  test_cmd = re.search(r'pip install -e "\.\[test\]" && (.+?)\s+#', text).group(1)
  assert test_cmd.strip() in ci
  assert 'pip install -e ".[test]"' in ci


def test_readme_optimizer_snippets_construct():
  """Every ``tx = kinetix.…(…)`` line of the README builds (ready to copy)."""
  import kinetix  # pylint: disable=g-import-not-at-top
  text = README.read_text()
  blocks = re.findall(r'```python\n(.*?)```', text, re.S)
  lines = [ln.split('#')[0].strip() for b in blocks for ln in b.splitlines()
           if ln.strip().startswith('tx = kinetix.')]
  assert len(lines) >= 4
  for line in lines:
    namespace = {'kinetix': kinetix, 'steps': 1000}
    exec(line, namespace)  # pylint: disable=exec-used
    assert hasattr(namespace['tx'], 'update'), line


def test_readme_inject_hyperparams_snippet_works():
  """The README's masks-under-inject_hyperparams block, run on a model."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  import kinetix  # pylint: disable=g-import-not-at-top
  from kinetix import kinetic  # pylint: disable=g-import-not-at-top
  text = README.read_text()
  block = [b for b in re.findall(r'```python\n(.*?)```', text, re.S)
           if 'inject_hyperparams' in b]
  assert len(block) == 1
  params = {'body': {'kernel': jnp.eye(4, 3) + 0.5},
            'head': {'kernel': jnp.eye(3, 5) + 0.5}}
  grads = jax.tree.map(lambda x: 0.3 * x + jnp.arange(x.shape[-1]) * 0.1,
                       params)
  namespace = {'kinetix': kinetix, 'kinetic': kinetic, 'optax': optax}
  lines = block[0].split('tx = ')[1:]
  assert len(lines) == 2
  for source in lines:
    exec('tx = ' + source, namespace)  # pylint: disable=exec-used
    tx = namespace['tx']
    state = tx.init(params)
    assert 'coll_coef' in state.hyperparams
    out, _ = jax.jit(tx.update)(grads, state, params)
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(out))
