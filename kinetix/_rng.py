"""JAX's threefry random numbers, hashed where they are consumed.

``jax.random`` with the default generator (threefry-2x32, partitionable) is
counter-based: element ``k`` of ``jax.random.normal(key, shape)`` is a pure
function of the key and of ``k``, the element's flat index. JAX hashes those
counters in a separate step: on CPU in a rolled loop (five passes over the
whole counter arrays in memory), on GPU in its own kernel. Written out in
``jax.numpy``, the twenty rounds of the hash fuse into the operation that
consumes the numbers, which is 2–3× faster on CPU for a collision's
directions (see ``python -m kinetix bench``).

The functions here return **the same bits** as their ``jax.random``
namesakes (tested bit for bit) when the key's generator is threefry-2x32 and
``jax_threefry_partitionable`` is on (JAX's default); with any other
generator or setting, or an unsupported dtype or size, they call
``jax.random`` itself. Results therefore never depend on which path ran.
"""

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from kinetix import _utils

_U32 = jnp.uint32
_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_KS_PARITY = np.uint32(0x1BD11BDA)
_UINT = {8: jnp.uint8, 16: jnp.uint16, 32: jnp.uint32, 64: jnp.uint64}
_FLOATS = (jnp.float16, jnp.bfloat16, jnp.float32, jnp.float64)


def _inline(key: jax.Array, size: int, dtype: Any = None) -> bool:
  """Whether the hash can be written out for this key, size (and dtype)."""
  if not jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) or key.ndim:
    return False                 # jax.random raises for batches of keys
  # The current value, context managers (jax.threefry_partitionable) included.
  partitionable = jax.config.jax_threefry_partitionable  # pyrefly: ignore[missing-attribute]
  return (str(jax.random.key_impl(key)) == 'threefry2x32'
          and bool(partitionable)
          and size < 2 ** 32
          and (dtype is None
               or any(jnp.dtype(dtype) == jnp.dtype(t) for t in _FLOATS)))


def _default_float(dtype: Any) -> Any:
  """``dtype``, or JAX's default float (float64 under ``jax_enable_x64``)."""
  return jnp.dtype(dtype) if dtype is not None else jnp.result_type(float)


def _rotl(x: jax.Array, r: int) -> jax.Array:
  return jax.lax.bitwise_or(jax.lax.shift_left(x, np.uint32(r)),
                            jax.lax.shift_right_logical(x, np.uint32(32 - r)))


def _hash2x32(k0: jax.Array, k1: jax.Array, x0: jax.Array,
              x1: jax.Array) -> tuple[jax.Array, jax.Array]:
  ks = (k0, k1, jax.lax.bitwise_xor(jax.lax.bitwise_xor(k0, k1), _KS_PARITY))
  x0, x1 = jax.lax.add(x0, ks[0]), jax.lax.add(x1, ks[1])
  for i in range(5):
    for r in _ROTATIONS[i % 2]:
      x0 = jax.lax.add(x0, x1)
      x1 = jax.lax.bitwise_xor(x0, _rotl(x1, r))
    x0 = jax.lax.add(x0, ks[(i + 1) % 3])
    x1 = jax.lax.add(jax.lax.add(x1, ks[(i + 2) % 3]), np.uint32(i + 1))
  return x0, x1


# Traced once per argument type (shape, sharding) and inlined where called.
_hash2x32_inline = jax.jit(_hash2x32, inline=True)


