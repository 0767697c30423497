"""The parts every family shares: projections, norms, rotary, attention and the two MLP shapes.

Numerics follow transformers' eager PyTorch code, so float32 logits agree to ~1e-6 and bf16
runs round where HF rounds: norms and softmax compute in float32 and cast back, rotary tables
are float32 cast to the compute dtype, everything else runs in the parameters' dtype.

Every parameter carries logical axis names (``vocab``, ``embed``, ``q_heads``, ``kv_heads``,
``head_dim``, ``mlp``, ``norm``) as ``out_sharding`` metadata; :mod:`.sharding` maps them to
mesh axes. Projection kernels keep their head axes (``(embed, heads, head_dim)``) so a mesh
axis shards whole heads or, when it does not divide the head count, none.

Modules built with ``stack=(L,)`` hold every parameter with a leading ``layers`` axis of size
``L`` (the blocks of :class:`~.model.CausalLM`, applied by one ``lax.scan``); their code is
written for one layer's slice, which is what the scan hands them.

Activations inside a block are token-major 2-D ``(B*T, E)``: a 3-D ``(B, T, E)`` matmul makes
XLA:CPU transpose the activation gradient before every weight-gradient dot (measured: +55 %
on a SwiGLU MLP's forward+backward), a 2-D one contracts the token axis in place.
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


def _param(rngs, shape, names, dtype, init: str = "normal", stack=()) -> nnx.Param:
  shape, names = (*stack, *shape), ("layers",) * len(stack) + tuple(names)
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

  Inputs and outputs are flat; the kernel keeps head axes for sharding. An optional LoRA
  adapter (``lora_a`` ``(in, rank)``, ``lora_b`` ``(rank, out)``, both ``nnx.LoRAParam``; see
  :mod:`.lora`) adds ``x @ lora_a @ lora_b``.

  Example:
    >>> from flax import nnx
    >>> lin = Linear((4,), (2, 3), ("embed", "q_heads", "head_dim"), bias=True,
    ...              dtype=jnp.float32, rngs=nnx.Rngs(0))
    >>> lin.kernel.shape, lin(jnp.ones((5, 4))).shape
    ((4, 2, 3), (5, 6))
  """

  def __init__(self, in_shape, out_shape, names, *, bias: bool, dtype, rngs: nnx.Rngs, stack=()):
    self.in_features, self.out_features = math.prod(in_shape), math.prod(out_shape)
    # Logical names of the flat input and output (for LoRA factors' placement).
    self.flat_axes = (names[0], names[len(in_shape)])
    self.stack = tuple(stack)
    self.kernel = _param(rngs, (*in_shape, *out_shape), names, dtype, stack=stack)
    self.bias = (
      _param(rngs, out_shape, names[len(in_shape) :], dtype, "zeros", stack) if bias else None
    )
    # Pytree data (not static) even while empty, so add_lora can fill them in place.
    self.lora_a: nnx.LoRAParam | None = nnx.data(None)
    self.lora_b: nnx.LoRAParam | None = nnx.data(None)

  def __call__(self, x: jax.Array) -> jax.Array:
    y = x @ self.kernel[...].reshape(self.in_features, self.out_features)
    if self.lora_a is not None:
      y = y + (x @ self.lora_a[...].astype(x.dtype)) @ self.lora_b[...].astype(x.dtype)
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

  def __init__(self, dim: int, kind: str, eps: float, *, dtype, names=("norm",), stack=()):
    self.kind, self.eps = kind, eps
    init = "zeros" if kind == "rms_plus_one" else "ones"
    self.scale = _param(None, (dim,), names, dtype, init, stack)
    self.bias = _param(None, (dim,), names, dtype, "zeros", stack) if kind == "layer" else None

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


def rotary_tables(positions: jax.Array, arch: Arch, dtype) -> tuple[jax.Array, jax.Array]:
  """``(cos, sin)``, each ``(B, T, 1, rotary_dim / 2)`` in ``dtype``, for :func:`rotary`.

  Computed once per forward pass and shared by every layer (angles in float32, as HF).
  """
  inv = jnp.asarray(inv_frequencies(arch))[None, None, None]
  angles = positions.astype(F32)[:, :, None, None] * inv
  return jnp.cos(angles).astype(dtype), jnp.sin(angles).astype(dtype)


def rotary(x: jax.Array, tables: tuple[jax.Array, jax.Array], rotary_dim: int) -> jax.Array:
  """Half-split rotary embedding of the first ``rotary_dim`` dims of ``x`` (B, T, H, D)."""
  cos, sin = tables
  half = rotary_dim // 2
  x1, x2, rest = x[..., :half], x[..., half:rotary_dim], x[..., rotary_dim:]
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest], axis=-1)


def attention_bias(allowed: jax.Array) -> jax.Array:
  """``(B, 1, 1, Tq, Tk)`` float32 additive mask: 0 where ``allowed`` (B, Tq, Tk), else min.

  Built once per forward pass; adding float32's lowest value reproduces HF's eager masking
  (a fully masked row, e.g. a padding query, gets a uniform softmax, as there).
  """
  return jnp.where(allowed, 0.0, jnp.finfo(F32).min).astype(F32)[:, None, None]


