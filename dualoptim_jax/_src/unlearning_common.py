"""Argument checks and masked reductions shared by the unlearning objectives and audits.

Every check runs on static shapes and dtypes, so it works on tracers (under
``jit`` and ``vmap``) and fails at trace time with a message that names the
argument and its shape.
"""

from __future__ import annotations

import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

TOKEN_LAYOUT = "(batch, time)"
LOGITS_LAYOUT = "(batch, time, vocab)"


def as_array(name: str, x: Any) -> jax.Array:
  """``x`` as a JAX array (tracers pass through); a clear error for non-numeric input."""
  if isinstance(x, jax.Array):
    return x
  try:
    return jnp.asarray(x)
  except (TypeError, ValueError) as e:
    raise TypeError(f"{name} must be an array of numbers, got {type(x).__name__} ({e})") from None


def require_rank(name: str, x: jax.Array, rank: int, layout: str) -> None:
  """Raises ValueError unless ``x`` has ``rank`` axes."""
  if x.ndim != rank:
    raise ValueError(f"{name} must have shape {layout} (rank {rank}), got shape {x.shape}")


def require_shape(name: str, x: jax.Array, shape: tuple[int, ...], reason: str) -> None:
  """Raises ValueError unless ``x.shape == shape``; ``reason`` says where ``shape`` comes from."""
  if x.shape != tuple(shape):
    raise ValueError(f"{name} has shape {x.shape}, expected {tuple(shape)} ({reason})")


def check_token_inputs(
  logits: jax.Array,
  targets: jax.Array | None = None,
  mask: jax.Array | None = None,
  *,
  logits_name: str = "logits",
) -> None:
  """Checks ``logits`` (B, T, V) and the (B, T) ``targets`` (integer) and ``mask``."""
  require_rank(logits_name, logits, 3, LOGITS_LAYOUT)
  bt = logits.shape[:2]
  why = f"{TOKEN_LAYOUT} of {logits_name} {logits.shape}"
  if targets is not None:
    require_shape("targets", targets, bt, why)
    if not jnp.issubdtype(targets.dtype, jnp.integer):
      raise TypeError(f"targets must hold integer token ids, got dtype {targets.dtype}")
  if mask is not None:
    require_shape("mask", mask, bt, why)


def check_sequence_values(**arrays: jax.Array) -> None:
  """Checks that every array is one value per sequence, (B,), all of the same length."""
  names = list(arrays)
  for name in names:
    require_rank(name, arrays[name], 1, "(batch,)")
  first = names[0]
  for name in names[1:]:
    require_shape(name, arrays[name], arrays[first].shape, f"the shape of {first}")


def check_hyperparameter(
  name: str, value: Any, *, low: float, high: float | None = None, low_inclusive: bool = True
) -> None:
  """Raises ValueError when a concrete (not traced) hyperparameter is outside its range."""
  if isinstance(value, jax.core.Tracer):
    return
  v = float(np.asarray(value))
  too_low = v < low if low_inclusive else v <= low
  if not np.isfinite(v) or too_low or (high is not None and v > high):
    bound = f"{'>=' if low_inclusive else '>'} {low}" + ("" if high is None else f" and <= {high}")
    raise ValueError(f"{name}={value!r} must be finite and {bound}")


def check_int(name: str, value: Any, *, low: int) -> int:
  """A Python int ``>= low`` (it shapes the program, so it cannot be traced)."""
  if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < low:
    raise ValueError(f"{name} must be a Python int >= {low}, got {value!r}")
  return int(value)


def float_mask(mask: jax.Array) -> jax.Array:
  """A bool, int or float mask as float32 weights."""
  return mask.astype(jnp.float32)


def masked_sum(values: jax.Array, mask: jax.Array, axis=None) -> jax.Array:
  """``sum(mask * values)``; masked-out entries count 0 even where ``values`` is not finite."""
  m = float_mask(mask)
  return jnp.sum(jnp.where(m != 0.0, values * m, jnp.float32(0.0)), axis=axis)


def masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
  """``sum(mask * values) / sum(mask)``, 0 when the mask is empty (a float32 scalar)."""
  total = jnp.sum(float_mask(mask))
  return masked_sum(values, mask) / jnp.where(total > 0.0, total, jnp.float32(1.0))


def target_ids(targets: jax.Array, vocab: int) -> jax.Array:
  """``targets`` as int32 ids clipped into ``[0, vocab)``.

  Masked-out positions may hold padding or HF's -100; they are masked, so clipping is harmless.
  """
  return jnp.clip(targets.astype(jnp.int32), 0, vocab - 1)


def gather_targets(values: jax.Array, targets: jax.Array) -> jax.Array:
  """``values[..., targets]`` as a masked sum over the last axis.

  A select, not ``take_along_axis``: its gradient fuses into the caller's elementwise backward
  instead of zero-filling a (B, T, V) buffer and scattering into it (12 % of a 49k-vocabulary
  head's forward+backward on CPU).
  """
  ids = target_ids(targets, values.shape[-1])
  vocab = jax.lax.broadcasted_iota(jnp.int32, values.shape, values.ndim - 1)
  return jnp.sum(jnp.where(vocab == ids[..., None], values, jnp.zeros((), values.dtype)), -1)


def target_log_probs(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """``log_softmax(logits)[targets]`` in float32 as ``logits[targets] - logsumexp(logits)``.

  No (B, T, V) log-probability array is materialised in the forward pass.
  """
  logits = logits.astype(jnp.float32)
  return gather_targets(logits, targets) - jax.nn.logsumexp(logits, axis=-1)
