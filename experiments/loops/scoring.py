"""Next-token scoring of the experiments' batches: what every loss and the fine-tuning read.

``targets[:, t] = 1`` when token ``ids[:, t]`` is an answer target, so ``logits[:, t]``
scores ``ids[:, t + 1]``. :func:`shifted` gives the full-length logits with the ids rolled
left by one as targets and the target mask rolled the same way, 0 at the last position
(whose rolled target wraps around): the same terms as scoring ``logits[:, :-1]`` against
``ids[:, 1:]`` with mask ``targets[:, 1:]``, without slicing the ``(B, T, V)`` logits, whose
backward pass is a pad and a transpose of the whole logits gradient (measured: ~4 % of a
SmolLM2 step on CPU, 200 MB for a 49k vocabulary).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dualoptim_jax import unlearning


def next_tokens(ids) -> jax.Array:
  """``ids`` rolled left by one: entry ``t`` is the token ``logits[:, t]`` predicts.

  Example:
    >>> next_tokens(jnp.array([[5, 6, 7]])).tolist()  # the last entry wraps (masked out)
    [[6, 7, 5]]
  """
  return jnp.roll(jnp.asarray(ids), -1, axis=1)


def next_mask(targets) -> jax.Array:
  """The target mask of :func:`next_tokens`: ``targets`` rolled left by one, 0 at the end.

  Example:
    >>> next_mask(jnp.array([[0.0, 1.0, 1.0]])).tolist()
    [[1.0, 1.0, 0.0]]
  """
  rolled = jnp.roll(jnp.asarray(targets), -1, axis=1)
  return rolled.at[:, -1].set(0)


def shifted(apply, params, batch) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Library-convention ``(logits, targets, mask)``: ``logits[:, t]`` scores ``targets[:, t]``.

  Full-length (see the module docstring): ``targets`` = :func:`next_tokens`, ``mask`` =
  :func:`next_mask`, so the last position, which predicts nothing, counts for no loss.
  """
  logits = apply(params, batch.ids, batch.mask)
  return logits, next_tokens(batch.ids), next_mask(batch.targets)


def ref_logits(apply, ref_params, batch) -> jax.Array:
  """The frozen reference's full-length logits (stop-gradient)."""
  return jax.lax.stop_gradient(apply(ref_params, batch.ids, batch.mask))


def sequence_logp(apply, params, batch) -> tuple[jax.Array, jax.Array]:
  """Summed answer log-prob ``log pi(y|x)`` per sequence and the number of answer tokens."""
  logits, targets, mask = shifted(apply, params, batch)
  return unlearning.sequence_log_probs(logits, targets, mask), jnp.sum(mask, axis=1)


def sequence_nll(apply, params, batch) -> tuple[jax.Array, jax.Array]:
  """Summed answer NLL ``L`` per sequence and the number of answer tokens."""
  logp, n = sequence_logp(apply, params, batch)
  return -logp, n


def ce_mean(apply, params, batch) -> jax.Array:
  """Mean token cross-entropy over all answer tokens of the batch (HF's loss)."""
  return unlearning.nll_loss(*shifted(apply, params, batch))


def ref_logp(apply, ref_params, batch) -> jax.Array:
  """The frozen reference's summed answer log-prob per sequence (stop-gradient)."""
  return jax.lax.stop_gradient(sequence_logp(apply, ref_params, batch)[0])


def drop_first(mask, n: int) -> jax.Array:
  """``mask`` without each row's first ``n`` masked positions.

  Example:
    >>> drop_first(jnp.array([[0.0, 1.0, 1.0, 1.0]]), 1).tolist()
    [[0.0, 0.0, 1.0, 1.0]]
  """
  mask = jnp.asarray(mask)
  seen = jnp.cumsum((mask > 0).astype(jnp.int32), axis=1)
  return jnp.where(seen > n, mask, jnp.zeros_like(mask))
