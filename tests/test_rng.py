"""kinetix._rng draws the same bits as jax.random, whatever the path.

The collisions draw their directions with ``_rng`` (the threefry hash
written out so that XLA fuses it with its consumer). Seeds and results of
kinetix must not change because of it: every draw is compared bit for bit
with its ``jax.random`` namesake, on the inline path and on the fallbacks.
"""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kinetix import _rng

SHAPES = [(), (7,), (3, 5), (2, 3, 4), (257, 33)]
DTYPES = ['float32', 'bfloat16', 'float16', 'float64']


def _bits_equal(a, b):
  a, b = np.atleast_1d(np.asarray(a)), np.atleast_1d(np.asarray(b))
  assert a.dtype == b.dtype and a.shape == b.shape
  return np.array_equal(a.view(np.uint8), b.view(np.uint8))


def test_hash_matches_the_random123_known_answers():
  # Threefry-2x32, 20 rounds: the known-answer vectors of Random123.
  cases = [((0, 0), (0, 0), (0x6b200159, 0x99ba4efe)),
           ((0xffffffff, 0xffffffff), (0xffffffff, 0xffffffff),
            (0x1cb996fc, 0xbb002be7)),
           ((0x13198a2e, 0x03707344), (0x243f6a88, 0x85a308d3),
            (0xc4923a9c, 0x483df7a0))]
  for key, count, expected in cases:
    u = [jnp.asarray(x, jnp.uint32) for x in (*key, *count)]
    out = jax.jit(_rng.hash2x32)(*u)
    assert tuple(int(x) for x in out) == expected


def _draws_with_jax_random(fn, key):
  return 'random_bits' in str(jax.make_jaxpr(fn)(key))


def test_threefry_keys_take_the_fused_path():
  # Otherwise every comparison below would compare jax.random with itself.
  key = jax.random.key(0)
  assert _draws_with_jax_random(lambda k: jax.random.normal(k, (4, 4)), key)
  for fn in (lambda k: _rng.normal(k, (4, 4)),
             lambda k: _rng.uniform(k, (4, 4), jnp.bfloat16),
             lambda k: jax.random.key_data(_rng.fold_in(k, 3)),
             lambda k: jax.random.key_data(_rng.split(k, 3)),
             lambda k: _rng.permutation(k, 2000)):
    jaxpr = str(jax.make_jaxpr(fn)(key))
    assert 'random_bits' not in jaxpr and 'threefry2x32' not in jaxpr
  rbg = jax.random.key(0, impl='rbg')
  assert _draws_with_jax_random(lambda k: _rng.normal(k, (4, 4)), rbg)


@pytest.mark.parametrize('dtype', DTYPES)
def test_normal_and_uniform_equal_jax_random(dtype):
  with jax.enable_x64(dtype == 'float64'):
    dt = jnp.dtype(dtype)
    for seed, shape in enumerate(SHAPES):
      key = jax.random.key(seed)
      pairs = [
          (jax.random.normal(key, shape, dt),
           jax.jit(lambda k, s=shape: _rng.normal(k, s, dt))(key)),
          (jax.random.normal(key, shape, dt), _rng.normal(key, shape, dt)),
          (jax.random.uniform(key, shape, dt, -0.5, 0.5),
           jax.jit(lambda k, s=shape: _rng.uniform(k, s, dt, -0.5, 0.5))(key)),
      ]
      for expected, got in pairs:
        assert _bits_equal(expected, got), (dtype, shape)


def test_default_dtype_follows_x64_like_jax():
  key = jax.random.key(1)
  for x64 in (False, True):
    with jax.enable_x64(x64):
      assert _bits_equal(jax.random.normal(key, (4,)), _rng.normal(key, (4,)))


def test_batched_keys_fold_in_and_legacy_keys():
  keys = jax.random.split(jax.random.key(3), 5)
  assert _bits_equal(jax.vmap(lambda k: jax.random.normal(k, (9,)))(keys),
                     jax.vmap(lambda k: _rng.normal(k, (9,)))(keys))
  key, i = jax.random.key(4), jnp.arange(10, dtype=jnp.int32)
  ref = jax.vmap(lambda a: jax.random.key_data(
      jax.random.fold_in(jax.random.fold_in(key, a), 2 * a + 1)))(i)
  got = jax.jit(jax.vmap(lambda a: jax.random.key_data(
      _rng.fold_in(_rng.fold_in(key, a), 2 * a + 1))))(i)
  assert _bits_equal(ref, got)
  for data in (0, 2 ** 31 + 5, 2 ** 32 - 1):     # the whole uint32 range
    assert _bits_equal(jax.random.key_data(jax.random.fold_in(key, data)),
                       jax.random.key_data(_rng.fold_in(key, data)))
  for num in (1, 2, 3, 7):
    assert _bits_equal(jax.random.key_data(jax.random.split(key, num)),
                       jax.random.key_data(jax.jit(_rng.split, static_argnums=1)(
                           key, num)))
  assert _bits_equal(
      jax.vmap(lambda k: jax.random.key_data(jax.random.split(k)))(keys),
      jax.vmap(lambda k: jax.random.key_data(_rng.split(k)))(keys))
  for n in (1, 2, 9, 1000, 2000):            # 2000: two rounds of sorting
    assert _bits_equal(jax.random.permutation(key, n),
                       jax.jit(_rng.permutation, static_argnums=1)(key, n))
  legacy = jax.random.PRNGKey(5)           # raw uint32[2]: jax.random itself
  assert _bits_equal(jax.random.normal(legacy, (6,)),
                     _rng.normal(legacy, (6,)))