class Attention(nnx.Module):
  """Causal self-attention: GQA/MQA, optional q/k/v/o biases and per-head q/k norms, rotary.

  Inputs are token-major ``(B*T, E)``; ``rope`` holds the ``(B, T)``-shaped rotary tables
  (:func:`rotary_tables`), which also give the batch shape.
  """

  def __init__(self, arch: Arch, *, dtype, rngs: nnx.Rngs, stack=()):
    fam, e, d = arch.family, arch.hidden_size, arch.head_dim
    h, k = arch.num_heads, arch.num_kv_heads
    self.arch = arch
    qkv = dict(bias=fam.qkv_bias or arch.attention_bias, dtype=dtype, rngs=rngs, stack=stack)
    self.q_proj = Linear((e,), (h, d), ("embed", "q_heads", "head_dim"), **qkv)
    self.k_proj = Linear((e,), (k, d), ("embed", "kv_heads", "head_dim"), **qkv)
    self.v_proj = Linear((e,), (k, d), ("embed", "kv_heads", "head_dim"), **qkv)
    o = dict(bias=fam.o_bias or arch.attention_bias, dtype=dtype, rngs=rngs, stack=stack)
    self.o_proj = Linear((h, d), (e,), ("q_heads", "head_dim", "embed"), **o)
    if arch.qk_norm is not None:
      norm = dict(dtype=dtype, names=("head_dim",), stack=stack)
      self.q_norm = Norm(d, arch.qk_norm, arch.norm_eps, **norm)
      self.k_norm = Norm(d, arch.qk_norm, arch.norm_eps, **norm)
    else:
      self.q_norm = self.k_norm = None

  def qkv(self, x: jax.Array, rope):
    """Rotated ``q`` (B, T, H, D) and ``k``, and ``v`` (B, T, K, D) of token-major ``x``."""
    a = self.arch
    b, t = rope[0].shape[:2]
    q = self.q_proj(x).reshape(b, t, a.num_heads, a.head_dim)
    k = self.k_proj(x).reshape(b, t, a.num_kv_heads, a.head_dim)
    v = self.v_proj(x).reshape(b, t, a.num_kv_heads, a.head_dim)
    if self.q_norm is not None:
      q, k = self.q_norm(q), self.k_norm(k)
    return rotary(q, rope, a.rotary_dim), rotary(k, rope, a.rotary_dim), v

  def attend(self, q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array) -> jax.Array:
    """``q`` (B, Tq, H, D) against ``k, v`` (B, Tk, K, D) -> token-major ``(B*Tq, E)``.

    Query heads are grouped by the KV head they share (no repeated K/V); ``bias`` from
    :func:`attention_bias`; softmax in float32.
    """
    a = self.arch
    b, tq = q.shape[:2]
    q = q.reshape(b, tq, a.num_kv_heads, a.num_heads // a.num_kv_heads, a.head_dim)
    scores = jnp.einsum("bqkgd,bskd->bkgqs", q, k) * jnp.asarray(a.head_dim**-0.5, q.dtype)
    probs = jax.nn.softmax(scores.astype(F32) + bias, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgqs,bskd->bqkgd", probs, v)
    return self.o_proj(out.reshape(b * tq, a.num_heads * a.head_dim))

  def __call__(self, x: jax.Array, rope, bias: jax.Array) -> jax.Array:
    q, k, v = self.qkv(x, rope)
    return self.attend(q, k, v, bias)


def activation(name: str):
  """The function for an activation name of :data:`config.ACTIVATIONS`' values."""
  return {
    "silu": jax.nn.silu,
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "gelu_tanh": functools.partial(jax.nn.gelu, approximate=True),
  }[name]


class GatedMLP(nnx.Module):
  """``down(act(gate(x)) * up(x))``: SwiGLU (silu) or GeGLU (gemma's tanh GELU)."""

  def __init__(self, arch: Arch, *, dtype, rngs: nnx.Rngs, stack=()):
    e, f, bias = arch.hidden_size, arch.intermediate_size, arch.family.mlp_bias or arch.mlp_bias
    self.act = arch.act
    kw = dict(bias=bias, dtype=dtype, rngs=rngs, stack=stack)
    self.gate_proj = Linear((e,), (f,), ("embed", "mlp"), **kw)
    self.up_proj = Linear((e,), (f,), ("embed", "mlp"), **kw)
    self.down_proj = Linear((f,), (e,), ("mlp", "embed"), **kw)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.down_proj(activation(self.act)(self.gate_proj(x)) * self.up_proj(x))


class FcMLP(nnx.Module):
  """``fc2(act(fc1(x)))`` (phi: ``gelu_new``)."""

  def __init__(self, arch: Arch, *, dtype, rngs: nnx.Rngs, stack=()):
    e, f, bias = arch.hidden_size, arch.intermediate_size, arch.family.mlp_bias or arch.mlp_bias
    self.act = arch.act
    kw = dict(bias=bias, dtype=dtype, rngs=rngs, stack=stack)
    self.fc1 = Linear((e,), (f,), ("embed", "mlp"), **kw)
    self.fc2 = Linear((f,), (e,), ("mlp", "embed"), **kw)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.fc2(activation(self.act)(self.fc1(x)))
