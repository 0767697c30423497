"""KV-cached generation (greedy or sampled) for any model with the decoder's cache interface.

A model qualifies when it has ``init_cache(batch, length)`` (a pytree of
caches) and ``decode(ids, positions, key_mask, caches, index) -> (logits,
caches)``, as :class:`experiments.models.decoder.DecoderLM` does. A model with
stacked layers may also offer ``layer_params()``: it is called once, before the
token loop, and passed to every ``decode`` call as ``layer_params=`` (so weights
are not sliced out of their stacks at every token). Prompts are
left-padded; positions count real tokens only, so they match the training-time
positions of right-padded sequences. The whole loop is one ``lax.fori_loop``
with static shapes: one compiled program per (architecture, prompt length,
number of new tokens, mode).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx


def make_generate(
  graphdef,
  max_new_tokens: int,
  *,
  eos_id: int | tuple[int, ...] | None = None,
  pad_id: int = 0,
  sample: bool = False,
):
  """A jitted ``fn(params, ids, mask[, key, temperature]) -> (B, max_new_tokens)`` int32.

  Tokens after the first ``eos_id`` of a row are ``pad_id`` (the EOS itself is
  kept); with ``eos_id=None`` every row runs ``max_new_tokens`` steps. A tuple of
  ids stops at any of them (checkpoints with several EOS ids).

  Args:
    graphdef: the model's ``nnx`` graph definition (``nnx.split(model)[0]``).
    max_new_tokens: number of generated tokens (static).
    eos_id: end-of-sequence id (or ids), or None for no stopping.
    pad_id: the id written after EOS.
    sample: False for greedy decoding; True to sample from
      ``softmax(logits / temperature)`` with an explicit ``jax.random`` key
      (then ``fn(params, ids, mask, key, temperature)``).

  Returns:
    The jitted generation function.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from experiments.models.decoder import DecoderLM, config_for
    >>> graphdef, params = nnx.split(DecoderLM(config_for("tiny", 50, 32), nnx.Rngs(0)))
    >>> ids = jnp.array([[0, 5, 6], [7, 8, 9]], jnp.int32)
    >>> mask = jnp.array([[0, 1, 1], [1, 1, 1]], jnp.int32)
    >>> make_generate(graphdef, 4)(params, ids, mask).shape
    (2, 4)
  """
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
  stops = () if eos_id is None else tuple(eos_id) if isinstance(eos_id, tuple) else (eos_id,)

  def run(params, ids, mask, key, temperature):
    model = nnx.merge(graphdef, params)
    b, p = ids.shape
    key_mask = jnp.concatenate([mask, jnp.ones((b, max_new_tokens), mask.dtype)], axis=1)
    positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
    caches = model.init_cache(b, p + max_new_tokens)
    extra = {"layer_params": model.layer_params()} if hasattr(model, "layer_params") else {}
    zero = jnp.zeros((), jnp.int32)
    logits, caches = model.decode(ids, positions, key_mask, caches, zero, **extra)

    def pick(logits, i):
      logits = logits.astype(jnp.float32)
      if not sample:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
      k = jax.random.fold_in(key, i)
      return jax.random.categorical(k, logits / temperature, axis=-1).astype(jnp.int32)

    tok = pick(logits[:, -1], 0)
    pos = positions[:, -1] + 1

    def ended(tok, done):  # rows that have met a stop token, ``tok`` included
      for stop in stops:
        done = done | (tok == stop)
      return done

    def body(carry):
      i, tok, pos, caches, out, done = carry
      out = out.at[:, i].set(jnp.where(done, jnp.int32(pad_id), tok))
      done = ended(tok, done)
      logits, caches = model.decode(tok[:, None], pos[:, None], key_mask, caches, p + i, **extra)
      return i + 1, pick(logits[:, -1], i + 1), pos + 1, caches, out, done

    def running(carry):
      # Stop early once every row has met a stop token: the rest would be padding anyway.
      i, tok, done = carry[0], carry[1], carry[5]
      return (i < max_new_tokens) & ~jnp.all(ended(tok, done))

    out = jnp.full((b, max_new_tokens), pad_id, jnp.int32)
    done = jnp.zeros((b,), jnp.bool_)
    carry = (jnp.zeros((), jnp.int32), tok, pos, caches, out, done)
    i, tok, _, _, out, done = jax.lax.while_loop(running, body, carry)
    # A row that ended exactly at the loop's exit has its stop token still to write.
    last = jnp.minimum(i, max_new_tokens - 1)
    fill = (i < max_new_tokens) & ~done
    return out.at[:, last].set(jnp.where(fill, tok, out[:, last]))

  if sample:
    return jax.jit(run)
  return jax.jit(lambda params, ids, mask: run(params, ids, mask, None, None))


@functools.lru_cache(maxsize=32)
def _cached(graphdef, max_new_tokens, eos_id, pad_id, sample):
  return make_generate(graphdef, max_new_tokens, eos_id=eos_id, pad_id=pad_id, sample=sample)


def generate(
  model: nnx.Module,
  ids: jax.Array,
  mask: jax.Array,
  max_new_tokens: int,
  *,
  eos_id: int | tuple[int, ...] | None = None,
  pad_id: int = 0,
  key: jax.Array | None = None,
  temperature: float = 1.0,
) -> jax.Array:
  """New tokens ``(B, max_new_tokens)`` after left-padded prompts; greedy unless ``key`` is given.

  The compiled program is cached per (architecture, settings), so repeated calls
  with the same shapes do not recompile.

  Args:
    model: an ``nnx.Module`` with ``init_cache`` and ``decode``.
    ids: ``(B, P)`` int32 prompt ids, left-padded.
    mask: ``(B, P)`` 1 for real prompt tokens, 0 for padding.
    max_new_tokens: how many tokens to generate.
    eos_id: stop token or tokens (rows are padded with ``pad_id`` after it), or None.
    pad_id: the padding id.
    key: a ``jax.random`` key to sample at ``temperature``; None for greedy.
    temperature: sampling temperature (> 0; ignored when greedy).

  Returns:
    The generated ids.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from flax import nnx
    >>> from experiments.models.decoder import DecoderLM, config_for
    >>> model = DecoderLM(config_for("tiny", 50, 32), nnx.Rngs(0))
    >>> ids, mask = jnp.ones((2, 3), jnp.int32), jnp.ones((2, 3), jnp.int32)
    >>> a = generate(model, ids, mask, 5, key=jax.random.key(1))
    >>> b = generate(model, ids, mask, 5, key=jax.random.key(1))
    >>> bool((a == b).all()), a.shape
    (True, (2, 5))
  """
  graphdef, params = nnx.split(model)
  if key is None:
    return _cached(graphdef, max_new_tokens, eos_id, pad_id, False)(params, ids, mask)
  if not temperature > 0:
    raise ValueError(f"temperature must be > 0, got {temperature}")
  fn = _cached(graphdef, max_new_tokens, eos_id, pad_id, True)
  return fn(params, ids, mask, key, jnp.float32(temperature))
