"""The one decoder all five families share, with the in-house model's interface.

``model(ids, mask) -> logits`` (B, T, V) float32, positions counted from the mask (so right- and
left-padded rows see the same positions), plus ``init_cache`` / ``decode`` for KV-cached
generation exactly as :class:`experiments.models.decoder.DecoderLM` has them.

The blocks are one :class:`Block` whose parameters carry a leading ``layers`` axis, applied by
one ``jax.lax.scan``: XLA compiles one block instead of ``num_layers`` copies (SmolLM2's 30
layers: the training step compiles in seconds instead of ~25 s), and checkpoints, LoRA and
sharding see one stacked array per parameter kind.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from experiments.models.hf.config import Arch
from experiments.models.hf.layers import (
  Attention,
  Embed,
  FcMLP,
  GatedMLP,
  Linear,
  Norm,
  attention_bias,
  rotary_tables,
)

# What the backward pass keeps of each scanned block (``CausalLM(remat=...)``), as jax.checkpoint
# policies. Temporary memory of a SmolLM2 AdamW step at batch 8 x 128 (XLA's memory analysis):
# none 2970 MiB, dots 1607, dots_no_batch 1404, full 864; "full" recomputes the whole forward
# pass (about a third more compute), the others only elementwise work.
REMAT_POLICIES = {
  "none": None,  # keep every residual autodiff wants
  "dots": jax.checkpoint_policies.dots_saveable,  # keep matmul outputs, recompute the rest
  "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # + attention
  "full": jax.checkpoint_policies.nothing_saveable,  # keep each block's input only
}


class Block(nnx.Module):
  """Pre-norm block: sequential (``x + attn``, then ``+ mlp``) or phi's parallel sum.

  Built with ``stack=(L,)`` it holds ``L`` blocks' parameters; its methods compute one block
  on token-major ``x`` ``(B*T, E)`` and are called with one layer's slice.
  """

  def __init__(self, arch: Arch, *, dtype, rngs: nnx.Rngs, stack=()):
    fam = arch.family
    self.parallel = fam.parallel_block
    norm = dict(dtype=dtype, stack=stack)
    self.attn_norm = Norm(arch.hidden_size, fam.norm, arch.norm_eps, **norm)
    self.attn = Attention(arch, dtype=dtype, rngs=rngs, stack=stack)
    self.mlp_norm = (
      None if self.parallel else Norm(arch.hidden_size, fam.norm, arch.norm_eps, **norm)
    )
    self.mlp = (GatedMLP if fam.mlp == "gated" else FcMLP)(
      arch, dtype=dtype, rngs=rngs, stack=stack
    )

  def _rest(self, x: jax.Array, h: jax.Array, attn_out: jax.Array) -> jax.Array:
    if self.parallel:  # phi: attn(norm(x)) + mlp(norm(x)) + x, in HF's order
      return attn_out + self.mlp(h) + x
    x = x + attn_out
    return x + self.mlp(self.mlp_norm(x))

  def __call__(self, x: jax.Array, rope, bias: jax.Array) -> jax.Array:
    h = self.attn_norm(x)
    return self._rest(x, h, self.attn(h, rope, bias))

  def decode(self, x, rope, bias, cache, layer, index):
    """Cached counterpart of ``__call__``.

    ``cache`` is the stacked ``(k, v)`` pair ``(L, B, S, K, D)``; this block writes its new
    keys and values at ``[layer, :, index:]`` (in place inside the scan) and attends to its
    layer's slots.
    """
    h = self.attn_norm(x)
    q, k, v = self.attn.qkv(h, rope)
    zero = jnp.zeros((), jnp.int32)
    start = (layer, zero, jnp.asarray(index, jnp.int32), zero, zero)
    ck = jax.lax.dynamic_update_slice(cache[0], k[None].astype(cache[0].dtype), start)
    cv = jax.lax.dynamic_update_slice(cache[1], v[None].astype(cache[1].dtype), start)
    keys = jax.lax.dynamic_index_in_dim(ck, layer, keepdims=False)
    values = jax.lax.dynamic_index_in_dim(cv, layer, keepdims=False)
    return self._rest(x, h, self.attn.attend(q, keys, values, bias)), (ck, cv)


class CausalLM(nnx.Module):
  """A decoder-only LM of any supported family; parameters and activations in ``dtype``.

  ``remat`` names what the backward pass keeps of each block (:data:`REMAT_POLICIES`): by
  default the matmul outputs, recomputing the elementwise work (less memory than keeping
  everything, and faster on CPU, where the saved buffers cost more to write than to recompute).

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from experiments.models.hf.config import arch_from_dict
    >>> arch = arch_from_dict({"model_type": "llama", "vocab_size": 32, "hidden_size": 16,
    ...   "intermediate_size": 32, "num_hidden_layers": 3, "num_attention_heads": 2})
    >>> model = CausalLM(arch, rngs=nnx.Rngs(0))
    >>> model.blocks.attn.q_proj.kernel.shape  # (layers, embed, heads, head_dim)
    (3, 16, 2, 8)
    >>> ids = jnp.ones((2, 5), jnp.int32)
    >>> model(ids, jnp.ones((2, 5), jnp.int32)).shape
    (2, 5, 32)
    >>> logits, hidden = model(ids, jnp.ones((2, 5), jnp.int32), hidden_layer=1)
    >>> hidden.shape  # the residual stream after block 1 (0-based)
    (2, 5, 16)
  """

  def __init__(self, arch: Arch, *, dtype=jnp.float32, remat: str = "dots", rngs: nnx.Rngs):
    if remat not in REMAT_POLICIES:
      raise ValueError(f"remat must be one of {', '.join(REMAT_POLICIES)}, got {remat!r}")
    self.arch, self.dtype, self.remat = arch, jnp.dtype(dtype), remat
    fam = arch.family
    self.embed = Embed(arch.vocab_size, arch.hidden_size, dtype=dtype, rngs=rngs)
    self.blocks = Block(arch, dtype=dtype, rngs=rngs, stack=(arch.num_layers,))
    self.final_norm = Norm(arch.hidden_size, fam.norm, arch.norm_eps, dtype=dtype)
    head = dict(bias=fam.lm_head_bias, dtype=dtype, rngs=rngs)
    shape = ((arch.hidden_size,), (arch.vocab_size,), ("embed", "vocab"))
    # Tied: no head, the logits come from the embedding table.
    self.lm_head = None if arch.tie_embeddings else Linear(*shape, **head)

  def _embed(self, ids: jax.Array) -> jax.Array:
    """Token-major embeddings ``(B*T, E)``."""
    x = self.embed(ids.reshape(-1))
    if self.arch.family.embed_scale:
      # HF rounds sqrt(hidden) to the compute dtype first (gemma: 55.4256 -> 55.5 in bf16).
      x = x * jnp.asarray(math.sqrt(self.arch.hidden_size), x.dtype)
    return x

  def _logits(self, x: jax.Array, shape: tuple[int, int]) -> jax.Array:
    x = self.final_norm(x)
    logits = self.embed.attend(x) if self.lm_head is None else self.lm_head(x)
    return logits.astype(jnp.float32).reshape(*shape, -1)

  def _check_layer(self, layer: int | None) -> None:
    if layer is not None and not 0 <= layer < self.arch.num_layers:
      raise ValueError(f"hidden_layer must be in [0, {self.arch.num_layers}), got {layer}")

  def __call__(self, ids: jax.Array, mask: jax.Array, *, hidden_layer: int | None = None):
    """Next-token logits (B, T, V) float32 for ``ids`` and a 0/1 attention ``mask``.

    Positions count only real tokens, so right-padded (training) and left-padded
    (generation) rows see the same positions.

    Args:
      ids: (B, T) token ids.
      mask: (B, T) 1 for real tokens, 0 for padding.
      hidden_layer: also return the residual stream ``(B, T, E)`` after this block
        (0-based), from the same forward pass (e.g. for RMU's activation losses).

    Returns:
      ``logits``, or ``(logits, hidden)`` when ``hidden_layer`` is given.
    """
    self._check_layer(hidden_layer)
    b, t = ids.shape
    positions = jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=1) - 1, 0)
    rope = rotary_tables(positions, self.arch, self.dtype)
    causal = jnp.tril(jnp.ones((t, t), jnp.bool_))
    bias = attention_bias(causal[None] & (mask[:, None, :] > 0))
    graphdef, stacked = nnx.split(self.blocks)
    x = self._embed(ids)

    def block(x, params):
      return nnx.merge(graphdef, params)(x, rope, bias)

    policy = REMAT_POLICIES[self.remat]
    if policy is not None:  # in a scan, CSE cannot undo the rematerialisation: no barrier
      block = jax.checkpoint(block, policy=policy, prevent_cse=False)

    def body(carry, xs):
      x, hidden = carry
      layer, params = xs
      x = block(x, params)
      if hidden is not None:
        hidden = jnp.where(layer == hidden_layer, x, hidden)
      return (x, hidden), None

    hidden = None if hidden_layer is None else jnp.zeros_like(x)
    layers = jnp.arange(self.arch.num_layers, dtype=jnp.int32)
    (x, hidden), _ = jax.lax.scan(body, (x, hidden), (layers, stacked))
    logits = self._logits(x, (b, t))
    return logits if hidden is None else (logits, hidden.reshape(b, t, -1))

  def init_cache(self, batch: int, length: int) -> tuple[jax.Array, jax.Array]:
    """Zeroed stacked KV caches ``(k, v)``, each ``(layers, batch, length, kv_heads, head_dim)``."""
    a = self.arch
    shape = (a.num_layers, batch, length, a.num_kv_heads, a.head_dim)
    return jnp.zeros(shape, self.dtype), jnp.zeros(shape, self.dtype)

  def layer_params(self) -> tuple:
    """Each block's parameters sliced out of the stacked arrays, for :meth:`decode`.

    Generation slices once, before its token loop; a scan (or slices inside the loop) would
    copy every layer's weights at every generated token (measured: a fifth of decoding time
    for SmolLM2 at batch 16).
    """
    _, stacked = nnx.split(self.blocks)
    return tuple(jax.tree.map(lambda a, i=i: a[i], stacked) for i in range(self.arch.num_layers))

  def decode(self, ids, positions, key_mask, caches, index, *, layer_params=None):
    """Logits (B, s, V) of new tokens ``ids`` (B, s) written at cache slot ``index``, new caches.

    Args:
      ids: (B, s) new tokens.
      positions: (B, s) their rotary positions.
      key_mask: (B, S) 1 for cache slots that hold (or will hold) real tokens.
      caches: from :meth:`init_cache` or a previous call.
      index: int32 slot of the first new token.
      layer_params: :meth:`layer_params`, computed once outside a token loop (default: sliced
        here).
    """
    b, s = ids.shape
    rope = rotary_tables(positions, self.arch, self.dtype)
    q_slot = index + jnp.arange(s, dtype=jnp.int32)
    causal = jnp.arange(key_mask.shape[1], dtype=jnp.int32)[None, :] <= q_slot[:, None]
    bias = attention_bias(causal[None] & (key_mask[:, None, :] > 0))
    graphdef = nnx.graphdef(self.blocks)
    x = self._embed(ids)
    for layer, params in enumerate(layer_params or self.layer_params()):
      x, caches = nnx.merge(graphdef, params).decode(x, rope, bias, caches, layer, index)
    return self._logits(x, (b, s)), caches
