"""The one decoder all five families share, with the in-house model's interface.

``model(ids, mask) -> logits`` (B, T, V) float32, positions counted from the mask (so right- and
left-padded rows see the same positions), plus ``init_cache`` / ``decode`` for KV-cached
generation exactly as :class:`experiments.models.decoder.DecoderLM` has them.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from experiments.models.hf.config import Arch
from experiments.models.hf.layers import Attention, Embed, FcMLP, GatedMLP, Linear, Norm


class Block(nnx.Module):
  """Pre-norm block: sequential (``x + attn``, then ``+ mlp``) or phi's parallel sum."""

  def __init__(self, arch: Arch, *, dtype, rngs: nnx.Rngs):
    fam = arch.family
    self.parallel = fam.parallel_block
    self.attn_norm = Norm(arch.hidden_size, fam.norm, arch.norm_eps, dtype=dtype)
    self.attn = Attention(arch, dtype=dtype, rngs=rngs)
    self.mlp_norm = (
      None if self.parallel else Norm(arch.hidden_size, fam.norm, arch.norm_eps, dtype=dtype)
    )
    self.mlp = (GatedMLP if fam.mlp == "gated" else FcMLP)(arch, dtype=dtype, rngs=rngs)

  def _rest(self, x: jax.Array, h: jax.Array, attn_out: jax.Array) -> jax.Array:
    if self.parallel:  # phi: attn(norm(x)) + mlp(norm(x)) + x, in HF's order
      return attn_out + self.mlp(h) + x
    x = x + attn_out
    return x + self.mlp(self.mlp_norm(x))

  def __call__(self, x: jax.Array, positions: jax.Array, mask: jax.Array) -> jax.Array:
    h = self.attn_norm(x)
    return self._rest(x, h, self.attn(h, positions, mask))

  def decode(self, x, positions, key_mask, cache, index):
    """Cached counterpart of ``__call__`` (see :meth:`Attention.decode`)."""
    h = self.attn_norm(x)
    attn_out, cache = self.attn.decode(h, positions, key_mask, cache, index)
    return self._rest(x, h, attn_out), cache


class CausalLM(nnx.Module):
  """A decoder-only LM of any supported family; parameters and activations in ``dtype``.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from experiments.models.hf.config import arch_from_dict
    >>> arch = arch_from_dict({"model_type": "llama", "vocab_size": 32, "hidden_size": 16,
    ...   "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2})
    >>> model = CausalLM(arch, rngs=nnx.Rngs(0))
    >>> model(jnp.ones((2, 5), jnp.int32), jnp.ones((2, 5), jnp.int32)).shape
    (2, 5, 32)
  """

  def __init__(self, arch: Arch, *, dtype=jnp.float32, rngs: nnx.Rngs):
    self.arch, self.dtype = arch, jnp.dtype(dtype)
    fam = arch.family
    self.embed = Embed(arch.vocab_size, arch.hidden_size, dtype=dtype, rngs=rngs)
    self.layers = nnx.List([Block(arch, dtype=dtype, rngs=rngs) for _ in range(arch.num_layers)])
    self.final_norm = Norm(arch.hidden_size, fam.norm, arch.norm_eps, dtype=dtype)
    head = dict(bias=fam.lm_head_bias, dtype=dtype, rngs=rngs)
    shape = ((arch.hidden_size,), (arch.vocab_size,), ("embed", "vocab"))
    # Tied: no head, the logits come from the embedding table.
    self.lm_head = None if arch.tie_embeddings else Linear(*shape, **head)

  def _embed(self, ids: jax.Array) -> jax.Array:
    x = self.embed(ids)
    if self.arch.family.embed_scale:
      # HF rounds sqrt(hidden) to the compute dtype first (gemma: 55.4256 -> 55.5 in bf16).
      x = x * jnp.asarray(math.sqrt(self.arch.hidden_size), x.dtype)
    return x

  def _logits(self, x: jax.Array) -> jax.Array:
    x = self.final_norm(x)
    logits = self.embed.attend(x) if self.lm_head is None else self.lm_head(x)
    return logits.astype(jnp.float32)

  def __call__(self, ids: jax.Array, mask: jax.Array) -> jax.Array:
    """Next-token logits (B, T, V) float32 for ``ids`` and a 0/1 attention ``mask``.

    Positions count only real tokens, so right-padded (training) and left-padded
    (generation) rows see the same positions.
    """
    positions = jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=1) - 1, 0)
    x = self._embed(ids)
    for layer in self.layers:
      x = layer(x, positions, mask)
    return self._logits(x)

  def init_cache(self, batch: int, length: int) -> list[tuple[jax.Array, jax.Array]]:
    """Zeroed KV caches, one (k, v) pair of (batch, length, kv_heads, head_dim) per block."""
    shape = (batch, length, self.arch.num_kv_heads, self.arch.head_dim)
    return [(jnp.zeros(shape, self.dtype), jnp.zeros(shape, self.dtype)) for _ in self.layers]

  def decode(self, ids, positions, key_mask, caches, index):
    """Logits (B, s, V) of new tokens ``ids`` (B, s) written at cache slot ``index``, new caches.

    Args:
      ids: (B, s) new tokens.
      positions: (B, s) their rotary positions.
      key_mask: (B, S) 1 for cache slots that hold (or will hold) real tokens.
      caches: from :meth:`init_cache` or a previous call.
      index: int32 slot of the first new token.
    """
    x = self._embed(ids)
    new = []
    for layer, cache in zip(self.layers, caches, strict=True):
      x, cache = layer.decode(x, positions, key_mask, cache, index)
      new.append(cache)
    return self._logits(x), new
