"""Membership-inference audits (MUSE / open-unlearning): per-sequence scores, ROC AUC, PrivLeak.

Scores are higher for likelier training members. An audit compares the scores
of the forget set with those of a holdout of the same distribution that no
model trained on: ``mia_auc`` near 1 means the forget set is still recognised,
near the retrained (oracle) model's AUC means it looks as unseen as it should.
"""

from __future__ import annotations

import fractions

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
  ids = jnp.clip(targets.astype(jnp.int32), 0, logits.shape[-1] - 1)
  return logp, jnp.take_along_axis(logp, ids[..., None], axis=-1)[..., 0], mask


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