def test_other_generators_and_settings_fall_back_to_jax_random():
  for impl in ('rbg', 'unsafe_rbg'):
    key = jax.random.key(0, impl=impl)
    assert _bits_equal(jax.random.normal(key, (5, 3)),
                       _rng.normal(key, (5, 3)))
    assert _bits_equal(jax.random.key_data(jax.random.fold_in(key, 7)),
                       jax.random.key_data(_rng.fold_in(key, 7)))
    assert _bits_equal(jax.random.key_data(jax.random.split(key, 3)),
                       jax.random.key_data(_rng.split(key, 3)))
  key = jax.random.key(0)
  with jax.threefry_partitionable(False):
    assert _bits_equal(jax.random.normal(key, (5, 3)),
                       jax.jit(lambda k: _rng.normal(k, (5, 3)))(key))
  # float8 is outside the inline dtypes: jax.random draws it.
  assert _bits_equal(jax.random.uniform(key, (4,), jnp.float8_e4m3fn),
                     _rng.uniform(key, (4,), jnp.float8_e4m3fn))


def test_a_batch_of_keys_is_refused_like_jax_random():
  keys = jax.random.split(jax.random.key(0), 2)
  with pytest.raises(ValueError, match='single key'):
    jax.random.normal(keys, (3,))
  with pytest.raises(ValueError, match='single key'):
    _rng.normal(keys, (3,))
  with pytest.raises(ValueError, match='single key'):
    _rng.fold_in(keys, 1)
  with pytest.raises(ValueError, match='single key'):
    _rng.split(keys)


def test_a_draw_is_a_constant_under_grad():
  # A direction is a constant of the update: under jax.grad (with the key
  # folded from a traced index, as the collisions do per leaf and layer) the
  # gradient of Σ x·z is z itself, the same bits as jax.random's draw.
  key = jax.random.key(0)

  def f(x, i):
    return jnp.sum(x * _rng.normal(_rng.fold_in(key, i), (3,)))
  grad = jax.jit(jax.grad(f))(jnp.ones(3), jnp.int32(4))
  assert _bits_equal(grad, jax.random.normal(jax.random.fold_in(key, 4), (3,)))


_SHARDED = textwrap.dedent('''
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
    from kinetix import _rng
    key = jax.random.key(7)
    ref = jax.random.normal(key, (16, 24))
    ok = []
    for types in ((AxisType.Explicit,) * 2, (AxisType.Auto,) * 2):
      mesh = jax.make_mesh((4, 2), ('a', 'b'), axis_types=types)
      for spec in (P('a', 'b'), P(None, 'a'), P('b', None)):
        sharding = NamedSharding(mesh, spec)
        if types[0] == AxisType.Explicit:
          with jax.set_mesh(mesh):
            out = jax.jit(lambda k: _rng.normal(k, (16, 24),
                                                out_sharding=sharding))(key)
        else:
          out = jax.jit(lambda k: _rng.normal(k, (16, 24)),
                        out_shardings=sharding)(key)
        ok.append(bool(np.array_equal(np.asarray(out), np.asarray(ref)))
                  and out.sharding.spec == sharding.spec)
    print(ok)
''')


def test_sharded_draws_equal_unsharded():
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS='--xla_force_host_platform_device_count=8')
  proc = subprocess.run([sys.executable, '-c', _SHARDED], env=env,
                        capture_output=True, text=True, timeout=300,
                        check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.strip() == str([True] * 6), proc.stdout


def test_fold_in_many_is_vmapped_fold_in():
  # The engine folds every selected leaf's path seed into the step key at
  # once; each key must be the one jax.random.fold_in gives that leaf alone.
  data = np.asarray([0, 1, 7, 2**31 + 5, 2**32 - 1], np.uint32)
  for key in (jax.random.key(11), jax.random.key(11, impl='rbg'),
              jax.random.PRNGKey(11)):
    want = jax.vmap(lambda d, key=key: jax.random.fold_in(key, d))(data)
    got = _rng.fold_in_many(key, data)
    assert got.shape == want.shape
    assert _bits_equal(jax.random.key_data(want), jax.random.key_data(got))
    assert _bits_equal(jax.random.key_data(want),
                       jax.random.key_data(jax.jit(_rng.fold_in_many)(key,
                                                                     data)))
    # BBI and ECDSep read each leaf's key apart (fold_in_each).
    for each in (_rng.fold_in_each(key, data),
                 jax.jit(_rng.fold_in_each)(key, data)):
      assert len(each) == len(data)
      for i, k in enumerate(each):
        assert k.dtype == want.dtype
        assert _bits_equal(jax.random.key_data(want[i]),
                           jax.random.key_data(k))
