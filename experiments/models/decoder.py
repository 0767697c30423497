"""A small decoder-only transformer in Flax NNX (RMSNorm, RoPE, SwiGLU).

Every parameter carries logical axis names (``embed``, ``mlp``, ``heads``,
``kv``, ``vocab``) through ``nnx.with_partitioning``, so the same model shards on
a mesh once logical axis rules map those names to mesh axes. On one CPU device
the annotations are inert.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Shape of the transformer.

  Attributes:
    vocab_size: number of tokens (tied input/output embedding).
    d_model: residual width.
    n_layers: number of blocks.
    n_heads: attention heads (head size ``d_model // n_heads``).
    d_ff: hidden width of the SwiGLU feed-forward.
    max_len: longest sequence the RoPE tables cover.
  """

  vocab_size: int = 1024
  d_model: int = 128
  n_layers: int = 4
  n_heads: int = 4
  d_ff: int = 352
  max_len: int = 256


# Named sizes for ``--model-size``; "small" (0.8M parameters with a 1k vocabulary) is the CPU
# default: two wide layers memorise as well as four narrow ones and compile in half the time.
MODEL_SIZES: dict[str, dict[str, int]] = {
  "tiny": dict(d_model=32, n_layers=1, n_heads=2, d_ff=64),
  "small": dict(d_model=160, n_layers=2, n_heads=4, d_ff=448),
  "base": dict(d_model=256, n_layers=6, n_heads=8, d_ff=704),
  "large": dict(d_model=512, n_layers=8, n_heads=8, d_ff=1408),
}


def config_for(size: str, vocab_size: int, max_len: int) -> ModelConfig:
  """The :class:`ModelConfig` of a named size (``tiny``, ``small``, ``base``, ``large``)."""
  if size not in MODEL_SIZES:
    raise ValueError(f"unknown model size {size!r}; choose from {', '.join(MODEL_SIZES)}")
  return ModelConfig(vocab_size=vocab_size, max_len=max_len, **MODEL_SIZES[size])


def _param(rngs: nnx.Rngs, shape: tuple[int, ...], names: tuple[str | None, ...], scale: float):
  value = nnx.initializers.normal(scale)(rngs.params(), shape, jnp.float32)
  # Logical axis names as metadata; placement happens when a mesh and rules are set.
  return nnx.Param(value, out_sharding=names, eager_sharding=False)


class RMSNorm(nnx.Module):
  """Root-mean-square normalisation with a learned scale."""

  def __init__(self, dim: int):
    ones = jnp.ones((dim,), jnp.float32)
    self.scale = nnx.Param(ones, out_sharding=("embed",), eager_sharding=False)

  def __call__(self, x: jax.Array) -> jax.Array:
    var = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
    return x * jax.lax.rsqrt(var + jnp.float32(1e-6)) * self.scale[...][None, None, :]


def rope(x: jax.Array, positions: jax.Array) -> jax.Array:
  """Rotary position embedding of ``x`` (batch, seq, heads, head_dim)."""
  half = x.shape[-1] // 2
  freqs = jnp.float32(10_000.0) ** (-jnp.arange(half, dtype=jnp.float32) / jnp.float32(half))
  angles = positions.astype(jnp.float32)[:, :, None, None] * freqs[None, None, None, :]
  sin, cos = jnp.sin(angles), jnp.cos(angles)
  x1, x2 = x[..., :half], x[..., half:]
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


