"""Greedy decoding with a KV cache for any model with ``init_cache`` / ``decode``.

One jitted program per (graph, prompt shape, ``max_new_tokens``): a prefill over the whole
left-padded prompt, then a ``lax.scan`` of one-token steps. No EOS stop (fixed length), as the
reference continuations in ``hf_tiny`` are made.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx


@functools.partial(jax.jit, static_argnums=(0, 4))
def _greedy(graphdef, state, ids, mask, max_new_tokens: int):
  model = nnx.merge(graphdef, state)
  batch, prompt = ids.shape
  mask = mask.astype(jnp.int32)
  caches = model.init_cache(batch, prompt + max_new_tokens)
  key_mask = jnp.concatenate([mask, jnp.ones((batch, max_new_tokens), jnp.int32)], axis=1)
  positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
  logits, caches = model.decode(ids, positions, key_mask, caches, jnp.zeros((), jnp.int32))
  first = jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)
  next_pos = jnp.sum(mask, axis=1)  # left padding: the next position is the real length

  def step(carry, i):
    token, pos, caches = carry
    logits, caches = model.decode(token[:, None], pos[:, None], key_mask, caches, prompt + i)
    new = jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)
    return (new, pos + 1, caches), new

  steps = jnp.arange(max_new_tokens - 1, dtype=jnp.int32)
  _, rest = jax.lax.scan(step, (first, next_pos, caches), steps)
  return jnp.concatenate([first[:, None], rest.T], axis=1)


def greedy_generate(model: nnx.Module, ids: jax.Array, mask: jax.Array, max_new_tokens: int):
  """Greedy continuation (B, max_new_tokens) int32 of left-padded prompts.

  Args:
    model: any module with ``init_cache(batch, length)`` and
      ``decode(ids, positions, key_mask, caches, index)`` (HF families and the in-house model).
    ids: (B, P) prompt ids, left-padded.
    mask: (B, P) 1 for prompt tokens, 0 for padding.
    max_new_tokens: tokens to generate (>= 1); no EOS stop.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from experiments.models.decoder import DecoderLM, config_for
    >>> model = DecoderLM(config_for("tiny", 50, 16), nnx.Rngs(0))
    >>> ids = jnp.array([[0, 5, 6], [4, 5, 6]], jnp.int32)
    >>> greedy_generate(model, ids, (ids > 0).astype(jnp.int32), 4).shape
    (2, 4)
  """
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
  graphdef, state = nnx.split(model)
  return _greedy(graphdef, state, jnp.asarray(ids, jnp.int32), jnp.asarray(mask), max_new_tokens)