def hash2x32(k0: jax.Array, k1: jax.Array, x0: jax.Array,
             x1: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Threefry-2x32 (20 rounds) of the counter pairs ``(x0, x1)``.

  The same function as JAX's ``threefry2x32_p``, unrolled, so that XLA fuses
  it with what produces the counters and what consumes the bits. Written in
  ``lax`` operations and inlined from one traced copy per argument type:
  a model's update hashes many keys and counters of few types.
  """
  return _hash2x32_inline(*(jnp.asarray(x, _U32) for x in (k0, k1, x0, x1)))


def _flat_index(shape: Sequence[int], out_sharding: Any) -> jax.Array:
  """``arange(prod(shape)).reshape(shape)`` as uint32, built from iotas."""
  if not shape:
    return jnp.zeros((), _U32)
  strides = np.cumprod((*shape[1:], 1)[::-1])[::-1]
  terms = [jax.lax.broadcasted_iota(_U32, tuple(shape), dim,
                                    out_sharding=out_sharding) * _U32(stride)
           for dim, stride in enumerate(strides)]
  return sum(terms[1:], terms[0])


def _bits(key: jax.Array, shape: Sequence[int], width: int,
          out_sharding: Any) -> jax.Array:
  """``jax.random.bits``'s threefry bits (partitionable layout)."""
  data = jax.random.key_data(key)
  lo = _flat_index(shape, out_sharding)
  b0, b1 = hash2x32(data[0], data[1], jnp.zeros_like(lo), lo)
  if width == 64:
    hi = b0.astype(jnp.uint64) << jnp.uint64(32)
    return hi | b1.astype(jnp.uint64)
  return (b0 ^ b1).astype(_UINT[width])


def uniform(key: jax.Array, shape: Sequence[int], dtype: Any = None,
            minval: Any = 0.0, maxval: Any = 1.0, *,
            out_sharding: Any = None) -> jax.Array:
  """``jax.random.uniform(key, shape, dtype, minval, maxval)``, bit for bit."""
  shape = tuple(shape)
  dtype = _default_float(dtype)
  if not _inline(key, math.prod(shape), dtype):
    return jax.random.uniform(key, shape, dtype, minval, maxval,
                              out_sharding=out_sharding)
  finfo = jnp.finfo(dtype)
  nbits, nmant = finfo.bits, finfo.nmant
  rng_bits = 8 if nmant < 8 else nbits
  uint = _UINT[nbits]
  bits = _bits(key, shape, rng_bits, out_sharding).astype(uint)
  one = np.array(1.0, dtype).view(uint)
  float_bits = (bits >> uint(rng_bits - nmant)) | uint(one)
  floats = jax.lax.bitcast_convert_type(float_bits, dtype) - dtype.type(1.0)
  lo = jnp.asarray(minval, dtype)
  hi = jnp.asarray(maxval, dtype)
  return jnp.maximum(lo, floats * (hi - lo) + lo)


def normal(key: jax.Array, shape: Sequence[int], dtype: Any = None, *,
           out_sharding: Any = None) -> jax.Array:
  """``jax.random.normal(key, shape, dtype)``, bit for bit."""
  shape = tuple(shape)
  dtype = _default_float(dtype)
  if not _inline(key, math.prod(shape), dtype):
    return jax.random.normal(key, shape, dtype, out_sharding=out_sharding)
  lo = np.nextafter(np.array(-1.0, dtype), np.array(0.0, dtype), dtype=dtype)
  u = uniform(key, shape, dtype, lo, 1.0, out_sharding=out_sharding)
  return jnp.multiply(np.array(np.sqrt(2), dtype), jax.lax.erf_inv(u))


def split(key: jax.Array, num: int = 2) -> jax.Array:
  """``jax.random.split(key, num)``, bit for bit (``num`` new keys)."""
  if not _inline(key, num):
    return jax.random.split(key, num)
  k = jax.random.key_data(key)
  lo = jnp.arange(num, dtype=_U32)
  x0, x1 = hash2x32(k[0], k[1], jnp.zeros_like(lo), lo)
  return jax.random.wrap_key_data(jnp.stack([x0, x1], axis=-1),
                                  impl='threefry2x32')


def permutation(key: jax.Array, n: int) -> jax.Array:
  """``jax.random.permutation(key, n)``, bit for bit.

  The same rounds of sorting by random 32-bit keys as JAX's ``_shuffle``
  (enough rounds that ties are unlikely to matter), each round's key split
  off the previous one.
  """
  if not _inline(key, n):
    return jax.random.permutation(key, n)
  x = jnp.arange(n)
  rounds = int(np.ceil(3 * np.log(max(1, n)) / np.log(np.iinfo(np.uint32).max)))
  for _ in range(rounds):
    key, subkey = split(key)
    _, x = jax.lax.sort_key_val(_bits(subkey, (n,), 32, None), x, 0)
  return x


def fold_in(key: jax.Array, data: Any) -> jax.Array:
  """``jax.random.fold_in(key, data)``, bit for bit (``data`` as uint32)."""
  if not _inline(key, 1):
    return jax.random.fold_in(key, data)
  return _hashed_fold_in(key, jnp.asarray(data, dtype=_U32))


def _hashed_fold_in(key: jax.Array, data: jax.Array) -> jax.Array:
  """``fold_in(key, d)`` for each entry ``d`` of the uint32 array ``data``."""
  k = jax.random.key_data(key)
  x0, x1 = hash2x32(k[0], k[1], jnp.zeros_like(data), data)
  return jax.random.wrap_key_data(jnp.stack([x0, x1], axis=-1),
                                  impl='threefry2x32')


def fold_in_many(key: jax.Array, data: Any) -> jax.Array:
  """``vmap(lambda d: jax.random.fold_in(key, d))(data)``, bit for bit.

  One key per entry of the 1-D ``data`` (as uint32), hashed as one vector:
  a tenth of the ops that tracing the ``vmap`` of :func:`fold_in` binds.
  """
  data = jnp.asarray(data).astype(_U32)
  if not _inline(key, 1):
    return jax.vmap(lambda d: jax.random.fold_in(key, d))(data)
  return _hashed_fold_in(key, data)


def fold_in_each(key: jax.Array, data: Any) -> list[jax.Array]:
  """``[jax.random.fold_in(key, d) for d in data]``, bit for bit.

  The keys of :func:`fold_in_many`, each read out at an index known at run
  time only (:func:`kinetix._utils.at_run_time`), so that the kernels that
  draw from them are the same for every leaf of a shape.
  """
  keys = fold_in_many(key, data)
  typed = jax.dtypes.issubdtype(keys.dtype, jax.dtypes.prng_key)
  raw = jax.random.key_data(keys) if typed else keys
  rows = _utils.at_run_time(tuple(np.int32(i) for i in range(len(raw))))
  out = [_utils.read_row(raw, i) for i in rows]
  if not typed:
    return out
  impl = jax.random.key_impl(keys)
  return [jax.random.wrap_key_data(x, impl=impl) for x in out]
