"""Token and sequence log-probabilities and the forget/retain losses built on them.

Conventions (shared by :mod:`dualoptim_jax.unlearning`): ``logits`` are
``(B, T, V)``; ``targets`` are ``(B, T)`` integer ids, already shifted so that
``logits[:, t]`` scores ``targets[:, t]``; ``mask`` is ``(B, T)``, 1 on the
tokens that count (the answer) and 0 elsewhere. Sequence log-probabilities
``logp`` are ``(B,)`` sums over the masked tokens. Every loss is a float32
scalar to minimise, computed in float32 whatever the input dtype; reference
values (``ref_*``) are treated as constants (``stop_gradient``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from dualoptim_jax._src import unlearning_common as common


def _log_softmax(logits: jax.Array) -> jax.Array:
  return jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)


def token_log_probs(logits: ArrayLike, targets: ArrayLike) -> jax.Array:
  """Log-probability of each target token: ``log softmax(logits[b, t])[targets[b, t]]``.

  Args:
    logits: ``(B, T, V)``, any float dtype.
    targets: ``(B, T)`` integer ids, ``logits[:, t]`` scoring ``targets[:, t]``.

  Returns:
    ``(B, T)`` float32.

  Example:
    >>> import jax.numpy as jnp
    >>> from dualoptim_jax import unlearning
    >>> logits = jnp.log(jnp.array([[[0.5, 0.25, 0.25]]]))
    >>> float(unlearning.token_log_probs(logits, jnp.array([[1]]))[0, 0])  # log 0.25
    -1.386...
  """
  logits = common.as_array("logits", logits)
  targets = common.as_array("targets", targets)
  common.check_token_inputs(logits, targets)
  return common.target_log_probs(logits, targets)


def sequence_log_probs(logits: ArrayLike, targets: ArrayLike, mask: ArrayLike) -> jax.Array:
  """Summed log-probability of the masked tokens of each row: ``sum_t mask_t log p(targets_t)``.

  Args:
    logits: ``(B, T, V)``.
    targets: ``(B, T)`` integer ids.
    mask: ``(B, T)``, 1 on the tokens that count.

  Returns:
    ``(B,)`` float32.

  Example:
    >>> import jax.numpy as jnp
    >>> from dualoptim_jax import unlearning
    >>> logits = jnp.log(jnp.array([[[0.5, 0.5], [0.25, 0.75]]]))
    >>> lp = unlearning.sequence_log_probs(logits, jnp.array([[0, 1]]), jnp.array([[1, 1]]))
    >>> round(float(lp[0]), 4)  # log 0.5 + log 0.75
    -0.9808
  """
  logits, targets = common.as_array("logits", logits), common.as_array("targets", targets)
  mask = common.as_array("mask", mask)
  common.check_token_inputs(logits, targets, mask)
  return common.masked_sum(common.target_log_probs(logits, targets), mask, axis=-1)


def gradient_ascent_loss(logits: ArrayLike, targets: ArrayLike, mask: ArrayLike) -> jax.Array:
  """Gradient ascent (GA): the masked mean token log-probability, to minimise.

  ``loss = sum_{b,t} mask_{bt} log p(targets_{bt}) / sum_{b,t} mask_{bt}`` (0 for an empty
  mask): minimising it pushes the answer's likelihood down. It is ``-nll_loss``.

  Example:
    >>> import jax.numpy as jnp
    >>> from dualoptim_jax import unlearning
    >>> logits = jnp.log(jnp.array([[[0.5, 0.5], [0.25, 0.75]]]))
    >>> round(float(unlearning.gradient_ascent_loss(logits, jnp.array([[0, 1]]),
    ...                                             jnp.array([[1, 0]]))), 4)  # log 0.5
    -0.6931
  """
  logits, targets = common.as_array("logits", logits), common.as_array("targets", targets)
  mask = common.as_array("mask", mask)
  common.check_token_inputs(logits, targets, mask)
  return common.masked_mean(common.target_log_probs(logits, targets), mask)


def nll_loss(logits: ArrayLike, targets: ArrayLike, mask: ArrayLike) -> jax.Array:
  """Mean token negative log-likelihood over the masked tokens (GD on retain, IDK on refusals).

  ``loss = -sum_{b,t} mask_{bt} log p(targets_{bt}) / sum_{b,t} mask_{bt}`` (HF's mean
  cross-entropy with the unmasked labels).

  Example:
    >>> import jax.numpy as jnp
    >>> from dualoptim_jax import unlearning
    >>> logits = jnp.log(jnp.array([[[0.5, 0.5], [0.25, 0.75]]]))
    >>> round(float(unlearning.nll_loss(logits, jnp.array([[0, 0]]), jnp.ones((1, 2)))), 4)
    1.0397
  """
  return -gradient_ascent_loss(logits, targets, mask)


def _sequence_inputs(**arrays) -> dict[str, jax.Array]:
  out = {k: common.as_array(k, v) for k, v in arrays.items()}
  common.check_sequence_values(**out)
  return {k: v.astype(jnp.float32) for k, v in out.items()}


def npo_loss(logp: ArrayLike, ref_logp: ArrayLike, *, beta: float = 0.1) -> jax.Array:
  """Negative Preference Optimization (Zhang et al., 2024) on forget sequences.

  ``loss = -(2/beta) mean_b log sigmoid(beta (ref_logp_b - logp_b))``: log 2 at the
  reference; as ``beta -> 0`` its gradient is that of gradient ascent on ``logp``, and
  each sequence's weight ``sigmoid(beta (logp - ref_logp))`` fades once it is forgotten.

  Args:
    logp: ``(B,)`` sequence log-probs under the model being unlearned.
    ref_logp: ``(B,)`` the same under the frozen reference (stop-gradient).
    beta: inverse temperature (> 0).

  Example:
    >>> import jax.numpy as jnp
    >>> from dualoptim_jax import unlearning
    >>> round(float(unlearning.npo_loss(jnp.array([-3.0]), jnp.array([-3.0]))), 4)  # 20 log 2
    13.8629
  """
  common.check_hyperparameter("beta", beta, low=0.0, low_inclusive=False)
  a = _sequence_inputs(logp=logp, ref_logp=ref_logp)
  margin = jax.lax.stop_gradient(a["ref_logp"]) - a["logp"]
  return -(2.0 / beta) * jnp.mean(jax.nn.log_sigmoid(beta * margin))


def simnpo_loss(
  logp: ArrayLike, lengths: ArrayLike, *, beta: float = 2.5, gamma: float = 0.0
) -> jax.Array:
  """SimNPO (Fan et al., 2024): NPO without a reference, on length-normalised log-probs.

  ``loss = -(2/beta) mean_b log sigmoid(-beta logp_b / lengths_b - gamma)``.

  Args:
    logp: ``(B,)`` sequence log-probs.
    lengths: ``(B,)`` number of scored tokens per sequence (``mask.sum(-1)``; 0 counts as 1).
    beta: inverse temperature (> 0).
    gamma: reward margin.

  Example:
    >>> import jax.numpy as jnp
    >>> from dualoptim_jax import unlearning
    >>> round(float(unlearning.simnpo_loss(jnp.array([0.0]), jnp.array([4]))), 4)  # 0.8 log 2
    0.5545
  """
  common.check_hyperparameter("beta", beta, low=0.0, low_inclusive=False)
  a = _sequence_inputs(logp=logp, lengths=lengths)
  avg = a["logp"] / jnp.maximum(a["lengths"], jnp.float32(1.0))
  return -(2.0 / beta) * jnp.mean(jax.nn.log_sigmoid(-beta * avg - gamma))


def dpo_loss(
  logp_chosen: ArrayLike,
  logp_rejected: ArrayLike,
  ref_logp_chosen: ArrayLike,
  ref_logp_rejected: ArrayLike,
  *,
  beta: float = 0.1,
) -> jax.Array:
  """Direct Preference Optimization (Rafailov et al., 2023); IdkDPO prefers a refusal.

  ``loss = -(2/beta) mean_b log sigmoid(beta ((c_b - r_b) - (rc_b - rr_b)))`` with
  ``c, r`` the chosen / rejected sequence log-probs and ``rc, rr`` the reference's
  (stop-gradient). For IdkDPO the chosen answer is the refusal, the rejected one the
  forget answer.

  Example:
    >>> import jax.numpy as jnp
    >>> from dualoptim_jax import unlearning
    >>> z = jnp.zeros(2)
    >>> round(float(unlearning.dpo_loss(z, z, z, z)), 4)  # 20 log 2 at the reference
    13.8629
  """
  common.check_hyperparameter("beta", beta, low=0.0, low_inclusive=False)
  a = _sequence_inputs(
    logp_chosen=logp_chosen,
    logp_rejected=logp_rejected,
    ref_logp_chosen=ref_logp_chosen,
    ref_logp_rejected=ref_logp_rejected,
  )
  ref = jax.lax.stop_gradient(a["ref_logp_chosen"] - a["ref_logp_rejected"])
  margin = (a["logp_chosen"] - a["logp_rejected"]) - ref
  return -(2.0 / beta) * jnp.mean(jax.nn.log_sigmoid(beta * margin))


def answer_preservation_loss(
  logp_answer: ArrayLike, logp_idk: ArrayLike, *, beta: float = 0.1
) -> jax.Array:
  """Answer preservation (AP) on retain data: keep the answer likelier than a refusal.

  ``loss = -(1/beta) mean_b log sigmoid(beta (logp_answer_b - logp_idk_b))`` (the
  reference's 1/beta, not NPO's 2/beta). No reference model.

  Example:
    >>> import jax.numpy as jnp
    >>> from dualoptim_jax import unlearning
    >>> round(float(unlearning.answer_preservation_loss(jnp.array([-1.0]),
    ...                                                 jnp.array([-1.0]))), 4)  # 10 log 2
    6.9315
  """
  common.check_hyperparameter("beta", beta, low=0.0, low_inclusive=False)
  a = _sequence_inputs(logp_answer=logp_answer, logp_idk=logp_idk)
  return -(1.0 / beta) * jnp.mean(jax.nn.log_sigmoid(beta * (a["logp_answer"] - a["logp_idk"])))


def maximum_entropy_loss(logits: ArrayLike, mask: ArrayLike) -> jax.Array:
  """Maximum entropy (ME): masked mean over positions of ``KL(uniform || softmax(z_t))``.

  ``KL_t = -log V - (1/V) sum_v log p_v(z_t)`` (0 iff the next-token distribution is
  uniform); ``loss = sum_{b,t} mask_{bt} KL_{bt} / sum mask``.

  Example:
    >>> import jax.numpy as jnp
    >>> from dualoptim_jax import unlearning
    >>> logits = jnp.log(jnp.array([[[0.5, 0.5], [0.8, 0.2]]]))
    >>> round(float(unlearning.maximum_entropy_loss(logits, jnp.array([[1, 0]]))), 6)
    0.0
  """
  logits, mask = common.as_array("logits", logits), common.as_array("mask", mask)
  common.check_token_inputs(logits, mask=mask)
  logp = _log_softmax(logits)
  kl = -jnp.log(jnp.float32(logits.shape[-1])) - jnp.mean(logp, axis=-1)
  return common.masked_mean(kl, mask)


def kl_loss(logits: ArrayLike, ref_logits: ArrayLike, mask: ArrayLike) -> jax.Array:
  """Token KL to a frozen reference: masked mean over positions of ``KL(p_ref || p_theta)``.

  ``KL_t = sum_v p_ref(v|t) (log p_ref(v|t) - log p_theta(v|t))``;
  ``loss = sum_{b,t} mask_{bt} KL_{bt} / sum mask``; ``ref_logits`` are stop-gradient.

  Example:
    >>> import jax.numpy as jnp
    >>> from dualoptim_jax import unlearning
    >>> ref = jnp.log(jnp.array([[[0.5, 0.5]]]))
    >>> new = jnp.log(jnp.array([[[0.25, 0.75]]]))
    >>> round(float(unlearning.kl_loss(new, ref, jnp.ones((1, 1)))), 4)  # 0.5 ln(4/3) + 0.5 ln 2
    0.1438
  """
  logits, mask = common.as_array("logits", logits), common.as_array("mask", mask)
  ref_logits = common.as_array("ref_logits", ref_logits)
  common.check_token_inputs(logits, mask=mask)
  common.require_shape("ref_logits", ref_logits, logits.shape, "the shape of logits")
  ref = jax.lax.stop_gradient(_log_softmax(ref_logits))
  p_ref = jnp.exp(ref)
  # Tokens the reference rules out (p_ref = 0, e.g. -inf logits) contribute 0, not 0 * inf.
  terms = jnp.where(p_ref > 0.0, p_ref * (ref - _log_softmax(logits)), jnp.float32(0.0))
  kl = jnp.sum(terms, axis=-1)
  return common.masked_mean(kl, mask)