class Attention(nnx.Module):
  """Causal multi-head self-attention with RoPE and a key-padding mask."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    head_dim = cfg.d_model // cfg.n_heads
    s = cfg.d_model**-0.5
    self.n_heads, self.head_dim = cfg.n_heads, head_dim
    self.wq = _param(rngs, (cfg.d_model, cfg.n_heads, head_dim), ("embed", "heads", "kv"), s)
    self.wk = _param(rngs, (cfg.d_model, cfg.n_heads, head_dim), ("embed", "heads", "kv"), s)
    self.wv = _param(rngs, (cfg.d_model, cfg.n_heads, head_dim), ("embed", "heads", "kv"), s)
    so = (cfg.d_model * 2 * cfg.n_layers) ** -0.5
    self.wo = _param(rngs, (cfg.n_heads, head_dim, cfg.d_model), ("heads", "kv", "embed"), so)

  def __call__(self, x: jax.Array, positions: jax.Array, mask: jax.Array) -> jax.Array:
    q = rope(jnp.einsum("bsd,dhk->bshk", x, self.wq[...]), positions)
    k = rope(jnp.einsum("bsd,dhk->bshk", x, self.wk[...]), positions)
    v = jnp.einsum("bsd,dhk->bshk", x, self.wv[...])
    logits = jnp.einsum("bqhk,bthk->bhqt", q, k) * jnp.float32(self.head_dim**-0.5)
    seq = x.shape[1]
    causal = jnp.tril(jnp.ones((seq, seq), dtype=jnp.bool_))
    allowed = causal[None, None, :, :] & (mask[:, None, None, :] > 0)
    logits = jnp.where(allowed, logits, jnp.float32(-1e9))
    probs = jax.nn.softmax(logits, axis=-1)
    out = jnp.einsum("bhqt,bthk->bqhk", probs, v)
    return jnp.einsum("bqhk,hkd->bqd", out, self.wo[...])

  def decode(self, x, positions, key_mask, cache, index):
    """Attention for positions ``index .. index+len(x)`` against a KV cache.

    Args:
      x: (batch, s, d) inputs of the new positions.
      positions: (batch, s) their RoPE positions.
      key_mask: (batch, T) 1 for cache slots that hold (or will hold) real tokens.
      cache: (k, v), each (batch, T, heads, head_dim).
      index: int32 slot of the first new position.

    Returns:
      The (batch, s, d) output and the updated cache.
    """
    q = rope(jnp.einsum("bsd,dhk->bshk", x, self.wq[...]), positions)
    k = rope(jnp.einsum("bsd,dhk->bshk", x, self.wk[...]), positions)
    v = jnp.einsum("bsd,dhk->bshk", x, self.wv[...])
    zero = jnp.zeros((), jnp.int32)
    ck = jax.lax.dynamic_update_slice(cache[0], k, (zero, index, zero, zero))
    cv = jax.lax.dynamic_update_slice(cache[1], v, (zero, index, zero, zero))
    logits = jnp.einsum("bqhk,bthk->bhqt", q, ck) * jnp.float32(self.head_dim**-0.5)
    q_slot = index + jnp.arange(x.shape[1], dtype=jnp.int32)
    causal = jnp.arange(ck.shape[1], dtype=jnp.int32)[None, :] <= q_slot[:, None]
    allowed = causal[None, None, :, :] & (key_mask[:, None, None, :] > 0)
    probs = jax.nn.softmax(jnp.where(allowed, logits, jnp.float32(-1e9)), axis=-1)
    out = jnp.einsum("bhqt,bthk->bqhk", probs, cv)
    return jnp.einsum("bqhk,hkd->bqd", out, self.wo[...]), (ck, cv)


class SwiGLU(nnx.Module):
  """Gated feed-forward: ``down(silu(x W_gate) * (x W_up))``."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    s = cfg.d_model**-0.5
    self.gate = _param(rngs, (cfg.d_model, cfg.d_ff), ("embed", "mlp"), s)
    self.up = _param(rngs, (cfg.d_model, cfg.d_ff), ("embed", "mlp"), s)
    so = (cfg.d_ff * 2 * cfg.n_layers) ** -0.5
    self.down = _param(rngs, (cfg.d_ff, cfg.d_model), ("mlp", "embed"), so)

  def __call__(self, x: jax.Array) -> jax.Array:
    return (jax.nn.silu(x @ self.gate[...]) * (x @ self.up[...])) @ self.down[...]


