"""Token-level forget losses of open-unlearning: reweighted likelihood and soft targets.

Two families, both per answer token and averaged over the masked positions:

* **Reweighted gradient ascent** -- WGA (Wang et al., arXiv 2502.19301) and SatImp
  (Yang et al., arXiv 2505.11953): the masked mean of ``w_t log p_t`` with a per-token
  weight ``w_t`` built from ``p_t`` and held constant, so minimising lowers ``p_t`` at a
  rate ``w_t`` sets.
* **Cross-entropy to a constant target distribution** -- CE-U (arXiv 2503.01224) and
  UNDIAL (Dong et al., arXiv 2402.10052): the masked mean of
  ``-sum_v q_v log softmax(logits)_v`` with a ``q`` that has (CE-U) no or (UNDIAL) less
  mass on the target token. The gradient in the logits is ``softmax(logits) - q`` per
  masked position (over the mask sum), so it is bounded and vanishes where the model
  already predicts ``q``.

Conventions are those of :mod:`dualoptim_jax.unlearning` (shifted ``targets``, ``mask`` 1
on answer tokens, float32, losses to minimise).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from dualoptim_jax._src import unlearning_common as common


def _token_inputs(
  logits: ArrayLike, targets: ArrayLike, mask: ArrayLike
) -> tuple[jax.Array, jax.Array, jax.Array]:
  logits, targets = common.as_array("logits", logits), common.as_array("targets", targets)
  mask = common.as_array("mask", mask)
  common.check_token_inputs(logits, targets, mask)
  return logits, targets, mask


def _cross_entropy(q: jax.Array, logits: jax.Array) -> jax.Array:
  """``-sum_v q_v log softmax(logits)_v`` per position; entries with ``q_v = 0`` count 0."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  # A token the target rules out (q_v = 0) must not turn a -inf logit into 0 * -inf = NaN.
  return -jnp.sum(jnp.where(q > 0.0, q * logp, jnp.float32(0.0)), axis=-1)


def _weighted_log_likelihood(logp_t: jax.Array, weight: jax.Array, mask: jax.Array) -> jax.Array:
  w = jax.lax.stop_gradient(weight)
  # w = 0 (p_t underflowed to 0) contributes its limit 0, not 0 * -inf.
  return common.masked_mean(jnp.where(w > 0.0, w * logp_t, jnp.float32(0.0)), mask)


def ceu_loss(logits: ArrayLike, targets: ArrayLike, mask: ArrayLike) -> jax.Array:
  """CE-U, cross-entropy unlearning (arXiv 2503.01224): move the target's mass to the other tokens.

  ``q_t = softmax(logits_t with the target's logit set to -inf)`` (a constant: the model's own
  distribution renormalised without the target); ``loss = sum_t mask_t CE(q_t, p_t) / sum_t
  mask_t`` with ``CE(q, p) = -sum_v q_v log p_v``, ``p_t = softmax(logits_t)``. Its gradient in
  ``logits_t`` is ``mask_t (p_t - q_t) / sum mask``: ``+p(target)`` on the target's logit,
  ``-p(v) p(target) / (1 - p(target))`` on every other one, so descent lowers the target and
  raises the others in proportion to their probability; the step is bounded (no runaway as
  in gradient ascent) and fades as ``p(target) -> 0``.

  open-unlearning's trainer also drops the first answer token ("ignore_first_n_answer_tokens",
  as the authors do); this function scores the positions ``mask`` gives, so a job that wants
  that passes a mask without the first answer token. Otherwise the same value and reduction
  as open-unlearning's ``cross_entropy_unlearning_loss`` (a mean over the labelled positions).

  Args:
    logits: ``(B, T, V)``, any float dtype; ``V >= 2``.
    targets: ``(B, T)`` integer ids, ``logits[:, t]`` scoring ``targets[:, t]``.
    mask: ``(B, T)``, 1 on the tokens that count.

  Returns:
    A float32 scalar to minimise (0 for an empty mask).

  Example:
    >>> import jax.numpy as jnp
    >>> from dualoptim_jax import unlearning
    >>> logits = jnp.log(jnp.array([[[0.5, 0.25, 0.25]]]))  # q = (0, 1/2, 1/2)
    >>> round(float(unlearning.ceu_loss(logits, jnp.array([[0]]), jnp.ones((1, 1)))), 4)  # log 4
    1.3863
  """
  logits, targets, mask = _token_inputs(logits, targets, mask)
  vocab = logits.shape[-1]
  if vocab < 2:
    raise ValueError(f"logits need a vocabulary of at least 2 for CE-U, got shape {logits.shape}")
  z = jax.lax.stop_gradient(logits.astype(jnp.float32))
  is_target = jax.nn.one_hot(common.target_ids(targets, vocab), vocab, dtype=jnp.bool_)
  q = jax.nn.softmax(jnp.where(is_target, -jnp.inf, z), axis=-1)
  return common.masked_mean(_cross_entropy(q, logits), mask)


