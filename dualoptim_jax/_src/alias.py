"""Ready-to-use chains: moments, decoupled weight decay, per-objective learning rate."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import optax

from dualoptim_jax._src import base
from dualoptim_jax._src.dualoptim import scale_by_dualoptim
from dualoptim_jax._src.dualoptim_plus import ScaleByDualOptimPlusState, scale_by_dualoptim_plus
from dualoptim_jax._src.learning_rate import (
  objective_learning_rates as objective_lrs,
)
from dualoptim_jax._src.learning_rate import scale_by_objective_learning_rate
from dualoptim_jax._src.ordering import order_state_writes


def decay_and_learning_rate(
  learning_rates: Sequence[optax.ScalarOrSchedule],
  weight_decay: optax.ScalarOrSchedule,
  mask: Any,
  lengths: Sequence[Any],
) -> tuple[optax.GradientTransformation, optax.GradientTransformationExtraArgs]:
  """The chain's tail shared by every alias: ``-lr_o * (u + wd * p)``."""
  base.check_hyperparameter("weight_decay", weight_decay, low=0.0)
  return (
    optax.add_decayed_weights(weight_decay, mask),
    scale_by_objective_learning_rate(tuple(learning_rates), run_lengths=lengths),
  )


def dualoptim_plus(
  learning_rate: optax.ScalarOrSchedule,
  *,
  forget_learning_rate: optax.ScalarOrSchedule | None = None,
  objective_learning_rates: Sequence[optax.ScalarOrSchedule] | None = None,
  b1: float = 0.9,
  b2: float = 0.95,
  base_b1: float = 0.9,
  base_b2: float = 0.95,
  eps: float = 1e-8,
  weight_decay: optax.ScalarOrSchedule = 0.0,
  mask: Any = None,
  forget_steps: int = 1,
  retain_steps: int = 1,
  run_lengths: Sequence[int] | None = None,
  bounded: bool = False,
  mu_dtype: Any | None = None,
  nu_dtype: Any | None = None,
) -> optax.GradientTransformationExtraArgs:
  """DualOptim+ with decoupled weight decay and per-objective learning rates.

  The update of a step on objective ``o`` is ``-lr_o * (u + weight_decay * p)``
  with ``u`` from :func:`scale_by_dualoptim_plus`. Two objectives (``FORGET``,
  ``RETAIN``) by default; ``run_lengths=(n_0, ..., n_{K-1})`` gives K, each
  with its own delta moments and learning rate.

  Works under ``optax.inject_hyperparams`` with its defaults: every numeric
  argument becomes an injectable hyperparameter, ``forget_steps`` and
  ``retain_steps`` included (the schedule is integer arithmetic on the step
  count, so run lengths may be traced); ``run_lengths`` and
  ``objective_learning_rates`` are sequences, which it keeps static. It takes
  every callable for a schedule: list a callable ``mask`` (or ``keep_fp32``,
  ``muon_weight_dimension_numbers``) in ``static_args``, or a mask function
  silently becomes ``False`` (no weight decay), as with ``optax.adamw``.

  Args:
    learning_rate: the learning rate (float or optax schedule, evaluated at the
      global step count): the retain rate, and every objective's by default.
    forget_learning_rate: the forget (objective 0) learning rate when there are
      two objectives; defaults to ``learning_rate``.
    objective_learning_rates: one learning rate (or schedule) per objective;
      overrides the two above.
    b1, b2: delta-moment decays.
    base_b1, base_b2: base-moment decays.
    eps: denominator epsilon.
    weight_decay: decoupled weight decay.
    mask: optional weight-decay mask (as in ``optax.adamw``).
    forget_steps, retain_steps: the alternation (F x forget_steps, R x retain_steps, ...).
    run_lengths: one run length per objective (K = its length); overrides
      ``forget_steps``/``retain_steps``. Objective ``o`` runs ``run_lengths[o]``
      consecutive steps, in order, repeating.
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

    Three objectives, one step each in turn, the third with its own rate:

    >>> tx = do.dualoptim_plus(1e-2, run_lengths=(1, 1, 1),
    ...                        objective_learning_rates=(1e-2, 1e-2, 1e-3))
    >>> state = tx.init(params)
    >>> len(state[0].delta_mu)
    3
    >>> updates, state = tx.update(jnp.ones(2), state, params, objective=2)
    >>> round(float(updates[0]), 4)
    -0.001
  """
  lengths = base.run_lengths_from(forget_steps, retain_steps, run_lengths)
  lrs = objective_lrs(len(lengths), learning_rate, forget_learning_rate, objective_learning_rates)
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
        num_objectives=len(lengths),
        run_lengths=lengths,
        bounded=bounded,
        mu_dtype=mu_dtype,
        nu_dtype=nu_dtype,
      ),
      *decay_and_learning_rate(lrs, weight_decay, mask, lengths),
    ),
    (ScaleByDualOptimPlusState,),
  )


def dualoptim(
  learning_rate: optax.ScalarOrSchedule,
  *,
  forget_learning_rate: optax.ScalarOrSchedule | None = None,
  objective_learning_rates: Sequence[optax.ScalarOrSchedule] | None = None,
  b1: float = 0.9,
  b2: float = 0.95,
  eps: float = 1e-8,
  weight_decay: optax.ScalarOrSchedule = 0.0,
  mask: Any = None,
  forget_steps: int = 1,
  retain_steps: int = 1,
  run_lengths: Sequence[int] | None = None,
  mu_dtype: Any | None = None,
  nu_dtype: Any | None = None,
) -> optax.GradientTransformationExtraArgs:
  """DualOptim (one Adam state per objective) with decoupled weight decay.

  Works under ``optax.inject_hyperparams`` with its defaults: every numeric
  argument becomes an injectable hyperparameter, ``forget_steps`` and
  ``retain_steps`` included (the schedule is integer arithmetic on the step
  count, so run lengths may be traced); ``run_lengths`` and
  ``objective_learning_rates`` are sequences, which it keeps static. It takes
  every callable for a schedule: list a callable ``mask`` (or ``keep_fp32``,
  ``muon_weight_dimension_numbers``) in ``static_args``, or a mask function
  silently becomes ``False`` (no weight decay), as with ``optax.adamw``.

  Args:
    learning_rate: the learning rate (float or schedule): the retain rate, and
      every objective's by default.
    forget_learning_rate: the forget learning rate (two objectives); defaults
      to ``learning_rate``.
    objective_learning_rates: one learning rate (or schedule) per objective;
      overrides the two above.
    b1, b2: Adam decays.
    eps: denominator epsilon.
    weight_decay: decoupled weight decay.
    mask: optional weight-decay mask.
    forget_steps, retain_steps: the alternation schedule.
    run_lengths: one run length per objective (K = its length); overrides
      ``forget_steps``/``retain_steps``.
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
  lengths = base.run_lengths_from(forget_steps, retain_steps, run_lengths)
  lrs = objective_lrs(len(lengths), learning_rate, forget_learning_rate, objective_learning_rates)
  # No write ordering needed: only the active moments are rewritten, from their
  # own old values, and the update reads the new ones (see ordering.py).
  return optax.chain(
    scale_by_dualoptim(
      b1,
      b2,
      eps,
      num_objectives=len(lengths),
      run_lengths=lengths,
      mu_dtype=mu_dtype,
      nu_dtype=nu_dtype,
    ),
    *decay_and_learning_rate(lrs, weight_decay, mask, lengths),
  )