class Block(nnx.Module):
  """Pre-norm transformer block."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.attn_norm = RMSNorm(cfg.d_model)
    self.attn = Attention(cfg, rngs)
    self.mlp_norm = RMSNorm(cfg.d_model)
    self.mlp = SwiGLU(cfg, rngs)

  def __call__(self, x: jax.Array, positions: jax.Array, mask: jax.Array) -> jax.Array:
    x = x + self.attn(self.attn_norm(x), positions, mask)
    return x + self.mlp(self.mlp_norm(x))

  def decode(self, x, positions, key_mask, cache, index):
    """Cached counterpart of ``__call__`` (see :meth:`Attention.decode`)."""
    h, cache = self.attn.decode(self.attn_norm(x), positions, key_mask, cache, index)
    x = x + h
    return x + self.mlp(self.mlp_norm(x)), cache


class DecoderLM(nnx.Module):
  """Decoder-only language model with tied embeddings.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> cfg = config_for("tiny", vocab_size=50, max_len=16)
    >>> model = DecoderLM(cfg, nnx.Rngs(0))
    >>> ids = jnp.ones((2, 5), jnp.int32)
    >>> model(ids, jnp.ones((2, 5), jnp.int32)).shape
    (2, 5, 50)
    >>> logits, hidden = model(ids, jnp.ones((2, 5), jnp.int32), hidden_layer=0)
    >>> hidden.shape  # the residual stream after block 0
    (2, 5, 32)
  """

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.cfg = cfg
    self.embed = _param(rngs, (cfg.vocab_size, cfg.d_model), ("vocab", "embed"), 1.0)
    self.blocks = nnx.List([Block(cfg, rngs) for _ in range(cfg.n_layers)])
    self.final_norm = RMSNorm(cfg.d_model)

  def __call__(self, ids: jax.Array, mask: jax.Array, *, hidden_layer: int | None = None):
    """Next-token logits (batch, seq, vocab) for token ids and a 0/1 padding mask.

    Positions count only real tokens, so left-padded prompts (generation) and
    right-padded batches (training) see the same positions.

    Args:
      ids: (batch, seq) token ids.
      mask: (batch, seq) 1 for real tokens, 0 for padding.
      hidden_layer: also return the residual stream ``(batch, seq, d_model)`` after this
        block (0-based), from the same forward pass (RMU's activation losses), as
        :class:`experiments.models.hf.model.CausalLM` does.

    Returns:
      ``logits``, or ``(logits, hidden)`` when ``hidden_layer`` is given.
    """
    if hidden_layer is not None and not 0 <= hidden_layer < len(self.blocks):
      raise ValueError(f"hidden_layer must be in [0, {len(self.blocks)}), got {hidden_layer}")
    positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
    x = self.embed[...][ids]
    hidden = None
    for i, block in enumerate(self.blocks):
      x = block(x, positions, mask)
      if i == hidden_layer:
        hidden = x
    logits = self._logits(x)
    return logits if hidden is None else (logits, hidden)

  def _logits(self, x: jax.Array) -> jax.Array:
    x = self.final_norm(x)
    return jnp.einsum("bsd,vd->bsv", x, self.embed[...]) * jnp.float32(self.cfg.d_model**-0.5)

  def init_cache(self, batch: int, length: int) -> list[tuple[jax.Array, jax.Array]]:
    """Zeroed KV caches, one (k, v) pair per block."""
    head_dim = self.cfg.d_model // self.cfg.n_heads
    shape = (batch, length, self.cfg.n_heads, head_dim)
    return [(jnp.zeros(shape, jnp.float32), jnp.zeros(shape, jnp.float32)) for _ in self.blocks]

  def decode(self, ids, positions, key_mask, caches, index):
    """Logits of new tokens ``ids`` (batch, s) at cache slot ``index``, and new caches."""
    x = self.embed[...][ids]
    new = []
    for block, cache in zip(self.blocks, caches, strict=True):
      x, cache = block.decode(x, positions, key_mask, cache, index)
      new.append(cache)
    return self._logits(x), new


def count_params(model: nnx.Module) -> int:
  """Number of scalar parameters of ``model``."""
  return sum(int(x.size) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def is_decayed(path: tuple, leaf: jax.Array) -> bool:
  """Weight-decay rule: everything but norms and biases (1-D leaves)."""
  del path
  return leaf.ndim > 1
