"""RMU, Representation Misdirection for Unlearning (Li et al., WMDP, arXiv 2403.03218).

RMU works on a hidden state instead of the logits: on forget tokens it pushes the
activations after one layer towards a fixed random direction of large norm (the control
vector), which scrambles what later layers read there; on retain tokens it keeps the same
activations at the frozen model's. Both are the same masked activation MSE
(:func:`activation_mse`); which parameters are trained (the original: the MLP output
projections of the few layers up to that one) is the job's choice, e.g. an optimizer mask.

Activations are ``(B, T, D)`` at the positions of the ``(B, T)`` ``mask`` (not shifted: the
hidden state at position ``t`` belongs to token ``t``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from dualoptim_jax._src import unlearning_common as common

ACTIVATION_LAYOUT = "(batch, time, hidden)"


def _masked_row_mean_of_mse(a: jax.Array, b: jax.Array, mask: jax.Array) -> jax.Array:
  per_token = jnp.mean(jnp.square(a.astype(jnp.float32) - b.astype(jnp.float32)), axis=-1)
  total = common.masked_sum(per_token, mask, axis=-1)
  count = jnp.sum(common.float_mask(mask), axis=-1)
  # An empty row scores 0 (0/0 read as 0) and still counts in the mean over rows.
  per_row = total / jnp.where(count > 0.0, count, jnp.float32(1.0))
  return jnp.mean(per_row)


def _activation_inputs(activations: ArrayLike, mask: ArrayLike) -> tuple[jax.Array, jax.Array]:
  activations = common.as_array("activations", activations)
  mask = common.as_array("mask", mask)
  common.require_rank("activations", activations, 3, ACTIVATION_LAYOUT)
  common.require_shape(
    "mask",
    mask,
    activations.shape[:2],
    f"{common.TOKEN_LAYOUT} of activations {activations.shape}",
  )
  return activations, mask


def activation_mse(
  activations: ArrayLike, target_activations: ArrayLike, mask: ArrayLike
) -> jax.Array:
  """Masked activation MSE, RMU's distance: per row the masked mean over tokens of the MSE over D.

  ``loss = mean_b [sum_t mask_bt mean_d (a_btd - b_btd)^2 / sum_t mask_bt]`` with ``a`` the
  activations and ``b`` the targets (stop-gradient: for RMU's retain term, the frozen model's
  activations). A row without masked tokens contributes 0 and still counts in the mean over
  rows (open-unlearning's ``compute_activation_loss`` divides by 0 there: NaN); otherwise the
  same value and reduction.

  Args:
    activations: ``(B, T, D)`` hidden states of the model being unlearned, any float dtype.
    target_activations: ``(B, T, D)`` what they should be (a constant).
    mask: ``(B, T)``, 1 on the tokens that count.

  Returns:
    A float32 scalar to minimise.

  Example:
    >>> import jax.numpy as jnp
    >>> from dualoptim_jax import unlearning
    >>> a = jnp.array([[[1.0, 1.0], [3.0, 3.0]]])
    >>> float(unlearning.activation_mse(a, jnp.zeros_like(a), jnp.array([[1, 1]])))  # (1 + 9) / 2
    5.0
  """
  activations, mask = _activation_inputs(activations, mask)
  target_activations = common.as_array("target_activations", target_activations)
  common.require_shape(
    "target_activations", target_activations, activations.shape, "the shape of activations"
  )
  target = jax.lax.stop_gradient(target_activations)
  return _masked_row_mean_of_mse(activations, target, mask)


def rmu_loss(activations: ArrayLike, control_vector: ArrayLike, mask: ArrayLike) -> jax.Array:
  """RMU's forget loss: :func:`activation_mse` against the control vector at every token.

  ``loss = mean_b [sum_t mask_bt mean_d (a_btd - c_d)^2 / sum_t mask_bt]`` with ``c`` the
  ``(D,)`` control vector (a constant, e.g. from :func:`rmu_control_vector`, drawn once per
  run). Minimising it drives the forget tokens' hidden states to ``c``.

  Args:
    activations: ``(B, T, D)`` hidden states after the chosen layer, any float dtype.
    control_vector: ``(D,)``.
    mask: ``(B, T)``, 1 on the forget tokens.

  Returns:
    A float32 scalar to minimise.

  Example:
    >>> import jax.numpy as jnp
    >>> from dualoptim_jax import unlearning
    >>> a = jnp.zeros((1, 1, 2))
    >>> float(unlearning.rmu_loss(a, jnp.array([3.0, 4.0]), jnp.ones((1, 1))))  # (9 + 16) / 2
    12.5
  """
  activations, mask = _activation_inputs(activations, mask)
  control_vector = common.as_array("control_vector", control_vector)
  common.require_shape(
    "control_vector",
    control_vector,
    activations.shape[-1:],
    f"the hidden size of activations {activations.shape}",
  )
  c = jax.lax.stop_gradient(control_vector.astype(jnp.float32))
  return _masked_row_mean_of_mse(activations, c[None, None, :], mask)


def rmu_control_vector(key: jax.Array, dim: int, *, steering_coeff: float = 20.0) -> jax.Array:
  """RMU's control vector: a uniform random direction in the positive orthant, of norm ``c``.

  ``u ~ U[0, 1)^D``, ``control = c u / ||u||_2`` with ``c = steering_coeff``, drawn as WMDP's
  RMU and open-unlearning draw it (open-unlearning's TOFU config sets ``c = 2``). ``c`` is
  model-dependent: it sets how far the forget tokens' hidden states are pushed, against the
  typical norm of the hidden states at that layer.

  Args:
    key: a JAX PRNG key (typed or raw ``uint32[2]``).
    dim: the hidden size ``D`` (a Python int >= 1).
    steering_coeff: the norm ``c`` (>= 0; may be traced).

  Returns:
    ``(D,)`` float32.

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from dualoptim_jax import unlearning
    >>> c = unlearning.rmu_control_vector(jax.random.key(0), 8, steering_coeff=6.5)
    >>> c.shape, round(float(jnp.linalg.norm(c)), 4), bool(jnp.all(c >= 0))
    ((8,), 6.5, True)
  """
  dim = common.check_int("dim", dim, low=1)
  common.check_hyperparameter("steering_coeff", steering_coeff, low=0.0)
  u = jax.random.uniform(key, (dim,), jnp.float32)
  norm = jnp.linalg.norm(u)
  # u = 0 has probability ~2^-24 per draw of D = 1; give the zero vector rather than NaN.
  unit = u / jnp.where(norm > 0.0, norm, jnp.float32(1.0))
  return jnp.asarray(steering_coeff, jnp.float32) * unit
