"""DiPO, Distribution Preference Optimization (Qin et al., arXiv 2510.04773), as reconstructed here.

The paper's text beyond its abstract and no code were available; this module
implements the reconstruction of ``UNLEARNING.md`` section 4.2 (derivation in
:func:`dipo_loss`), with the unknown choices (which logits are selected, the
constants, sum or mean over tokens) as arguments.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from dualoptim_jax._src import unlearning_common as common


def dipo_pair(
  ref_logits: jax.Array, *, gamma: ArrayLike, top_k: int
) -> tuple[jax.Array, jax.Array]:
  """The preferred and dispreferred next-token distributions built from reference logits.

  ``S_t`` = the ``top_k`` largest entries of ``z_t``;
  ``pi_w = softmax(z_t - gamma 1[S_t])`` (suppressed: forgetting-promoting, preferred),
  ``pi_l = softmax(z_t + gamma 1[S_t])`` (amplified: memory-promoting, dispreferred).

  Args:
    ref_logits: ``(..., V)`` reference logits ``z`` (used as constants).
    gamma: shift of the selected logits (>= 0).
    top_k: how many of the highest logits per position are shifted.

  Returns:
    ``(pi_w, pi_l)``, float32 arrays of ``ref_logits``'s shape.

  Example:
    >>> import jax.numpy as jnp
    >>> from dualoptim_jax._src.dipo import dipo_pair
    >>> w, l = dipo_pair(jnp.array([1.0, 0.0, 0.0]), gamma=1.0, top_k=1)
    >>> [round(float(x), 3) for x in w], [round(float(x), 3) for x in l]
    ([0.333, 0.333, 0.333], [0.787, 0.107, 0.107])
  """
  z = jax.lax.stop_gradient(ref_logits.astype(jnp.float32))
  _, idx = jax.lax.top_k(z, top_k)
  selected = jnp.sum(jax.nn.one_hot(idx, z.shape[-1], dtype=jnp.float32), axis=-2)
  shift = selected * jnp.asarray(gamma, jnp.float32)
  return jax.nn.softmax(z - shift, axis=-1), jax.nn.softmax(z + shift, axis=-1)


def dipo_loss(
  logits: ArrayLike,
  ref_logits: ArrayLike,
  mask: ArrayLike,
  *,
  beta: float = 0.1,
  gamma: float = 3.0,
  top_k: int = 1,
  length_normalize: bool = False,
) -> jax.Array:
  """DiPO forget loss: a Bradley-Terry preference between two next-token distributions per position.

  **A reconstruction**, not the authors' code (none is public; only the abstract could
  be read). The paper builds, at every answer position, a preferred and a dispreferred
  distribution from the model's own high-confidence logits and optimises a
  Bradley-Terry objective over sequence KL divergences derived from token-level DPO
  (TDPO). Our form: TDPO's token reward is ``beta log(pi_theta(z|s_t) / pi_ref(z|s_t))``
  plus a state-only term; the reward of a whole distribution ``pi`` at ``s_t`` is its
  expectation ``E_{z~pi}``. Both members of a pair share the state, so the state-only
  terms cancel in the difference, leaving

  ``Delta_b = beta sum_t mask_bt sum_v (pi_w - pi_l)(v) (log pi_theta(v|t) - log pi_ref(v|t))``
  ``= beta sum_t mask_bt [KL(pi_l||pi_theta) - KL(pi_w||pi_theta) - KL(pi_l||pi_ref)
  + KL(pi_w||pi_ref)]``, and ``loss = -mean_b log sigmoid(Delta_b)``,

  with ``(pi_w, pi_l)`` from :func:`dipo_pair` on the frozen reference logits. At
  ``theta = ref`` the loss is ``log 2``. Since ``pi_w - pi_l`` sums to 0, the gradient in
  the logits is ``d loss / d z_bt = -sigmoid(-Delta_b) beta mask_bt (pi_w - pi_l) / B``:
  descent lowers the selected high-confidence tokens and raises the others, and a
  sequence's weight ``sigmoid(-Delta_b)`` decays as it is forgotten (as in NPO).

  Args:
    logits: ``(B, T, V)`` logits of the model being unlearned.
    ref_logits: ``(B, T, V)`` logits of the frozen reference (stop-gradient).
    mask: ``(B, T)``, 1 on the answer positions.
    beta: inverse temperature of the token reward (> 0).
    gamma: logit shift that builds the pair (>= 0; 0 gives a zero gradient).
    top_k: how many of the reference's highest logits per position are shifted
      (1: on a memorised answer, nearly always the label).
    length_normalize: divide ``Delta_b`` by the number of masked positions of row ``b``
      (a mean over tokens instead of the sum).

  Returns:
    A float32 scalar.

  Example:
    >>> import jax.numpy as jnp
    >>> from dualoptim_jax import unlearning
    >>> z = jnp.array([[[3.0, 0.0, -1.0], [0.5, 2.0, 0.0]]])
    >>> round(float(unlearning.dipo_loss(z, z, jnp.ones((1, 2)))), 4)  # log 2 at the reference
    0.6931
  """
  logits, mask = common.as_array("logits", logits), common.as_array("mask", mask)
  ref_logits = common.as_array("ref_logits", ref_logits)
  common.check_token_inputs(logits, mask=mask)
  common.require_shape("ref_logits", ref_logits, logits.shape, "the shape of logits")
  common.check_hyperparameter("beta", beta, low=0.0, low_inclusive=False)
  common.check_hyperparameter("gamma", gamma, low=0.0)
  top_k = common.check_int("top_k", top_k, low=1)
  if top_k > logits.shape[-1]:
    raise ValueError(f"top_k={top_k} exceeds the vocabulary size {logits.shape[-1]} of logits")
  pi_w, pi_l = dipo_pair(ref_logits, gamma=gamma, top_k=top_k)
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  logp_ref = jax.lax.stop_gradient(jax.nn.log_softmax(ref_logits.astype(jnp.float32), axis=-1))
  per_token = jnp.sum((pi_w - pi_l) * (logp - logp_ref), axis=-1)
  delta = common.masked_sum(per_token, mask, axis=-1)
  if length_normalize:
    n = jnp.sum(common.float_mask(mask), axis=-1)
    delta = delta / jnp.maximum(n, jnp.float32(1.0))
  return -jnp.mean(jax.nn.log_sigmoid(beta * delta))
