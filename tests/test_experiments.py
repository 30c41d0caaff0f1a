"""Smoke tests of ``python -m kinetix``: help, the experiments, bad options."""

import json
import math
import sys

import jax
import numpy as np
import pytest

from kinetix import __main__ as cli
from kinetix.experiments import digits

_PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


def _numbers(obj):
  """Every int/float in a JSON-like tree (bools excluded)."""
  if isinstance(obj, dict):
    for v in obj.values():
      yield from _numbers(v)
  elif isinstance(obj, list):
    for v in obj:
      yield from _numbers(v)
  elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
    yield obj


def _check_outputs(out, name):
  """The JSON/Markdown/PNG of one experiment; returns the parsed JSON."""
  for suffix in ('json', 'md', 'png'):
    path = out / f'{name}.{suffix}'
    assert path.is_file() and path.stat().st_size > 0, path
  assert (out / f'{name}.png').read_bytes()[:8] == _PNG_MAGIC
  result = json.loads((out / f'{name}.json').read_text())
  numbers = list(_numbers(result))
  assert numbers and all(math.isfinite(x) for x in numbers)
  assert result['quick'] is True
  assert 'jax' in result['environment']
  assert 'settings' in result
  assert '| --- |' in (out / f'{name}.md').read_text()
  return result


def test_help_lists_all_commands(capsys):
  with pytest.raises(SystemExit) as exc:
    cli.main(['--help'])
  assert exc.value.code == 0
  printed = capsys.readouterr().out
  for name in ('condensation', 'digits', 'lm', 'bench'):
    assert name in printed
  parser, module = cli.build_parser([])
  assert module is None
  assert all(name in parser.format_help()
             for name in ('condensation', 'digits', 'bench'))


def test_no_command_prints_help_and_fails(capsys):
  assert cli.main([]) != 0
  assert 'digits' in capsys.readouterr().out


def test_digits_help_has_its_options(capsys):
  with pytest.raises(SystemExit) as exc:
    cli.main(['digits', '--help'])
  assert exc.value.code == 0
  printed = capsys.readouterr().out
  for option in ('--models', '--optimizers', '--methods', '--epochs',
                 '--coll-coef', '--quick', '--seeds', '--out'):
    assert option in printed


@pytest.mark.parametrize('command', ['condensation', 'digits', 'lm', 'bench'])
def test_help_states_each_default_once(command, capsys):
  with pytest.raises(SystemExit):
    cli.main([command, '--help'])
  printed = ' '.join(capsys.readouterr().out.split())   # unwrap the lines
  options = printed.split(' --')
  assert len(options) > 3
  for option in options:
    assert option.count('(default') <= 1, option
  assert '(default: None)' not in printed
  assert '(default: False)' not in printed


@pytest.mark.floors
def test_condensation_quick(tmp_path, capsys):
  out = tmp_path / 'condensation'
  # One activation: notebook 02's smoke run (test_notebooks.py) runs both.
  assert cli.main(['condensation', '--quick', '--activations', 'tanh',
                   '--no-progress', '--out', str(out)]) == 0
  result = _check_outputs(out, 'condensation')
  assert set(result['results']) == {'tanh'}
  printed = capsys.readouterr().out
  assert 'wrote' in printed
  _settings_printed_once(printed)


def _settings_printed_once(printed):
  """The settings line is printed once, before the run."""
  settings = printed.splitlines()[0].split(': ', 1)[1]
  assert len(settings) > 40 and printed.count(settings) == 1, printed[:2000]


