"""Membership-inference audits (MUSE / open-unlearning): per-sequence scores, ROC AUC, PrivLeak.

Scores are higher for likelier training members. An audit compares the scores
of the forget set with those of a holdout of the same distribution that no
model trained on: ``mia_auc`` near 1 means the forget set is still recognised,
near the retrained (oracle) model's AUC means it looks as unseen as it should.
"""

from __future__ import annotations

import fractions
import math
import numbers
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats
from jax.typing import ArrayLike

from dualoptim_jax._src import unlearning_common as common

_MAX_DENOMINATOR = 1000
_MIN_VARIANCE = 1e-12


def _count_for(k: float, n: jax.Array) -> jax.Array:
  """``max(1, floor(k n))`` in exact integer arithmetic (``k`` read as p/q with q <= 1000)."""
  if isinstance(k, bool) or not isinstance(k, int | float) or not 0.0 < k <= 1.0:
    raise ValueError(f"k must be a Python float in (0, 1], got {k!r}")
  # float32 k * n can land just below an integer (0.29 * 100); p * n // q cannot.
  frac = fractions.Fraction(k).limit_denominator(_MAX_DENOMINATOR)
  return jnp.maximum(1, (n * frac.numerator) // frac.denominator)


def _mean_of_lowest(values: jax.Array, mask: jax.Array, k: float) -> jax.Array:
  """Per row: mean of the ``max(1, floor(k n))`` lowest masked values; NaN for empty rows."""
  keep = common.float_mask(mask) != 0.0
  n = jnp.sum(keep.astype(jnp.int32), axis=-1)
  m = _count_for(k, n)
  ordered = jnp.sort(jnp.where(keep, values, jnp.float32(jnp.inf)), axis=-1)
  rank = jnp.arange(values.shape[-1], dtype=jnp.int32)
  take = rank[None, :] < m[:, None]
  total = jnp.sum(jnp.where(take, ordered, jnp.float32(0.0)), axis=-1)
  return jnp.where(n > 0, total / m.astype(jnp.float32), jnp.float32(jnp.nan))


def _inputs(logits: ArrayLike, targets: ArrayLike, mask: ArrayLike):
  logits, targets = common.as_array("logits", logits), common.as_array("targets", targets)
  mask = common.as_array("mask", mask)
  common.check_token_inputs(logits, targets, mask)
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return logp, common.gather_targets(logp, targets), mask


def min_k_scores(
  logits: ArrayLike, targets: ArrayLike, mask: ArrayLike, *, k: float = 0.4
) -> jax.Array:
  """Min-K% Prob (Shi et al., 2024): mean of the lowest token log-probs of each row.

  ``score_b = mean of the lowest max(1, floor(k n_b)) values of {log p(targets_bt) : mask_bt}``,
  ``n_b`` the masked tokens of row ``b``. ``k = 1`` gives the LOSS attack's score (the mean
  token log-prob). Rows without masked tokens score NaN.

  Args:
    logits: ``(B, T, V)``.
    targets: ``(B, T)`` integer ids.
    mask: ``(B, T)``, nonzero on the scored tokens.
    k: fraction of tokens kept, a Python float in (0, 1] (read as the nearest fraction
      with denominator <= 1000, so ``floor(k n)`` is exact for decimals such as 0.4).

  Returns:
    ``(B,)`` float32 scores, higher = more likely a member.

  Example:
    >>> import jax.numpy as jnp
    >>> from dualoptim_jax import unlearning
    >>> logits = jnp.log(jnp.array([[[0.5, 0.5], [0.1, 0.9], [0.2, 0.8]]]))
    >>> targets, mask = jnp.array([[0, 0, 1]]), jnp.ones((1, 3))
    >>> round(float(unlearning.min_k_scores(logits, targets, mask, k=0.4)[0]), 4)  # log 0.1
    -2.3026
  """
  _, token_logp, mask = _inputs(logits, targets, mask)
  return _mean_of_lowest(token_logp, mask, k)


def min_k_plus_plus_scores(
  logits: ArrayLike, targets: ArrayLike, mask: ArrayLike, *, k: float = 0.4
) -> jax.Array:
  """Min-K%++ (Zhang et al., 2024): Min-K% over log-probs standardised per position.

  ``s_bt = (log p(targets_bt) - mu_bt) / sigma_bt`` with ``mu_bt = sum_v p_v log p_v`` and
  ``sigma_bt^2 = sum_v p_v (log p_v)^2 - mu_bt^2`` under the next-token distribution
  ``p = softmax(logits_bt)`` (computed as ``sum_v p_v (log p_v - mu_bt)^2``, the same value
  without cancellation; floored at 1e-12); then the mean of the lowest
  ``max(1, floor(k n_b))`` masked ``s_bt``, as :func:`min_k_scores`.

  Example:
    >>> import jax.numpy as jnp
    >>> from dualoptim_jax import unlearning
    >>> logits = jnp.log(jnp.array([[[0.5, 0.25, 0.25]]]))
    >>> s = unlearning.min_k_plus_plus_scores(logits, jnp.array([[0]]), jnp.ones((1, 1)))
    >>> round(float(s[0]), 4)  # (log .5 - mu) / sigma, mu = -1.0397, sigma = 0.3466
    1.0
  """
  logp, token_logp, mask = _inputs(logits, targets, mask)
  p = jnp.exp(logp)
  mu = jnp.sum(p * logp, axis=-1)
  var = jnp.sum(p * jnp.square(logp - mu[..., None]), axis=-1)
  sigma = jnp.sqrt(jnp.maximum(var, jnp.float32(_MIN_VARIANCE)))
  return _mean_of_lowest((token_logp - mu) / sigma, mask, k)


def zlib_scores(avg_log_probs: ArrayLike, texts: Sequence[str]) -> jax.Array:
  """ZLib attack (Carlini et al., 2021): the mean token log-prob over the text's zlib length.

  ``score_b = avg_log_probs_b / len(zlib.compress(texts_b.encode("utf-8")))``: a sequence the
  model finds likely only because it is simple (compressible) is discounted. Higher = more
  member-like; open-unlearning's score is the same ratio with the average loss, so its
  negative (its AUC labels the holdout as the positive class, so the AUCs agree).

  The lengths are computed on the host: ``texts`` is a Python sequence of ``str`` (for
  open-unlearning, the decoded answer), never traced; ``avg_log_probs`` may be traced
  (``jax.jit`` a closure over ``texts``).

  Args:
    avg_log_probs: ``(B,)`` mean log-prob of the scored tokens of each sequence
      (``sequence_log_probs / mask.sum(-1)``).
    texts: ``B`` strings, the text those tokens spell.

  Returns:
    ``(B,)`` float32.

  Example:
    >>> import jax.numpy as jnp
    >>> from dualoptim_jax import unlearning
    >>> s = unlearning.zlib_scores(jnp.array([-1.2, -1.2]), ["aaaa", "hello world"])
    >>> [round(float(x), 4) for x in s]  # zlib lengths 12 and 19
    [-0.1, -0.0632]
  """
  avg_log_probs = common.as_array("avg_log_probs", avg_log_probs)
  common.require_rank("avg_log_probs", avg_log_probs, 1, "(batch,)")
  if isinstance(texts, str | bytes) or not isinstance(texts, Sequence):
    raise TypeError(f"texts must be a sequence of str, got {type(texts).__name__}")
  bad = [type(t).__name__ for t in texts if not isinstance(t, str)]
  if bad:
    raise TypeError(f"texts must hold str, got {bad[0]}")
  if len(texts) != avg_log_probs.shape[0]:
    raise ValueError(
      f"texts has {len(texts)} entries, expected {avg_log_probs.shape[0]} "
      f"(one per row of avg_log_probs {avg_log_probs.shape})"
    )
  lengths = np.array([len(zlib.compress(t.encode("utf-8"))) for t in texts], np.float32)
  return avg_log_probs.astype(jnp.float32) / jnp.asarray(lengths)


def reference_scores(avg_log_probs: ArrayLike, ref_avg_log_probs: ArrayLike) -> jax.Array:
  """Reference attack (Carlini et al., 2021): the target model's mean log-prob minus a reference's.

  ``score_b = avg_log_probs_b - ref_avg_log_probs_b``: what the target model knows beyond a
  reference model that did not train on the candidates (for an unlearning audit, the
  retain-only oracle). Higher = more member-like; open-unlearning's score is the target's
  average loss minus the reference's, the negative of ours.

  Args:
    avg_log_probs: ``(B,)`` mean token log-probs under the audited model.
    ref_avg_log_probs: ``(B,)`` the same under the reference model.

  Returns:
    ``(B,)`` float32.

  Example:
    >>> from dualoptim_jax import unlearning
    >>> [float(x) for x in unlearning.reference_scores([-1.0, -2.0], [-1.5, -1.5])]
    [0.5, -0.5]
  """
  avg_log_probs = common.as_array("avg_log_probs", avg_log_probs)
  ref_avg_log_probs = common.as_array("ref_avg_log_probs", ref_avg_log_probs)
  common.check_sequence_values(avg_log_probs=avg_log_probs, ref_avg_log_probs=ref_avg_log_probs)
  return avg_log_probs.astype(jnp.float32) - ref_avg_log_probs.astype(jnp.float32)


_GRADNORM_ORDS = (1, 2, math.inf)


def _leaf_norm(g: jax.Array, ord: float) -> jax.Array:
  x = jnp.ravel(g).astype(jnp.float32)
  if ord == 1:
    return jnp.sum(jnp.abs(x))
  if ord == 2:
    return jnp.sqrt(jnp.sum(jnp.square(x)))
  return jnp.max(jnp.abs(x), initial=0.0)


def gradnorm_scores(
  loss_fn: Callable[[Any, Any], jax.Array],
  params: Any,
  examples: Any,
  *,
  ord: float = 2,
) -> jax.Array:
  """GradNorm attack (Wang et al., arXiv 2402.17012): minus the mean per-leaf gradient norm.

  ``score_b = -(1/L) sum_l ||vec(grad_l loss_fn(params, example_b))||_ord`` over the ``L``
  leaves of ``params``, per example: a member sits near a minimum of its loss, so its gradient
  is small. Higher = more member-like; open-unlearning's score is the mean norm itself (its
  AUC labels the holdout positive, so the AUCs agree). Norms are computed in float32.

  ``examples`` is any pytree whose leaves share a leading axis of ``B``; ``loss_fn`` sees one
  example (each leaf without that axis) and returns a scalar, e.g. the mean token NLL of the
  answer (open-unlearning's choice). The per-example gradients are vmapped, so memory holds
  ``B`` gradients at once: pass small batches for large models (open-unlearning uses 1).

  Differs from open-unlearning in two details of the torch harness, not of the formula: it
  averages over the parameters that received a gradient (a parameter unused by the loss has
  none there and is skipped; here every leaf counts, with norm 0), and it evaluates in
  ``model.train()`` mode (dropout on, where the model has it); ``loss_fn`` decides here.

  Args:
    loss_fn: ``loss_fn(params, example) -> scalar``, differentiable in ``params``.
    params: a pytree of float arrays (the model's parameters).
    examples: a pytree of arrays with a shared leading batch axis.
    ord: ``1``, ``2`` or ``math.inf`` (a Python number), the norm of each flattened leaf.

  Returns:
    ``(B,)`` float32.

  Example:
    >>> import jax.numpy as jnp
    >>> from dualoptim_jax import unlearning
    >>> params = {"w": jnp.array([1.0, 2.0]), "b": jnp.array(3.0)}
    >>> def loss_fn(p, x):  # gradients: x for w, 1 for b
    ...   return p["w"] @ x + p["b"]
    >>> s = unlearning.gradnorm_scores(loss_fn, params, jnp.array([[3.0, 4.0], [0.0, 0.0]]))
    >>> [float(v) for v in s]  # -(5 + 1) / 2, -(0 + 1) / 2
    [-3.0, -0.5]
  """
  if isinstance(ord, bool) or not isinstance(ord, numbers.Real) or ord not in _GRADNORM_ORDS:
    raise ValueError(f"ord must be 1, 2 or math.inf, got {ord!r}")
  if not jax.tree.leaves(params):
    raise ValueError("params has no array leaves to differentiate")
  leaves = jax.tree.leaves(examples)
  if not leaves:
    raise ValueError("examples has no array leaves")
  sizes = {np.shape(x)[0] if np.ndim(x) else None for x in leaves}
  if None in sizes or len(sizes) != 1:
    shapes = [np.shape(x) for x in leaves]
    raise ValueError(
      f"examples must have leaves with one shared leading (batch) axis, got shapes {shapes}"
    )
  grad_fn = jax.grad(loss_fn)

  def one(example):
    norms = [_leaf_norm(g, ord) for g in jax.tree.leaves(grad_fn(params, example))]
    return -jnp.mean(jnp.stack(norms))

  return jax.vmap(one)(examples)


def _scores(name: str, x) -> np.ndarray:
  a = np.asarray(x, np.float64)
  if a.ndim != 1 or a.size == 0:
    raise ValueError(f"{name} must be a non-empty 1-D array of scores, got shape {a.shape}")
  if not np.all(np.isfinite(a)):
    raise ValueError(f"{name} has {int(np.sum(~np.isfinite(a)))} non-finite score(s)")
  return a


def mia_auc(member_scores: ArrayLike, nonmember_scores: ArrayLike) -> float:
  """ROC AUC of separating members from non-members by score (ties count 1/2).

  ``AUC = P(s_member > s_nonmember) + P(s_member = s_nonmember) / 2`` over all pairs,
  computed from average ranks (Mann-Whitney U / (n_member n_nonmember)). 0.5 = no
  separation; 1 = every member scores above every non-member.

  Args:
    member_scores: ``(n,)`` scores of the sequences that were trained on (forget set).
    nonmember_scores: ``(m,)`` scores of a holdout of the same kind never trained on.

  Returns:
    A Python float in [0, 1].

  Example:
    >>> from dualoptim_jax import unlearning
    >>> unlearning.mia_auc([3.0, 2.0, 1.0], [1.0, 0.0])  # (2 + 2 + 1.5) / 6
    0.9166666666666666
  """
  pos = _scores("member_scores", member_scores)
  neg = _scores("nonmember_scores", nonmember_scores)
  ranks = scipy.stats.rankdata(np.concatenate([pos, neg]))  # average ranks: ties count 1/2
  u = np.sum(ranks[: pos.size]) - pos.size * (pos.size + 1) / 2.0
  return float(u / (pos.size * neg.size))


def privleak(auc: ArrayLike, retrained_auc: ArrayLike) -> ArrayLike:
  """PrivLeak (MUSE): relative AUC gap to the retrained model, in percent.

  ``privleak = 100 (auc - retrained_auc) / retrained_auc``: near 0 is the goal; strongly
  negative means over-unlearning (the forget set now looks less familiar than unseen
  data), positive means leakage.

  Example:
    >>> from dualoptim_jax import unlearning
    >>> round(unlearning.privleak(0.75, 0.5), 6)
    50.0
  """
  common.check_hyperparameter("retrained_auc", retrained_auc, low=0.0, low_inclusive=False)
  return 100.0 * (auc - retrained_auc) / retrained_auc
