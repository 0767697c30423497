"""Blockwise 8-bit dynamic quantization (bitsandbytes numerics, shape-preserving layout).

A float array ``x`` becomes ``codes`` (int8 for the signed map, uint8 for the
unsigned one) with exactly ``x.shape``, plus float32 ``scales`` with the same
rank, one per block of ``block_size`` consecutive elements along the last axis::

  scales[..., b] = max |x[..., b*B:(b+1)*B]|
  codes[..., i]  = nearest code to x[..., i] / scales[..., i // B]
  decode        = dynamic_map[code] * scales[..., i // B]

Unlike bitsandbytes, which flattens a tensor into 1-D blocks, every block here
lies inside one row of the last axis, so codes and scales can take the
parameter's PartitionSpec (the last axis's shards must hold whole blocks).

Encoding uses no search: the top 16 bits of an order-preserving integer view
of ``x / scale`` index a 65,536-entry table that holds, for that bucket of
floats, the code of the bucket's smallest value and the one midpoint between
codes that falls inside the bucket (there is never more than one; checked when
the table is built). One gather and one integer comparison give the exact
nearest code.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

_MAX_EXPONENT_BITS = 7  # bitsandbytes' defaults: 7 decades of exponent, 8 bits in all.
_ZERO_CODE = {True: -1, False: 0}  # the stored code of 0.0 in each map.


class QuantizedArray(NamedTuple):
  """A blockwise-quantized array (a pytree: both fields are leaves).

  The signed map stores its sorted index ``i`` as the int8 ``i - 128``; the
  unsigned map stores ``i`` as a uint8. The dtype of ``codes`` therefore says
  which map decodes it.
  """

  codes: jax.Array  # int8 (signed map) or uint8 (unsigned map), shape = x.shape.
  scales: jax.Array  # float32, shape = (*x.shape[:-1], ceil(x.shape[-1] / block_size)).


@functools.cache
def _dynamic_map_np(signed: bool) -> np.ndarray:
  """bitsandbytes' ``create_dynamic_map(signed)``, in its float32 arithmetic.

  Each decade ``10**(j-6)``, ``j = 0..6``, holds the midpoints of an evenly
  spaced grid on ``[0.1, 1]`` with ``2**j`` cells (``2**(j+1)`` when unsigned,
  which has no sign bit to spend), scaled by the decade; the signed map mirrors
  them; both add 0 and 1. The grid follows ``torch.linspace``'s float32 rule
  (from the start for the first half, from the end for the second) so the
  values match bit for bit.
  """
  f32 = np.float32
  values = [f32(0.0), f32(1.0)]
  for j in range(_MAX_EXPONENT_BITS):
    cells = 2**j if signed else 2 ** (j + 1)
    start, end = f32(0.1), f32(1.0)
    step = (end - start) / f32(cells)
    idx = np.arange(cells + 1)
    grid = np.where(
      idx < (cells + 1) // 2,
      start + step * idx.astype(f32),
      end - step * (cells - idx).astype(f32),
    ).astype(f32)
    means = (grid[:-1] + grid[1:]) / f32(2.0)
    decade = means if j == _MAX_EXPONENT_BITS - 1 else f32(10.0 ** (j - 6)) * means
    values.extend(decade)
    if signed:
      values.extend(-decade)
  out = np.sort(np.asarray(values, f32))
  assert out.shape == (256,)
  return out


def dynamic_map(signed: bool) -> jax.Array:
  """The 256 sorted values of bitsandbytes' dynamic (tree) quantization map.

  Args:
    signed: the signed map (values in ``[-0.993, 1]``, used for moments that
      can be negative) or the unsigned one (values in ``[0, 1]``).

  Returns:
    A float32 array of shape ``(256,)``, ascending.

  Example:
    >>> from dualoptim_jax import quantization
    >>> m = quantization.dynamic_map(signed=True)
    >>> m.shape, float(m[127]), float(m[255])
    ((256,), 0.0, 1.0)
  """
  return jnp.asarray(_dynamic_map_np(bool(signed)))


def _order_key(x: np.ndarray) -> np.ndarray:
  """An unsigned integer that sorts like the float32 ``x`` (NaNs at the ends)."""
  bits = x.astype(np.float32).view(np.uint32)
  return np.where(bits >> 31 == 1, ~bits, bits | np.uint32(0x80000000)).astype(np.uint32)


@functools.cache
def _encode_table_np(signed: bool) -> np.ndarray:
  """The 65,536-entry encode table: ``(index of the bucket's first code) << 16 | carry``.

  A bucket holds the floats whose order key shares its top 16 bits. Inside it,
  the nearest code steps up at most once, when the key's low 16 bits exceed a
  threshold ``t``. Storing ``carry = 0xFFFF - t`` turns that step into the carry
  of ``entry + low16``, so the code is ``(entry + low16) >> 16``: one use of
  the gathered value, which lets XLA fuse the whole encode into one loop.
  """
  values = _dynamic_map_np(signed)
  mids = (values[:-1] + values[1:]) / np.float32(2.0)
  mid_keys = _order_key(mids).astype(np.int64)
  bucket_start = np.arange(65536, dtype=np.int64) << 16
  # Ties go to the lower code: x selects code j+1 only when x > mids[j].
  below = np.searchsorted(mid_keys, bucket_start, side="left")
  inside = np.searchsorted(mid_keys, bucket_start + 0xFFFF, side="right") - below
  if inside.max() > 1:
    raise AssertionError("two code boundaries share a 16-bit bucket; the table cannot encode")
  nxt = mid_keys[np.minimum(below, mids.size - 1)]
  threshold = np.where(inside == 1, nxt & 0xFFFF, 0xFFFF)
  return ((below << 16) | (0xFFFF - threshold)).astype(np.int32)


def _check_rank(x: jax.Array) -> None:
  if x.ndim == 0:
    raise ValueError("blockwise quantization needs an array with at least one axis.")


def num_blocks(last_dim: int, block_size: int) -> int:
  """Blocks along a last axis of ``last_dim`` elements: ``ceil(last_dim / block_size)``."""
  return -(-last_dim // block_size)


def scales_shape(shape: tuple[int, ...], block_size: int) -> tuple[int, ...]:
  """Shape of the scales of an array of ``shape``."""
  return (*shape[:-1], num_blocks(shape[-1], block_size))


def _blocks(x: jax.Array, block_size: int) -> jax.Array:
  """``x`` as ``(*x.shape[:-1], blocks, block_size)``, zero-padded at the end."""
  n = x.shape[-1]
  nb = num_blocks(n, block_size)
  width = min(block_size, n) if nb == 1 else block_size
  pad = nb * width - n
  if pad:
    x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, pad)])
  return x.reshape(*x.shape[:-1], nb, width)


def quantize_blockwise(x: jax.Array, *, signed: bool, block_size: int = 256) -> QuantizedArray:
  """Quantizes ``x`` to 8-bit codes plus one float32 absmax scale per block.

  Blocks run along the last axis and never straddle rows. Each element gets
  the code nearest to ``x / absmax(block)`` (ties to the lower code), exactly.

  Non-finite input: a NaN or +-inf anywhere in a block makes that block's scale
  NaN or inf, so every element of that block decodes to NaN or +-inf; other
  blocks are unaffected. A block whose absmax is 0 (or subnormal, on platforms
  that flush subnormals to zero, as XLA on CPU does) decodes to zeros.

  Args:
    x: a floating array with at least one axis.
    signed: use the signed map (int8 codes) rather than the unsigned one
      (uint8 codes; negative inputs then clamp to 0).
    block_size: elements per block along the last axis.

  Returns:
    A :class:`QuantizedArray` with ``codes.shape == x.shape``.

  Example:
    >>> import jax.numpy as jnp
    >>> from dualoptim_jax import quantization
    >>> q = quantization.quantize_blockwise(jnp.array([[0.5, -2.0, 1.0]]), signed=True)
    >>> q.codes.dtype, q.scales.shape
    (dtype('int8'), (1, 1))
    >>> [round(float(v), 2) for v in quantization.dequantize_blockwise(q)[0]]
    [0.5, -1.99, 1.0]
  """
  _check_rank(x)
  if block_size < 1:
    raise ValueError(f"block_size must be positive, got {block_size}.")
  n = x.shape[-1]
  blocks = _blocks(jnp.asarray(x, jnp.float32), block_size)
  absmax = jnp.max(jnp.abs(blocks), axis=-1)
  safe = jnp.where(absmax > 0, absmax, jnp.float32(1))
  # XLA turns the division into a multiplication by 1 / absmax, which is
  # subnormal (flushed to 0 on CPU) above 2**126: shrink such blocks first (exact).
  shrink = jnp.where(safe > jnp.float32(2.0**100), jnp.float32(2.0**-8), jnp.float32(1))[..., None]
  normed = (blocks * shrink) / (safe[..., None] * shrink)
  codes = _encode_normalised(normed, signed)
  codes = codes.reshape(*codes.shape[:-2], -1)[..., :n]
  return QuantizedArray(codes=codes, scales=absmax)


def _encode_normalised(y: jax.Array, signed: bool) -> jax.Array:
  """Nearest code of float32 values ``y`` (already divided by their block's absmax)."""
  bits = jax.lax.bitcast_convert_type(y, jnp.uint32)
  negative = (bits >> 31).astype(jnp.bool_)
  key = jnp.where(negative, ~bits, bits | jnp.uint32(0x80000000))
  table = jnp.asarray(_encode_table_np(signed))
  entry = _lookup(table, (key >> 16).astype(jnp.int32))
  index = (entry + (key & jnp.uint32(0xFFFF)).astype(jnp.int32)) >> 16
  if signed:
    return (index - 128).astype(jnp.int8)
  return index.astype(jnp.uint8)


def is_codes(x: jax.Array) -> bool:
  """Whether ``x`` holds 8-bit codes (int8: signed map, uint8: unsigned map)."""
  return x.dtype in (jnp.int8, jnp.uint8)


def decode_codes(codes: jax.Array) -> jax.Array:
  """The map values (float32, in ``[-1, 1]``) of int8 (signed) or uint8 (unsigned) codes."""
  if not is_codes(codes):
    raise TypeError(f"codes must be int8 (signed map) or uint8 (unsigned map), got {codes.dtype}.")
  signed = codes.dtype == jnp.int8
  index = codes.astype(jnp.int32) + (128 if signed else 0)
  return _lookup(dynamic_map(signed), index)


def _lookup(table: jax.Array, index: jax.Array) -> jax.Array:
  """``table[index]`` for in-range indices, sharded like ``index`` (an elementwise lookup)."""
  return table.at[index].get(mode="promise_in_bounds", out_sharding=jax.typeof(index).sharding)


def dequantize_blockwise(q: QuantizedArray, *, block_size: int = 256) -> jax.Array:
  """Decodes a :class:`QuantizedArray` to float32 of the original shape.

  Args:
    q: the output of :func:`quantize_blockwise` (or any codes/scales pair with
      the same layout).
    block_size: the block size ``q`` was made with.

  Returns:
    ``dynamic_map[codes] * scales`` broadcast over each block, float32.

  Example:
    >>> import jax.numpy as jnp
    >>> from dualoptim_jax import quantization
    >>> x = jnp.linspace(0.0, 1.0, 300).reshape(3, 100)
    >>> q = quantization.quantize_blockwise(x, signed=False, block_size=64)
    >>> q.codes.shape, q.scales.shape
    ((3, 100), (3, 2))
    >>> y = quantization.dequantize_blockwise(q, block_size=64)
    >>> bool(jnp.max(jnp.abs(y - x)) < 0.01)
    True
  """
  codes, scales = q
  _check_rank(codes)
  n = codes.shape[-1]
  if scales.shape != scales_shape(codes.shape, block_size):
    raise ValueError(
      f"scales of shape {scales.shape} do not fit codes of shape {codes.shape} "
      f"with block_size={block_size}."
    )
  values = _blocks(decode_codes(codes), block_size)
  out = values * scales[..., None].astype(jnp.float32)
  return out.reshape(*out.shape[:-2], -1)[..., :n]


def code_dtype(signed: bool) -> jnp.dtype:
  """int8 for the signed map, uint8 for the unsigned one."""
  return jnp.dtype(jnp.int8 if signed else jnp.uint8)


def zero_code(signed: bool) -> int:
  """The stored code of 0.0: -1 (sorted index 127) signed, 0 unsigned."""
  return _ZERO_CODE[bool(signed)]
