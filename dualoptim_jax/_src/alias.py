"""Ready-to-use chains: moments, decoupled weight decay, per-objective learning rate."""

from __future__ import annotations

from typing import Any

import optax

from dualoptim_jax._src import base
from dualoptim_jax._src.dualoptim import scale_by_dualoptim
from dualoptim_jax._src.dualoptim_plus import ScaleByDualOptimPlusState, scale_by_dualoptim_plus
from dualoptim_jax._src.learning_rate import scale_by_objective_learning_rate
from dualoptim_jax._src.ordering import order_state_writes


def decay_and_learning_rate(
  learning_rate: optax.ScalarOrSchedule,
  forget_learning_rate: optax.ScalarOrSchedule | None,
  weight_decay: optax.ScalarOrSchedule,
  mask: Any,
  forget_steps: int,
  retain_steps: int,
) -> tuple[optax.GradientTransformation, optax.GradientTransformationExtraArgs]:
  """The chain's tail shared by every alias: ``-lr_o * (u + wd * p)``."""
  base.check_hyperparameter("weight_decay", weight_decay, low=0.0)
  lengths = base.run_lengths_from(forget_steps, retain_steps, None)
  if forget_learning_rate is None:
    forget_learning_rate = learning_rate
  lrs = [None, None]
  lrs[base.FORGET], lrs[base.RETAIN] = forget_learning_rate, learning_rate
  return (
    optax.add_decayed_weights(weight_decay, mask),
    scale_by_objective_learning_rate(tuple(lrs), run_lengths=lengths),
  )


def dualoptim_plus(
  learning_rate: optax.ScalarOrSchedule,
  *,
  forget_learning_rate: optax.ScalarOrSchedule | None = None,
  b1: float = 0.9,
  b2: float = 0.95,
  base_b1: float = 0.9,
  base_b2: float = 0.95,
  eps: float = 1e-8,
  weight_decay: optax.ScalarOrSchedule = 0.0,
  mask: Any = None,
  forget_steps: int = 1,
  retain_steps: int = 1,
  bounded: bool = False,
  mu_dtype: Any | None = None,
  nu_dtype: Any | None = None,
) -> optax.GradientTransformationExtraArgs:
  """DualOptim+ with decoupled weight decay, for two-objective unlearning.

  The update of a step on objective ``o`` is ``-lr_o * (u + weight_decay * p)``
  with ``u`` from :func:`scale_by_dualoptim_plus`.

  Args:
    learning_rate: the retain learning rate (float or optax schedule, evaluated
      at the global step count).
    forget_learning_rate: the forget learning rate; defaults to ``learning_rate``.
    b1, b2: delta-moment decays.
    base_b1, base_b2: base-moment decays.
    eps: denominator epsilon.
    weight_decay: decoupled weight decay.
    mask: optional weight-decay mask (as in ``optax.adamw``).
    forget_steps, retain_steps: the alternation (F x forget_steps, R x retain_steps, ...).
    bounded: floor the second moment at ``m**2`` so ``|update| <= lr_o`` (opt-in).
    mu_dtype, nu_dtype: storage dtypes of first/second moments.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import dualoptim_jax as do
    >>> tx = do.dualoptim_plus(1e-1, forget_steps=1, retain_steps=5)
    >>> params = jnp.array([1.0, -2.0])
    >>> state = tx.init(params)
    >>> for _ in range(100):
    ...   grads = jax.grad(lambda p: jnp.sum(p ** 2))(params)
    ...   updates, state = tx.update(grads, state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> bool(jnp.all(jnp.abs(params) < 0.2))
    True
  """
  # order_state_writes: the moments are overwritten in place after the caller's
  # parameter update reads them (no state copies; see ordering.py).
  return order_state_writes(
    optax.chain(
      scale_by_dualoptim_plus(
        b1,
        b2,
        base_b1,
        base_b2,
        eps,
        forget_steps=forget_steps,
        retain_steps=retain_steps,
        bounded=bounded,
        mu_dtype=mu_dtype,
        nu_dtype=nu_dtype,
      ),
      *decay_and_learning_rate(
        learning_rate, forget_learning_rate, weight_decay, mask, forget_steps, retain_steps
      ),
    ),
    (ScaleByDualOptimPlusState,),
  )


def dualoptim(
  learning_rate: optax.ScalarOrSchedule,
  *,
  forget_learning_rate: optax.ScalarOrSchedule | None = None,
  b1: float = 0.9,
  b2: float = 0.95,
  eps: float = 1e-8,
  weight_decay: optax.ScalarOrSchedule = 0.0,
  mask: Any = None,
  forget_steps: int = 1,
  retain_steps: int = 1,
  mu_dtype: Any | None = None,
  nu_dtype: Any | None = None,
) -> optax.GradientTransformationExtraArgs:
  """DualOptim (one Adam state per objective) with decoupled weight decay.

  Args:
    learning_rate: the retain learning rate (float or schedule).
    forget_learning_rate: the forget learning rate; defaults to ``learning_rate``.
    b1, b2: Adam decays.
    eps: denominator epsilon.
    weight_decay: decoupled weight decay.
    mask: optional weight-decay mask.
    forget_steps, retain_steps: the alternation schedule.
    mu_dtype, nu_dtype: storage dtypes of the moments.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> import dualoptim_jax as do
    >>> tx = do.dualoptim(1e-2, forget_learning_rate=2e-2)
    >>> params = {"w": jnp.zeros(3)}
    >>> state = tx.init(params)
    >>> updates, state = tx.update({"w": jnp.ones(3)}, state, params)  # a forget step
    >>> round(float(updates["w"][0]), 4)
    -0.02
  """
  # No write ordering needed: only the active moments are rewritten, from their
  # own old values, and the update reads the new ones (see ordering.py).
  return optax.chain(
    scale_by_dualoptim(
      b1,
      b2,
      eps,
      forget_steps=forget_steps,
      retain_steps=retain_steps,
      mu_dtype=mu_dtype,
      nu_dtype=nu_dtype,
    ),
    *decay_and_learning_rate(
      learning_rate, forget_learning_rate, weight_decay, mask, forget_steps, retain_steps
    ),
  )
