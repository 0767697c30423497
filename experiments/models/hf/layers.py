"""The parts every family shares: projections, norms, rotary, attention and the two MLP shapes.

Numerics follow transformers' eager PyTorch code, so float32 logits agree to ~1e-6 and bf16
runs round where HF rounds: norms and softmax compute in float32 and cast back, rotary tables
are float32 cast to the compute dtype, everything else runs in the parameters' dtype.

Every parameter carries logical axis names (``vocab``, ``embed``, ``q_heads``, ``kv_heads``,
``head_dim``, ``mlp``, ``norm``) as ``out_sharding`` metadata; :mod:`.sharding` maps them to
mesh axes. Projection kernels keep their head axes (``(embed, heads, head_dim)``) so a mesh
axis shards whole heads or, when it does not divide the head count, none.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from experiments.models.hf.config import Arch

F32 = jnp.float32


def _param(rngs, shape, names, dtype, init: str = "normal") -> nnx.Param:
  if init == "normal":
    value = nnx.initializers.normal(0.02)(rngs.params(), shape, dtype)
  else:
    value = (jnp.ones if init == "ones" else jnp.zeros)(shape, dtype)
  # Placement happens at load time (sharding.py); eager sharding fails on abstract models.
  return nnx.Param(value, out_sharding=names, eager_sharding=False)


def _last_axis(v: jax.Array, ndim: int) -> jax.Array:
  """``v`` (n,) shaped to broadcast along the last axis of a rank-``ndim`` array."""
  return v.reshape((1,) * (ndim - 1) + (-1,))


class Linear(nnx.Module):
  """``x (..., prod(in_shape)) -> (..., prod(out_shape))``, kernel ``(*in_shape, *out_shape)``.

  Inputs and outputs are flat so ``nnx.LoRA`` can wrap it (:mod:`.lora`); the kernel keeps
  head axes for sharding.

  Example:
    >>> from flax import nnx
    >>> lin = Linear((4,), (2, 3), ("embed", "q_heads", "head_dim"), bias=True,
    ...              dtype=jnp.float32, rngs=nnx.Rngs(0))
    >>> lin.kernel.shape, lin(jnp.ones((5, 4))).shape
    ((4, 2, 3), (5, 6))
  """

  def __init__(self, in_shape, out_shape, names, *, bias: bool, dtype, rngs: nnx.Rngs):
    self.in_features, self.out_features = math.prod(in_shape), math.prod(out_shape)
    # Logical names of the flat input and output (for LoRA factors' placement).
    self.flat_axes = (names[0], names[len(in_shape)])
    self.kernel = _param(rngs, (*in_shape, *out_shape), names, dtype)
    self.bias = _param(rngs, out_shape, names[len(in_shape) :], dtype, "zeros") if bias else None

  def __call__(self, x: jax.Array) -> jax.Array:
    y = x @ self.kernel[...].reshape(self.in_features, self.out_features)
    if self.bias is not None:
      y = y + _last_axis(self.bias[...], y.ndim)
    return y


class Embed(nnx.Module):
  """Token embedding table ``(vocab, embed)``, also the tied output projection."""

  def __init__(self, vocab: int, dim: int, *, dtype, rngs: nnx.Rngs):
    self.embedding = _param(rngs, (vocab, dim), ("vocab", "embed"), dtype)

  def __call__(self, ids: jax.Array) -> jax.Array:
    return jnp.take(self.embedding[...], ids, axis=0)

  def attend(self, x: jax.Array) -> jax.Array:
    """Tied output logits ``x @ embedding.T``."""
    return x @ self.embedding[...].T


class Norm(nnx.Module):
  """RMSNorm (``rms``: llama/qwen), gemma's ``(1 + w)`` RMSNorm, or LayerNorm with bias (phi).

  Statistics in float32, as HF does. ``rms`` casts back *before* the scale (llama's order),
  the other two scale in float32 and cast after (gemma's and torch LayerNorm's order).
  """

  def __init__(self, dim: int, kind: str, eps: float, *, dtype, names=("norm",)):
    self.kind, self.eps = kind, eps
    self.scale = _param(None, (dim,), names, dtype, "zeros" if kind == "rms_plus_one" else "ones")
    self.bias = _param(None, (dim,), names, dtype, "zeros") if kind == "layer" else None

  def __call__(self, x: jax.Array) -> jax.Array:
    h = x.astype(F32)
    if self.kind == "layer":
      h = h - jnp.mean(h, axis=-1, keepdims=True)
    h = h * jax.lax.rsqrt(jnp.mean(jnp.square(h), axis=-1, keepdims=True) + self.eps)
    w = _last_axis(self.scale[...], x.ndim)
    if self.kind == "rms":
      return w * h.astype(x.dtype)
    if self.kind == "rms_plus_one":
      return (h * (1.0 + w.astype(F32))).astype(x.dtype)
    return (h * w.astype(F32) + _last_axis(self.bias[...], x.ndim).astype(F32)).astype(x.dtype)


@functools.lru_cache(maxsize=64)
def inv_frequencies(arch: Arch) -> np.ndarray:
  """Rotary inverse frequencies (rotary_dim / 2,) float32, with linear or Llama-3 scaling.

  Example:
    >>> from experiments.models.hf.config import FAMILIES
    >>> arch = Arch("llama", FAMILIES["llama"], 8, 8, 8, 1, 1, 1, 4, rope_theta=100.0)
    >>> inv_frequencies(arch).tolist()
    [1.0, 0.10000000149011612]
  """
  dim = arch.rotary_dim
  inv = 1.0 / arch.rope_theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
  if arch.rope_scaling is not None:
    kind, fields = arch.rope_scaling
    f = dict(fields)
    if kind == "linear":
      inv = inv / f["factor"]
    elif kind == "llama3":
      # Long wavelengths slowed by `factor`, short ones kept, a smooth ramp between.
      old = f["original_max_position_embeddings"]
      low, high = f["low_freq_factor"], f["high_freq_factor"]
      wavelen = 2 * math.pi / inv
      scaled = np.where(wavelen > old / low, inv / f["factor"], inv)
      smooth = (old / wavelen - low) / (high - low)
      ramp = (1 - smooth) * scaled / f["factor"] + smooth * scaled
      medium = (wavelen >= old / high) & (wavelen <= old / low)
      inv = np.where(medium, ramp, scaled)
  return inv.astype(np.float32)


def rotary(x: jax.Array, positions: jax.Array, arch: Arch) -> jax.Array:
  """Half-split rotary embedding of the first ``arch.rotary_dim`` dims of ``x`` (B, T, H, D)."""
  dim = arch.rotary_dim
  inv = jnp.asarray(inv_frequencies(arch))[None, None, None]
  angles = positions.astype(F32)[:, :, None, None] * inv
  cos, sin = jnp.cos(angles).astype(x.dtype), jnp.sin(angles).astype(x.dtype)
  x1, x2, rest = x[..., : dim // 2], x[..., dim // 2 : dim], x[..., dim:]
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest], axis=-1)


class Attention(nnx.Module):
  """Causal self-attention: GQA/MQA, optional q/k/v/o biases and per-head q/k norms, rotary."""

  def __init__(self, arch: Arch, *, dtype, rngs: nnx.Rngs):
    fam, e, d = arch.family, arch.hidden_size, arch.head_dim
    h, k = arch.num_heads, arch.num_kv_heads
    self.arch = arch
    qkv = dict(bias=fam.qkv_bias or arch.attention_bias, dtype=dtype, rngs=rngs)
    self.q_proj = Linear((e,), (h, d), ("embed", "q_heads", "head_dim"), **qkv)
    self.k_proj = Linear((e,), (k, d), ("embed", "kv_heads", "head_dim"), **qkv)
    self.v_proj = Linear((e,), (k, d), ("embed", "kv_heads", "head_dim"), **qkv)
    o = dict(bias=fam.o_bias or arch.attention_bias, dtype=dtype, rngs=rngs)
    self.o_proj = Linear((h, d), (e,), ("q_heads", "head_dim", "embed"), **o)
    if arch.qk_norm is not None:
      self.q_norm = Norm(d, arch.qk_norm, arch.norm_eps, dtype=dtype, names=("head_dim",))
      self.k_norm = Norm(d, arch.qk_norm, arch.norm_eps, dtype=dtype, names=("head_dim",))
    else:
      self.q_norm = self.k_norm = None

  def _qkv(self, x: jax.Array, positions: jax.Array):
    a = self.arch
    b, t, _ = x.shape
    q = self.q_proj(x).reshape(b, t, a.num_heads, a.head_dim)
    k = self.k_proj(x).reshape(b, t, a.num_kv_heads, a.head_dim)
    v = self.v_proj(x).reshape(b, t, a.num_kv_heads, a.head_dim)
    if self.q_norm is not None:
      q, k = self.q_norm(q), self.k_norm(k)
    return rotary(q, positions, a), rotary(k, positions, a), v

  def _attend(self, q: jax.Array, k: jax.Array, v: jax.Array, allowed: jax.Array) -> jax.Array:
    """``q`` (B, Tq, H, D) against ``k, v`` (B, Tk, K, D); ``allowed`` (B, Tq, Tk) bool."""
    a = self.arch
    b, tq = q.shape[:2]
    q = q.reshape(b, tq, a.num_kv_heads, a.num_heads // a.num_kv_heads, a.head_dim)
    scores = jnp.einsum("bqkgd,bskd->bkgqs", q, k) * (a.head_dim**-0.5)
    # Masked scores take float32's lowest value (as HF's eager mask), softmax in float32.
    scores = jnp.where(allowed[:, None, None], scores.astype(F32), jnp.finfo(F32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgqs,bskd->bqkgd", probs, v)
    return self.o_proj(out.reshape(b, tq, a.num_heads * a.head_dim))

  def __call__(self, x: jax.Array, positions: jax.Array, mask: jax.Array) -> jax.Array:
    q, k, v = self._qkv(x, positions)
    t = x.shape[1]
    causal = jnp.tril(jnp.ones((t, t), jnp.bool_))
    return self._attend(q, k, v, causal[None] & (mask[:, None, :] > 0))

  def decode(self, x, positions, key_mask, cache, index):
    """Attention of new positions ``index .. index + s`` against a (k, v) cache (B, S, K, D)."""
    q, k, v = self._qkv(x, positions)
    zero = jnp.zeros((), jnp.int32)
    start = (zero, jnp.asarray(index, jnp.int32), zero, zero)
    ck = jax.lax.dynamic_update_slice(cache[0], k.astype(cache[0].dtype), start)
    cv = jax.lax.dynamic_update_slice(cache[1], v.astype(cache[1].dtype), start)
    q_slot = index + jnp.arange(x.shape[1], dtype=jnp.int32)
    causal = jnp.arange(ck.shape[1], dtype=jnp.int32)[None, :] <= q_slot[:, None]
    return self._attend(q, ck, cv, causal[None] & (key_mask[:, None, :] > 0)), (ck, cv)


def activation(name: str):
  """The function for an activation name of :data:`config.ACTIVATIONS`' values."""
  return {
    "silu": jax.nn.silu,
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "gelu_tanh": functools.partial(jax.nn.gelu, approximate=True),
  }[name]


class GatedMLP(nnx.Module):
  """``down(act(gate(x)) * up(x))``: SwiGLU (silu) or GeGLU (gemma's tanh GELU)."""

  def __init__(self, arch: Arch, *, dtype, rngs: nnx.Rngs):
    e, f, bias = arch.hidden_size, arch.intermediate_size, arch.family.mlp_bias or arch.mlp_bias
    self.act = arch.act
    self.gate_proj = Linear((e,), (f,), ("embed", "mlp"), bias=bias, dtype=dtype, rngs=rngs)
    self.up_proj = Linear((e,), (f,), ("embed", "mlp"), bias=bias, dtype=dtype, rngs=rngs)
    self.down_proj = Linear((f,), (e,), ("mlp", "embed"), bias=bias, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.down_proj(activation(self.act)(self.gate_proj(x)) * self.up_proj(x))


class FcMLP(nnx.Module):
  """``fc2(act(fc1(x)))`` (phi: ``gelu_new``)."""

  def __init__(self, arch: Arch, *, dtype, rngs: nnx.Rngs):
    e, f, bias = arch.hidden_size, arch.intermediate_size, arch.family.mlp_bias or arch.mlp_bias
    self.act = arch.act
    self.fc1 = Linear((e,), (f,), ("embed", "mlp"), bias=bias, dtype=dtype, rngs=rngs)
    self.fc2 = Linear((f,), (e,), ("mlp", "embed"), bias=bias, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.fc2(activation(self.act)(self.fc1(x)))