@pytest.mark.floors
def test_digits_quick(tmp_path, capsys):
  out = tmp_path / 'digits'
  # SGD only: both models and every collision, half the compilations.
  assert cli.main(['digits', '--quick', '--optimizers', 'sgd',
                   '--no-progress', '--out', str(out)]) == 0
  result = _check_outputs(out, 'digits')
  assert result['settings']['epochs'] == 2
  assert result['settings']['seeds'] == 2
  assert result['data'] == {'train': 1257, 'test': 540, 'features': 64,
                            'classes': 10}
  rows = result['results']
  assert {(r['model'], r['optimizer'], r['method']) for r in rows} == {
      (m, 'sgd', c) for m in digits.MODELS for c in digits.METHODS}
  for r in rows:
    assert len(r['test_accuracy']['per_seed']) == 2
    # Two epochs already beat chance (10 %) by far.
    assert 0.5 < r['test_accuracy']['mean'] <= 1.0
    assert 0.0 <= r['head_mean_abs_cos']['mean'] <= r['head_max_abs_cos'][
        'mean'] <= 1.0
    assert r['final_train_loss']['mean'] > 0.0
    assert len(r['epoch_test_accuracy_mean']) == 2
    assert ('accepted_fraction' in r) == (r['method'] == 'hard')
    if r['method'] == 'hard':
      assert 0.0 <= r['accepted_fraction']['mean'] <= 1.0
  printed = capsys.readouterr().out
  assert '| MLP | SGD | no collision |' in printed
  assert '| CNN | SGD | + hard |' in printed
  _settings_printed_once(printed)


def test_digits_split_is_stratified_and_standardised():
  x_train, y_train, x_test, y_test = digits.load_data()
  assert x_train.shape == (1257, 64) and x_test.shape == (540, 64)
  assert x_train.dtype == np.float32 and y_train.dtype == np.int32
  np.testing.assert_allclose(x_train.mean(axis=0), 0.0, atol=1e-5)
  train_frac = np.bincount(y_train) / len(y_train)
  test_frac = np.bincount(y_test) / len(y_test)
  np.testing.assert_allclose(train_frac, test_frac, atol=0.01)


def test_digits_conv_matches_lax_conv():
  kx, kk = jax.random.split(jax.random.key(0))
  x = jax.random.normal(kx, (3, 8, 8, 4))
  kernel = jax.random.normal(kk, (3, 3, 4, 5))
  expected = jax.lax.conv_general_dilated(
      x, kernel, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
      precision=jax.lax.Precision.HIGHEST)
  np.testing.assert_allclose(digits.conv3x3(x, kernel), expected, rtol=1e-4,
                             atol=1e-4)


@pytest.mark.parametrize('argv', [
    ['digits', '--epochs', '0'],
    ['digits', '--seeds', 'two'],
    ['digits', '--no-such-option'],
    ['condensation', '--steps', '-3'],
    ['no-such-command'],
])
def test_bad_option_exits_nonzero(argv, tmp_path, capsys):
  with pytest.raises(SystemExit) as exc:
    cli.main(argv + ['--out', str(tmp_path)])
  assert exc.value.code not in (0, None)
  assert 'error' in capsys.readouterr().err
  assert not any(tmp_path.iterdir())


@pytest.mark.parametrize('argv', [
    ['digits', '--models', 'resnet'],
    ['digits', '--methods', 'soft,bogus'],
    ['digits', '--coll-coef', '1.5'],
    ['condensation', '--activations', 'nope'],
    ['lm', '--methods', 'adamw,sgd'],
    ['lm', '--methods', 'normed_head@2'],
])
def test_bad_value_returns_nonzero(argv, tmp_path, capsys):
  """One line on stderr naming the command and the allowed values, exit 2,
  nothing written."""
  assert cli.main(argv + ['--quick', '--no-progress', '--out',
                          str(tmp_path)]) == 2
  err = capsys.readouterr().err
  assert err.startswith(f'kinetix {argv[0]}: '), err
  assert 'choose from' in err or 'must be' in err, err
  assert len(err.strip().splitlines()) == 1, err
  assert not any(tmp_path.iterdir())


