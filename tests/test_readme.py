"""The README's first example runs and does what it says."""

import pathlib
import re

import pytest

pytestmark = pytest.mark.floors   # the README must hold at the minimum versions

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
  install = re.search(r'pip install -e "\.\[([a-z,]+)\]"', ci)
  assert install and 'test' in install.group(1).split(','), ci


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


def _signature_text(qualname, fn):
  """``qualname(a, b=1, *, c="x")``: how the README's API table writes a
  signature (defaults as Python literals, strings in double quotes)."""
  import inspect  # pylint: disable=g-import-not-at-top
  parts, star = [], False
  for p in inspect.signature(fn).parameters.values():
    if p.kind is p.VAR_POSITIONAL:
      parts.append(f'*{p.name}')
      star = True
      continue
    if p.kind is p.KEYWORD_ONLY and not star:
      parts.append('*')
      star = True
    if p.default is p.empty:
      parts.append(p.name)
    else:
      default = (f'"{p.default}"' if isinstance(p.default, str)
                 else repr(p.default))
      parts.append(f'{p.name}={default}')
  return f'{qualname}({", ".join(parts)})'


def api_table_calls():
  """The README's API table: qualified name -> the signature it shows."""
  import kinetix  # pylint: disable=g-import-not-at-top
  from kinetix import kinetic, masks, metrics  # pylint: disable=g-import-not-at-top
  table = {
      'kinetic.soft_collision': kinetic.soft_collision,
      'kinetic.hard_collision': kinetic.hard_collision,
      'kinetix.ko_sgd': kinetix.ko_sgd,
      'kinetix.ko_adamw': kinetix.ko_adamw,
      'kinetix.masks.by_path': masks.by_path,
      'kinetix.masks.by_ndim': masks.by_ndim,
      'kinetix.cool_momentum': kinetix.cool_momentum,
      'kinetix.bbi': kinetix.bbi,
      'kinetix.ecdsep': kinetix.ecdsep,
      'kinetix.metrics.condensation': metrics.condensation,
      'kinetix.metrics.neuron_cosine': metrics.neuron_cosine,
  }
  return {name: _signature_text(name, fn) for name, fn in table.items()}


def test_readme_api_table_matches_the_signatures():
  """Every call in the API table is written exactly as the code defines it
  (a changed default or a new argument fails here)."""
  text = README.read_text()
  section = text.split('## What is in it', 1)[1].split('\n## ', 1)[0]
  missing = [sig for sig in api_table_calls().values()
             if f'`{sig}`' not in section]
  assert not missing, 'README API table out of date; expected:\n' + '\n'.join(
      missing)


def test_readme_names_every_plotting_function():
  plotting = __import__('kinetix.plotting', fromlist=['__all__'])
  section = README.read_text().split('## What is in it', 1)[1].split(
      '\n## ', 1)[0]
  for name in plotting.__all__:
    assert f'`{name}`' in section, name


def test_readme_transformer_recipe_trains():
  """The README's KO-on-a-transformer recipe, run for two steps."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  text = README.read_text()
  block = [b for b in re.findall(r'```python\n(.*?)```', text, re.S)
           if 'layer_axes=0' in b and 'lm_head' in b]
  assert len(block) == 1
  namespace = {}
  exec(compile(block[0], 'README.md', 'exec'), namespace)  # pylint: disable=exec-used
  model, optimizer = namespace['model'], namespace['optimizer']
  tokens = jax.random.randint(jax.random.key(0), (4, 65), 0, 256)
  before = np.asarray(model.blocks.mlp_in.kernel[...])
  losses = [float(namespace['train_step'](model, optimizer, tokens))
            for _ in range(2)]
  assert all(np.isfinite(losses)) and losses[1] < losses[0]
  # clip_by_global_norm, the last block's collision, the head's, AdamW.
  block, head = optimizer.opt_state[1], optimizer.opt_state[2]
  assert int(block.count[...]) == 2 and float(block.relative_change[...]) > 0
  # Norm-matched: the head's gradient changes by exactly coll_coef.
  assert abs(float(head.relative_change[...]) - 0.1) < 1e-4
  assert float(jnp.max(jnp.abs(model.blocks.mlp_in.kernel[...] - before))) > 0