def wga_loss(
  logits: ArrayLike, targets: ArrayLike, mask: ArrayLike, *, beta: float = 1.0
) -> jax.Array:
  """Weighted gradient ascent (WGA, Wang et al., arXiv 2502.19301): GA weighted by ``p_t**beta``.

  ``loss = sum_t mask_t w_t log p_t / sum_t mask_t`` with ``p_t = softmax(logits_t)[target_t]``
  and ``w_t = p_t ** beta`` held constant (stop-gradient): the gradient is ``w_t`` times that of
  gradient ascent, so tokens already unlikely stop being pushed. ``beta = 0`` is
  :func:`gradient_ascent_loss`. Same value and reduction as open-unlearning's
  ``compute_wga_loss`` (which writes it as ``-(w * CE)``).

  Args:
    logits: ``(B, T, V)``, any float dtype.
    targets: ``(B, T)`` integer ids.
    mask: ``(B, T)``, 1 on the tokens that count.
    beta: weight exponent (>= 0; may be traced).

  Returns:
    A float32 scalar to minimise (<= 0; 0 for an empty mask).

  Example:
    >>> import jax.numpy as jnp
    >>> from dualoptim_jax import unlearning
    >>> logits = jnp.log(jnp.array([[[0.5, 0.5]]]))
    >>> round(float(unlearning.wga_loss(logits, jnp.array([[0]]), jnp.ones((1, 1)))), 4)
    -0.3466
  """
  logits, targets, mask = _token_inputs(logits, targets, mask)
  common.check_hyperparameter("beta", beta, low=0.0)
  logp_t = common.target_log_probs(logits, targets)
  weight = jnp.power(jnp.exp(logp_t), jnp.asarray(beta, jnp.float32))
  return _weighted_log_likelihood(logp_t, weight, mask)


def satimp_loss(
  logits: ArrayLike,
  targets: ArrayLike,
  mask: ArrayLike,
  *,
  beta1: float = 5.0,
  beta2: float = 1.0,
) -> jax.Array:
  """SatImp (Yang et al., arXiv 2505.11953): GA weighted by ``p_t**beta1 (1 - p_t)**beta2``.

  ``loss = sum_t mask_t w_t log p_t / sum_t mask_t`` with ``w_t = p_t**beta1 (1 - p_t)**beta2``
  held constant (stop-gradient): the "saturation" factor ``p**beta1`` spares tokens already
  forgotten, the "importance" factor ``(1 - p)**beta2`` spares tokens the model is certain of
  (often generic ones). ``1 - p_t`` is computed as ``-expm1(log p_t)``, exact near ``p_t = 1``.
  Same value and reduction as open-unlearning's ``compute_satimp_loss``.

  Args:
    logits: ``(B, T, V)``, any float dtype.
    targets: ``(B, T)`` integer ids.
    mask: ``(B, T)``, 1 on the tokens that count.
    beta1: saturation exponent (>= 0; may be traced).
    beta2: importance exponent (>= 0; may be traced).

  Returns:
    A float32 scalar to minimise (<= 0; 0 for an empty mask).

  Example:
    >>> import jax.numpy as jnp
    >>> from dualoptim_jax import unlearning
    >>> logits = jnp.log(jnp.array([[[0.5, 0.5]]]))  # w = 0.5**5 * 0.5 = 1/64
    >>> round(float(unlearning.satimp_loss(logits, jnp.array([[0]]), jnp.ones((1, 1)))), 5)
    -0.01083
  """
  logits, targets, mask = _token_inputs(logits, targets, mask)
  common.check_hyperparameter("beta1", beta1, low=0.0)
  common.check_hyperparameter("beta2", beta2, low=0.0)
  logp_t = common.target_log_probs(logits, targets)
  # jnp.power gives 0**0 = 1, so beta = 0 means "no factor" even at p_t = 0 or 1.
  saturation = jnp.power(jnp.exp(logp_t), jnp.asarray(beta1, jnp.float32))
  importance = jnp.power(-jnp.expm1(logp_t), jnp.asarray(beta2, jnp.float32))
  return _weighted_log_likelihood(logp_t, saturation * importance, mask)


