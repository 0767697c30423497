"""Verbatim memorization under teacher forcing: exact memorization and extraction strength.

Both read the greedy prediction ``argmax_v logits[b, t, v]`` at each masked position and
compare it with ``targets[b, t]`` (ties go to the lowest id, as ``jnp.argmax`` and
``torch.argmax`` break them). They are per-row scores in [0, 1], higher = more memorised;
a row without masked tokens scores NaN (open-unlearning: ``None`` for exact memorization,
0 for extraction strength). A position counts when its mask is nonzero.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from dualoptim_jax._src import unlearning_common as common


def _correct_and_kept(
  logits: ArrayLike, targets: ArrayLike, mask: ArrayLike
) -> tuple[jax.Array, jax.Array]:
  logits, targets = common.as_array("logits", logits), common.as_array("targets", targets)
  mask = common.as_array("mask", mask)
  common.check_token_inputs(logits, targets, mask)
  # argmax of the float32 cast = argmax of the input (the cast is exact and monotone).
  predicted = jnp.argmax(logits.astype(jnp.float32), axis=-1)
  correct = predicted == targets.astype(predicted.dtype)
  return correct, common.float_mask(mask) != 0.0


def _fraction(numerator: jax.Array, count: jax.Array) -> jax.Array:
  n = count.astype(jnp.float32)
  return jnp.where(count > 0, numerator / jnp.maximum(n, 1.0), jnp.float32(jnp.nan))


def exact_memorization(logits: ArrayLike, targets: ArrayLike, mask: ArrayLike) -> jax.Array:
  """Exact memorization (EM, Tirumala et al., 2022): per row, the share of greedy hits.

  ``EM_b = |{t : mask_bt, argmax_v logits_btv = targets_bt}| / |{t : mask_bt}|``, the fraction
  of masked positions where teacher-forced greedy decoding reproduces the target.

  Args:
    logits: ``(B, T, V)``, any float dtype.
    targets: ``(B, T)`` integer ids, ``logits[:, t]`` scoring ``targets[:, t]``.
    mask: ``(B, T)``, nonzero on the tokens that count.

  Returns:
    ``(B,)`` float32 in [0, 1]; NaN for rows without masked tokens.

  Example:
    >>> import jax.numpy as jnp
    >>> from dualoptim_jax import unlearning
    >>> logits = jnp.array([[[2.0, 0.0], [0.0, 2.0], [0.0, 2.0]]])  # argmax 0, 1, 1
    >>> em = unlearning.exact_memorization(logits, jnp.array([[0, 1, 0]]), jnp.ones((1, 3)))
    >>> round(float(em[0]), 4)
    0.6667
  """
  correct, kept = _correct_and_kept(logits, targets, mask)
  hits = jnp.sum((correct & kept).astype(jnp.float32), axis=-1)
  return _fraction(hits, jnp.sum(kept.astype(jnp.int32), axis=-1))


def extraction_strength(logits: ArrayLike, targets: ArrayLike, mask: ArrayLike) -> jax.Array:
  """Extraction strength (ES; Carlini et al., 2021): the longest tail greedy decoding reproduces.

  Number the ``n`` masked positions of row ``b`` 0..n-1 in order. ``k_b`` is the smallest
  ``k`` in 0..n such that the greedy prediction equals the target at every masked position
  from the ``k``-th on (``k = n`` when the last one is wrong: the empty tail); ``ES_b =
  1 - k_b / n``, the share of the answer that teacher-forced greedy decoding reproduces once
  given the prefix before it. 1 = the whole answer is extractable, 0 = not even its last
  token.

  **Differs from open-unlearning** when the last masked token is mispredicted: its loop tries
  ``k`` in 0..n-1 only, so it stops at ``k = n - 1`` and gives ``1/n`` there; we give 0. All
  other rows agree. (Its scorer also drops the last answer position, the EOS prediction,
  before scoring; that is the caller's ``mask``.)

  Args:
    logits: ``(B, T, V)``, any float dtype.
    targets: ``(B, T)`` integer ids, ``logits[:, t]`` scoring ``targets[:, t]``.
    mask: ``(B, T)``, nonzero on the tokens that count.

  Returns:
    ``(B,)`` float32 in [0, 1] (multiples of ``1/n``); NaN for rows without masked tokens.

  Example:
    >>> import jax.numpy as jnp
    >>> from dualoptim_jax import unlearning
    >>> logits = jnp.array([[[2.0, 0.0], [0.0, 2.0], [0.0, 2.0]]])  # argmax 0, 1, 1
    >>> es = unlearning.extraction_strength(logits, jnp.array([[1, 1, 1]]), jnp.ones((1, 3)))
    >>> round(float(es[0]), 4)  # k = 1: the last two tokens are extractable
    0.6667
    >>> float(unlearning.extraction_strength(logits, jnp.array([[0, 1, 0]]), jnp.ones((1, 3)))[0])
    0.0
  """
  correct, kept = _correct_and_kept(logits, targets, mask)
  n = jnp.sum(kept.astype(jnp.int32), axis=-1)
  # 1-based rank of each masked position among the masked positions of its row.
  rank = jnp.cumsum(kept.astype(jnp.int32), axis=-1)
  # k = rank of the last mispredicted masked position (0 if none): everything after it is right.
  k = jnp.max(jnp.where(kept & ~correct, rank, 0), axis=-1)
  return _fraction((n - k).astype(jnp.float32), n)
