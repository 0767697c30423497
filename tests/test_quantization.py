"""Blockwise 8-bit dynamic quantization: the maps, exact nearest-code encoding, properties."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from dualoptim_jax import quantization
from dualoptim_jax._src import quantization as quant_src

BIG = float(np.float32(3e38))
PROPERTY = settings(max_examples=8, deadline=None)


def definition_map(signed: bool) -> np.ndarray:
  """bitsandbytes' create_dynamic_map from its definition, in float64."""
  vals = [0.0, 1.0]
  for j in range(7):
    cells = 2**j if signed else 2 ** (j + 1)
    grid = np.linspace(0.1, 1.0, cells + 1)
    means = 10.0 ** (j - 6) * (grid[:-1] + grid[1:]) / 2
    vals += list(means) + (list(-means) if signed else [])
  return np.sort(np.asarray(vals))


def nearest_index(y: np.ndarray, signed: bool) -> np.ndarray:
  """Brute-force nearest code (ties to the lower code), as a sorted-map index."""
  m = quant_src._dynamic_map_np(signed)
  mids = (m[:-1] + m[1:]) / np.float32(2)
  return np.searchsorted(mids, y, side="left")


def as_index(codes) -> np.ndarray:
  c = np.asarray(codes).astype(np.int32)
  return c + 128 if np.asarray(codes).dtype == np.int8 else c


@pytest.mark.parametrize("signed", [True, False])
def test_dynamic_map_follows_bitsandbytes_definition(signed):
  m = np.asarray(quantization.dynamic_map(signed))
  assert m.shape == (256,) and m.dtype == np.float32
  assert np.all(np.diff(m) > 0), "256 distinct ascending values"
  np.testing.assert_allclose(m, definition_map(signed), rtol=2e-7, atol=0)
  assert m[-1] == 1.0 and 0.0 in m
  if signed:
    # bitsandbytes' signed map has no -1: the most negative code is -0.99297.
    assert m[0] == pytest.approx(-0.99296875) and m[127] == 0.0
    np.testing.assert_array_equal(m[:127], -m[128:255][::-1])
  else:
    assert m[0] == 0.0 and m[1] == pytest.approx(3.25e-7)


@pytest.mark.parametrize("signed", [True, False])
def test_encode_is_the_exact_nearest_code(signed):
  m = quant_src._dynamic_map_np(signed)
  mids = (m[:-1] + m[1:]) / np.float32(2)
  rng = np.random.default_rng(0)
  lo = -1.0 if signed else 0.0
  y = np.concatenate(
    [
      rng.uniform(lo, 1.0, 200_000).astype(np.float32),
      mids,
      np.nextafter(mids, np.float32(2)),
      np.nextafter(mids, np.float32(-2)),
      m,
      (rng.standard_normal(20_000) * 10.0 ** rng.uniform(-9, 0, 20_000)).astype(np.float32),
      np.float32([1.0000001, 1.5, -1.5, -1.0000001, 0.0, -0.0]),
    ]
  )
  if not signed:
    y = np.abs(y)
  got = as_index(quant_src._encode_normalised(jnp.asarray(y), signed))
  np.testing.assert_array_equal(got, nearest_index(y, signed))


def test_zero_code_and_zeros():
  for signed in (True, False):
    q = quantization.quantize_blockwise(jnp.zeros((3, 300)), signed=signed)
    codes = np.full((3, 300), quant_src.zero_code(signed), quant_src.code_dtype(signed))
    np.testing.assert_array_equal(q.codes, codes)
    assert q.codes.dtype == codes.dtype
    np.testing.assert_array_equal(q.scales, np.zeros(quant_src.scales_shape((3, 300), 256)))
    assert q.scales.shape == (3, 2)
    np.testing.assert_array_equal(quantization.dequantize_blockwise(q), np.zeros((3, 300)))


def test_relative_error_vs_bitsandbytes_figures():
  """bitsandbytes: 1.08e-2 (signed, N(0,1)) and 6.4e-3 (unsigned, squared normal), block 256."""
  x = jax.random.normal(jax.random.key(0), (1024, 1024))

  def rel(y, signed):
    q = quantization.quantize_blockwise(y, signed=signed, block_size=256)
    d = quantization.dequantize_blockwise(q, block_size=256)
    return float(jnp.linalg.norm(d - y) / jnp.linalg.norm(y))

  assert rel(x, True) <= 1.05 * 1.08e-2
  assert rel(x * x, False) <= 1.05 * 6.4e-3


def block_bound(x: np.ndarray, block: int, signed: bool) -> np.ndarray:
  """Per element: half the largest gap of the map times the block's absmax (plus rounding)."""
  n = x.shape[-1]
  nb = math.ceil(n / block)
  pad = np.pad(np.abs(x), [(0, 0)] * (x.ndim - 1) + [(0, nb * block - n)])
  absmax = pad.reshape(*x.shape[:-1], nb, block).max(-1)
  per = np.repeat(absmax, block, axis=-1)[..., :n]
  m = quant_src._dynamic_map_np(signed).astype(np.float64)
  half_gap = max(np.diff(m).max() / 2, 1 - 0.99296875 if signed else 0)
  return per * (half_gap + 1e-6)


shapes = hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=7).flatmap(
  lambda s: st.integers(1, 600).map(lambda last: (*s[:-1], last))
)