@pytest.mark.floors
def test_lm_quick(tmp_path, capsys):
  """``python -m kinetix lm --quick``: every optimizer, files, statistics."""
  from kinetix.experiments import lm  # pylint: disable=g-import-not-at-top
  out = tmp_path / 'lm'
  methods = lm.METHODS + lm.SWEEP
  assert set(lm.Settings().methods) <= set(methods)
  assert cli.main(['lm', '--quick', '--seeds', '1', '--no-progress',
                   '--methods', ','.join(methods), '--out', str(out)]) == 0
  result = _check_outputs(out, 'lm')
  rows = {r['method']: r for r in result['results']}
  assert list(rows) == list(methods)
  assert 'pydoc_data.topics' in result['data']
  for method, r in rows.items():
    assert len(r['val_bpb_mean']) == len(r['eval_steps'])
    assert r['eval_steps'][-1] == result['settings']['steps']
    assert 0.0 < r['final_val_bpb']['mean'] < 9.0
    assert 0.0 <= r['head_mean_abs_cos']['mean'] <= r['head_max_abs_cos'][
        'mean'] <= 1.0
    collides = method != 'adamw'
    assert (r['relative_change']['mean'] > 0.0) == collides, method
    # Theorem 3.3's diagnostic: one rate per step, for collisions only.
    assert ('collision_rate' in r) == collides, method
    if collides:
      shares = (r['collision_rate']['negative_fraction']['mean']
                + r['collision_rate']['positive_fraction']['mean'])
      assert 0.0 < shares <= 1.0, method
    hard = lm.method_name(method) in ('hard_head', 'disjoint_head')
    if not hard:
      assert r['accepted_fraction']['mean'] == 0.0
    assert 0.0 <= r['accepted_fraction']['mean'] <= 1.0
    assert r['step_time_vs_adamw'] > 0.0
  # 20 steps of AdamW already beat the uniform 8 bits per byte.
  assert rows['adamw']['final_val_bpb']['mean'] < 7.5
  assert rows['adamw']['step_time_vs_adamw'] == 1.0
  printed = capsys.readouterr().out
  assert '| AdamW |' in printed and 'bits/byte' in printed
  _settings_printed_once(printed)


