"""Reinforcement-learning pieces of de-attribution unlearning: the PPO surrogate and Tug-of-War."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from dualoptim_jax._src import unlearning_common as common


def ppo_policy_loss(
  logp: ArrayLike,
  old_logp: ArrayLike,
  advantages: ArrayLike,
  mask: ArrayLike,
  *,
  clip_eps: float = 0.2,
) -> jax.Array:
  """PPO's clipped surrogate (Schulman et al., 2017) on token log-probs, to minimise.

  ``r_bt = exp(logp_bt - old_logp_bt)``;
  ``loss = -sum_bt mask_bt min(r_bt A_bt, clip(r_bt, 1 - eps, 1 + eps) A_bt) / sum_bt mask_bt``
  (0 for an empty mask). ``old_logp`` and ``advantages`` are constants (stop-gradient).

  Args:
    logp: ``(B, T)`` log-probs of the sampled tokens under the current policy.
    old_logp: ``(B, T)`` the same under the policy that sampled them.
    advantages: ``(B, T)``, or broadcastable to it: ``(B, 1)`` per sequence, ``(1, T)`` or a
      scalar (a ``(B,)`` vector is refused: numpy would broadcast it along time).
    mask: ``(B, T)``, 1 on the generated tokens that count (not prompt, padding or
      after EOS).
    clip_eps: the clipping range ``eps`` (>= 0).

  Returns:
    A float32 scalar.

  Example:
    >>> import jax.numpy as jnp
    >>> from dualoptim_jax import unlearning
    >>> lp = jnp.log(jnp.array([[0.5, 0.6]]))
    >>> old = jnp.log(jnp.array([[0.25, 0.6]]))  # ratios 2 and 1
    >>> adv = jnp.array([[1.0], ])  # one advantage for the sequence
    >>> round(float(unlearning.ppo_policy_loss(lp, old, adv, jnp.ones((1, 2)))), 4)  # -(1.2+1)/2
    -1.1
  """
  logp, old_logp = common.as_array("logp", logp), common.as_array("old_logp", old_logp)
  advantages, mask = common.as_array("advantages", advantages), common.as_array("mask", mask)
  common.require_rank("logp", logp, 2, common.TOKEN_LAYOUT)
  why = f"the shape of logp {logp.shape}"
  common.require_shape("old_logp", old_logp, logp.shape, why)
  common.require_shape("mask", mask, logp.shape, why)
  if advantages.ndim not in (0, 2):
    raise ValueError(
      f"advantages must be a scalar or have rank 2, {common.TOKEN_LAYOUT} or broadcastable "
      f"to logp {logp.shape} (e.g. (batch, 1)); got shape {advantages.shape}"
    )
  try:
    np.broadcast_shapes(advantages.shape, logp.shape)
  except ValueError:
    raise ValueError(
      f"advantages of shape {advantages.shape} do not broadcast to logp {logp.shape}"
    ) from None
  if np.broadcast_shapes(advantages.shape, logp.shape) != logp.shape:
    raise ValueError(f"advantages of shape {advantages.shape} would enlarge logp {logp.shape}")
  common.check_hyperparameter("clip_eps", clip_eps, low=0.0)
  adv = jax.lax.stop_gradient(jnp.broadcast_to(advantages.astype(jnp.float32), logp.shape))
  old = jax.lax.stop_gradient(old_logp.astype(jnp.float32))
  ratio = jnp.exp(logp.astype(jnp.float32) - old)
  clipped = jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
  return -common.masked_mean(jnp.minimum(ratio * adv, clipped * adv), mask)


def tug_of_war(
  forget_u: ArrayLike,
  forget_rt: ArrayLike,
  retain_u: ArrayLike,
  retain_rt: ArrayLike,
  test_u: ArrayLike,
  test_rt: ArrayLike,
) -> jax.Array:
  """Tug-of-War (Zhao et al., NeurIPS 2024, "RUM"): closeness to the retrained model on 3 splits.

  ``ToW = (1 - |M_f(u) - M_f(rt)|) (1 - |M_r(u) - M_r(rt)|) (1 - |M_t(u) - M_t(rt)|)``, each
  ``M_s`` a per-split performance metric in [0, 1] (e.g. ROUGE-L recall) of the unlearned
  model ``u`` and of the model retrained on the retain set only ``rt``; 1 = the
  unlearned model is indistinguishable from retraining on all three splits.

  Args:
    forget_u, forget_rt: forget-split metric of the unlearned and the retrained model.
    retain_u, retain_rt: the same on the retain split.
    test_u, test_rt: the same on held-out test data.

  Returns:
    A float32 array (a scalar for scalar inputs; elementwise for arrays of one shape).

  Example:
    >>> from dualoptim_jax import unlearning
    >>> round(float(unlearning.tug_of_war(0.4, 0.5, 0.9, 1.0, 0.8, 0.8)), 4)  # 0.9 * 0.9 * 1
    0.81
  """
  names = ("forget_u", "forget_rt", "retain_u", "retain_rt", "test_u", "test_rt")
  args = [
    common.as_array(n, x)
    for n, x in zip(names, (forget_u, forget_rt, retain_u, retain_rt, test_u, test_rt), strict=True)
  ]
  for name, x in zip(names[1:], args[1:], strict=True):
    common.require_shape(name, x, args[0].shape, "the shape of forget_u")
  f_u, f_rt, r_u, r_rt, t_u, t_rt = (a.astype(jnp.float32) for a in args)
  return (1.0 - jnp.abs(f_u - f_rt)) * (1.0 - jnp.abs(r_u - r_rt)) * (1.0 - jnp.abs(t_u - t_rt))