@PROPERTY
@given(
  data=st.data(),
  shape=shapes,
  signed=st.booleans(),
  block=st.sampled_from([7, 64, 256]),
  magnitude=st.sampled_from([1e-30, 1e-6, 1.0, 1e6, 1e30]),
)
def test_round_trip_properties(data, shape, signed, block, magnitude):
  """Shapes, dtypes, and |decode - x| <= half a code gap x block absmax, at any scale."""
  if math.prod(shape) > 20_000:
    shape = (*shape[:-1][:1], shape[-1])
  x = data.draw(hnp.arrays(np.float32, shape, elements=st.floats(-1, 1, width=32)))
  x = (x * np.float32(magnitude)).astype(np.float32)
  if not signed:
    x = np.abs(x)
  q = quantization.quantize_blockwise(jnp.asarray(x), signed=signed, block_size=block)
  assert q.codes.shape == x.shape
  assert q.codes.dtype == (np.int8 if signed else np.uint8)
  assert q.scales.shape == (*x.shape[:-1], math.ceil(x.shape[-1] / block))
  assert q.scales.dtype == np.float32
  d = np.asarray(quantization.dequantize_blockwise(q, block_size=block))
  assert d.shape == x.shape and d.dtype == np.float32
  # Subnormals may flush to zero on CPU (documented): allow the smallest normal as slack.
  tiny = np.finfo(np.float32).tiny
  assert np.all(np.abs(d - x) <= np.maximum(block_bound(x, block, signed), tiny))
  # Each block's largest magnitude is kept to within the map's end gap.
  np.testing.assert_allclose(np.asarray(q.scales).max(initial=0), np.abs(x).max(), rtol=0)


@PROPERTY
@given(
  value=st.floats(-BIG, BIG, width=32, allow_subnormal=False).map(np.float32),
  shape=st.sampled_from([(5,), (2, 300), (1, 256), (3, 1)]),
)
def test_constant_blocks(value, shape):
  x = jnp.full(shape, value, jnp.float32)
  d = quantization.dequantize_blockwise(quantization.quantize_blockwise(x, signed=True))
  # A positive constant hits the code 1.0 exactly; a negative one the map's -0.99297.
  expected = value if value >= 0 else np.float32(-0.99296875) * np.float32(-value)
  np.testing.assert_allclose(d, np.full(shape, expected, np.float32), rtol=1e-6)


def test_subnormal_blocks_decode_to_at_most_their_absmax():
  x = jnp.asarray(np.float32([1e-40, -3e-41, 0.0, 1e-39]))
  d = np.asarray(quantization.dequantize_blockwise(quantization.quantize_blockwise(x, signed=True)))
  assert np.all(np.isfinite(d)) and np.all(np.abs(d - np.asarray(x)) <= 1e-39)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_poisons_only_its_block(bad):
  """Documented: a NaN/inf makes its block's scale non-finite; other blocks are exact as before."""
  x = np.array(jax.random.normal(jax.random.key(1), (2, 600)))
  clean = quantization.quantize_blockwise(jnp.asarray(x), signed=True)
  x[1, 300] = bad  # row 1, block 1 (elements 256..511)
  q = quantization.quantize_blockwise(jnp.asarray(x), signed=True)
  d = np.asarray(quantization.dequantize_blockwise(q))
  assert not np.any(np.isfinite(d[1, 256:512]))
  np.testing.assert_array_equal(d[0], np.asarray(quantization.dequantize_blockwise(clean))[0])
  np.testing.assert_array_equal(
    d[1, :256], np.asarray(quantization.dequantize_blockwise(clean))[1, :256]
  )
  np.testing.assert_array_equal(
    d[1, 512:], np.asarray(quantization.dequantize_blockwise(clean))[1, 512:]
  )
  assert np.asarray(q.codes).dtype == np.int8  # codes stay valid integers


def test_unsigned_map_clamps_negatives_to_zero():
  x = jnp.asarray([[-1.0, 0.5, 1.0]])
  d = quantization.dequantize_blockwise(quantization.quantize_blockwise(x, signed=False))
  assert float(d[0, 0]) == 0.0 and float(d[0, 2]) == 1.0


def test_jit_and_pytree():
  x = jax.random.normal(jax.random.key(2), (4, 33, 129))
  q = jax.jit(lambda v: quantization.quantize_blockwise(v, signed=True, block_size=64))(x)
  assert jax.tree.structure(q).num_leaves == 2
  eager = quantization.quantize_blockwise(x, signed=True, block_size=64)
  np.testing.assert_array_equal(q.codes, eager.codes)
  d = jax.jit(lambda q: quantization.dequantize_blockwise(q, block_size=64))(q)
  assert d.shape == x.shape


def test_bad_arguments():
  with pytest.raises(ValueError, match="at least one axis"):
    quantization.quantize_blockwise(jnp.float32(1.0), signed=True)
  q = quantization.quantize_blockwise(jnp.ones((2, 300)), signed=True, block_size=64)
  with pytest.raises(ValueError, match="block_size=256"):
    quantization.dequantize_blockwise(q)
  with pytest.raises(TypeError, match="int8"):
    quantization.dequantize_blockwise(
      quantization.QuantizedArray(q.codes.astype(jnp.int32), q.scales), block_size=64
    )


def test_reachable_as_an_attribute_of_the_package():
  """``import dualoptim_jax as do; do.quantization...`` (the README's API table names it so)."""
  import dualoptim_jax as do

  assert do.quantization is quantization
  assert "quantization" in do.__all__
  q = do.quantization.quantize_blockwise(jnp.ones((2, 4)), signed=True)
  np.testing.assert_array_equal(do.quantization.dequantize_blockwise(q), 1.0)