def test_lm_corpus_is_split_by_topic_and_text_replaces_it(tmp_path):
  from pydoc_data import topics  # pylint: disable=g-import-not-at-top
  from kinetix.experiments import lm  # pylint: disable=g-import-not-at-top
  train, valid, description = lm.load_corpus()
  names = sorted(topics.topics)
  held = {names[i] for i in range(9, len(names), 10)}
  assert str(len(held)) in description
  train_text, valid_text = train.tobytes(), valid.tobytes()
  for name in names:
    body = topics.topics[name].encode('utf-8')
    assert (body in valid_text) == (name in held), name
    assert (body in train_text) == (name not in held), name
  windows = lm.validation_windows(valid, 64)
  assert windows.shape == (len(valid_text) // 65, 65)
  assert lm.validation_windows(valid, 64, 5).shape == (5, 65)
  path = tmp_path / 'text.txt'
  path.write_text('kinetix ' * 500, encoding='utf-8')
  train, valid, description = lm.load_corpus(str(path))
  assert (len(train), len(valid)) == (3600, 400)
  assert 'text.txt' in description


def test_lm_without_the_builtin_corpus_says_what_to_do(tmp_path, capsys,
                                                      monkeypatch):
  from kinetix.experiments import lm  # pylint: disable=g-import-not-at-top
  monkeypatch.setitem(sys.modules, 'pydoc_data', None)
  monkeypatch.setitem(sys.modules, 'pydoc_data.topics', None)
  with pytest.raises(lm.CorpusUnavailable, match='--text PATH'):
    lm.load_corpus()
  assert cli.main(['lm', '--quick', '--no-progress', '--out',
                   str(tmp_path)]) == 2
  err = capsys.readouterr().err
  assert "pydoc_data.topics" in err and '--text PATH' in err
  assert len(err.strip().splitlines()) == 1
  assert not any(tmp_path.iterdir())


def test_lm_mlp_collision_is_per_stacked_layer():
  """The blocks are stacked by nnx.vmap: with layer_axes=0 each layer's MLP
  neurons collide among themselves, exactly as that layer alone."""
  from kinetix import kinetic, masks  # pylint: disable=g-import-not-at-top
  from kinetix.experiments import lm  # pylint: disable=g-import-not-at-top
  settings = lm.Settings(layers=3, d_model=16, heads=2, context=8)
  params = lm.init_params(settings, jax.random.key(0))
  assert params['blocks']['mlp_in']['kernel'].shape == (3, 16, 64)
  assert params['blocks']['mlp_out']['kernel'].shape == (3, 64, 16)
  keys = iter(jax.random.split(jax.random.key(1), 64))
  grads = jax.tree.map(lambda p: jax.random.normal(next(keys), p.shape),
                       params)
  tx = kinetic.soft_collision(0.3, mask=masks.by_path(*lm.MLP_KERNELS),
                              layer_axes=0)
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  single = kinetic.soft_collision(0.3)
  single_update = jax.jit(single.update)
  for name in ('mlp_in', 'mlp_out'):
    for layer in range(3):
      p = {'k': params['blocks'][name]['kernel'][layer]}
      g = {'k': grads['blocks'][name]['kernel'][layer]}
      ref, _ = single_update(g, single.init(p), p)
      np.testing.assert_allclose(
          updates['blocks'][name]['kernel'][layer], ref['k'], rtol=2e-5,
          atol=2e-6)
  np.testing.assert_array_equal(updates['lm_head']['kernel'],
                                grads['lm_head']['kernel'])


def test_lm_authors_recipe_collides_only_the_last_block():
  """``last_block`` (the authors' LLM recipe): clipping, then a soft
  collision on the six kernels of the last stacked block only, then AdamW.
  Every other layer and leaf gets exactly the update without the collision."""
  from kinetix.experiments import lm  # pylint: disable=g-import-not-at-top
  settings = lm.Settings(layers=3, d_model=16, heads=2, context=8,
                         warmup_steps=0)    # a non-zero first step
  params = lm.init_params(settings, jax.random.key(0))
  keys = iter(jax.random.split(jax.random.key(1), 64))
  grads = jax.tree.map(lambda p: jax.random.normal(next(keys), p.shape),
                       params)
  opt = lm.make_optimizer('last_block', settings)
  updates, _, plain = jax.jit(opt.update)(grads, opt.init(params), params)
  flat_u = dict(_flat(updates))
  for path, p in _flat(plain):
    u = flat_u[path]
    if path in lm.BLOCK_KERNELS:
      np.testing.assert_array_equal(u[:-1], p[:-1], err_msg=path)
      assert not np.allclose(u[-1], p[-1]), path
    else:
      np.testing.assert_array_equal(u, p, err_msg=path)
  view = lm.collided_layers('last_block', params)
  assert sorted(view) == sorted(k.split('/')[1] for k in lm.BLOCK_KERNELS)
  assert view['mlp_in'].shape == (1, 16, 64)


def _flat(tree):
  from kinetix import _utils  # pylint: disable=g-import-not-at-top
  return [(_utils.path_to_str(k), np.asarray(v))
          for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]]


def test_collision_rate_is_the_collisions_own_share():
  """``_common.collision_rate``: 0 when the collision changes nothing,
  negative when it turns two similar neurons apart, and the difference of
  the two correlation rates in general."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from kinetix import metrics  # pylint: disable=g-import-not-at-top
  from kinetix.experiments import _common  # pylint: disable=g-import-not-at-top
  w = {'k': jnp.array([[1.0, 1.0, 0.0], [0.0, 0.1, 1.0]])}   # (D, N)
  plain = {'k': jnp.array([[0.1, 0.2, 0.0], [0.3, -0.1, 0.2]])}
  apart = {'k': plain['k'] + jnp.array([[0.0, 0.0, 0.0], [-0.5, 0.5, 0.0]])}
  view = lambda tree: {'k': tree['k'][None]}  # noqa: E731
  assert float(_common.collision_rate(w, plain, plain, view)) == 0.0
  rate = float(_common.collision_rate(w, apart, plain, view))
  expected = (metrics.correlation_rate(w, apart)['k']
              - metrics.correlation_rate(w, plain)['k'])
  assert rate < 0.0
  np.testing.assert_allclose(rate, float(expected), rtol=1e-5)