def undial_loss(
  logits: ArrayLike,
  ref_logits: ArrayLike,
  targets: ArrayLike,
  mask: ArrayLike,
  *,
  beta: float = 1.0,
) -> jax.Array:
  """UNDIAL (Dong et al., arXiv 2402.10052): self-distillation to the reference, target lowered.

  ``q_t = softmax(ref_logits_t - beta onehot(target_t))`` (a constant: the frozen reference's
  distribution with the target's logit lowered by ``beta``); ``loss = sum_t mask_t CE(q_t, p_t)
  / sum_t mask_t`` with ``CE(q, p) = -sum_v q_v log p_v``, ``p_t = softmax(logits_t)``. The
  gradient in ``logits_t`` is ``mask_t (p_t - q_t) / sum mask``: zero exactly where the model
  predicts ``q_t`` (``logits_t = ref_logits_t - beta onehot + c``), where the loss reaches its
  minimum, the entropy of ``q_t``. As ``beta -> inf`` with ``ref_logits = logits`` it becomes
  :func:`ceu_loss`.

  **Differs from open-unlearning**, whose ``compute_undial_loss`` averages the cross-entropy
  over every position of the batch (prompt and padding included, and at padding the index
  -100 lowers the logit of vocabulary entry ``V - 100``); we average over the masked positions
  only, as every loss of this module does. Its trainer's default ``beta`` is 10.

  Args:
    logits: ``(B, T, V)`` logits of the model being unlearned.
    ref_logits: ``(B, T, V)`` logits of the frozen reference (stop-gradient).
    targets: ``(B, T)`` integer ids.
    mask: ``(B, T)``, 1 on the tokens that count.
    beta: how far the target's reference logit is lowered (>= 0; may be traced).

  Returns:
    A float32 scalar to minimise (0 for an empty mask).

  Example:
    >>> import math
    >>> import jax.numpy as jnp
    >>> from dualoptim_jax import unlearning
    >>> ref = jnp.zeros((1, 1, 2))  # q = softmax((-log 3, 0)) = (1/4, 3/4)
    >>> logits = jnp.log(jnp.array([[[0.25, 0.75]]]))  # already q: the minimum, entropy of q
    >>> loss = unlearning.undial_loss(logits, ref, jnp.array([[0]]), jnp.ones((1, 1)),
    ...                               beta=math.log(3.0))
    >>> round(float(loss), 4)
    0.5623
  """
  logits, targets, mask = _token_inputs(logits, targets, mask)
  ref_logits = common.as_array("ref_logits", ref_logits)
  common.require_shape("ref_logits", ref_logits, logits.shape, "the shape of logits")
  common.check_hyperparameter("beta", beta, low=0.0)
  vocab = logits.shape[-1]
  onehot = jax.nn.one_hot(common.target_ids(targets, vocab), vocab, dtype=jnp.float32)
  z_ref = jax.lax.stop_gradient(ref_logits.astype(jnp.float32))
  q = jax.nn.softmax(z_ref - jnp.asarray(beta, jnp.float32) * onehot, axis=-1)
  return common.masked_mean(_cross_entropy(q, logits), mask)
