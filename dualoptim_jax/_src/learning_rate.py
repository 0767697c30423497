"""Per-objective learning rates, following the same schedule as the moments."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from dualoptim_jax._src import base


def objective_learning_rates(
  num_objectives: int,
  learning_rate: optax.ScalarOrSchedule,
  forget_learning_rate: optax.ScalarOrSchedule | None,
  per_objective: Sequence[optax.ScalarOrSchedule] | None,
) -> tuple[optax.ScalarOrSchedule, ...]:
  """One learning rate per objective, from an alias's arguments.

  ``per_objective`` (one entry per objective) wins; otherwise every objective
  uses ``learning_rate``, except ``FORGET`` uses ``forget_learning_rate`` when
  given (two objectives only: it names the unlearning pair).

  Raises:
    ValueError: both forms given, a count mismatch, or ``forget_learning_rate``
      with a number of objectives other than two.

  Example:
    >>> objective_learning_rates(2, 1e-3, 2e-3, None)
    (0.002, 0.001)
    >>> objective_learning_rates(3, 1e-3, None, None)
    (0.001, 0.001, 0.001)
  """
  if per_objective is not None:
    if forget_learning_rate is not None:
      raise ValueError("Give forget_learning_rate or objective_learning_rates, not both.")
    lrs = tuple(per_objective)
    if len(lrs) != num_objectives:
      raise ValueError(
        f"objective_learning_rates has {len(lrs)} entries for {num_objectives} objectives "
        "(one per run length)."
      )
    return lrs
  lrs = [learning_rate] * num_objectives
  if forget_learning_rate is not None:
    if num_objectives != 2:
      raise ValueError(
        f"forget_learning_rate names objective 0 of two-objective unlearning; with "
        f"{num_objectives} objectives pass objective_learning_rates (one per objective)."
      )
    lrs[base.FORGET] = forget_learning_rate
  return tuple(lrs)


class ScaleByObjectiveLearningRateState(NamedTuple):
  """State of :func:`scale_by_objective_learning_rate`."""

  count: jax.Array  # shape=(), dtype=int32: global step count (schedules' argument).


def scale_by_objective_learning_rate(
  learning_rates: Sequence[optax.ScalarOrSchedule],
  *,
  run_lengths: Sequence[int],
  flip_sign: bool = True,
) -> optax.GradientTransformationExtraArgs:
  """Scales updates by the active objective's learning rate (negated by default).

  Each entry of ``learning_rates`` is a float, a scalar array or an optax
  schedule evaluated at the global step count. The objective comes from the
  ``objective=`` keyword or from the alternation given by ``run_lengths``, the
  same rule the moment transformations use, so a chain stays in step.

  Args:
    learning_rates: one learning rate (or schedule) per objective.
    run_lengths: the alternation schedule (one run length per objective).
    flip_sign: multiply by ``-lr`` (descent) rather than ``lr``.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Example:
    >>> import jax.numpy as jnp
    >>> tx = scale_by_objective_learning_rate((0.1, 0.01), run_lengths=(1, 1))
    >>> state = tx.init({"w": jnp.ones(2)})
    >>> u, state = tx.update({"w": jnp.ones(2)}, state)  # step 0: objective 0
    >>> [round(float(x), 3) for x in u["w"]]
    [-0.1, -0.1]
  """
  lengths = base.run_lengths_from(0, 0, run_lengths)
  if len(learning_rates) != len(lengths):
    raise ValueError(
      f"{len(learning_rates)} learning rates for {len(lengths)} objectives in the schedule."
    )
  for lr in learning_rates:
    base.check_hyperparameter("learning_rate", lr, low=0.0)
  sign = -1.0 if flip_sign else 1.0

  def init_fn(params):
    del params
    return ScaleByObjectiveLearningRateState(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None, *, objective=None, **extra_args):
    del params, extra_args
    obj = base.resolve_objective(objective, state.count, lengths)
    lrs = [base.evaluate_schedule(lr, state.count) for lr in learning_rates]
    if isinstance(obj, int):
      lr = jnp.asarray(lrs[obj], jnp.float32)
    else:
      lr = jnp.stack([jnp.asarray(x, jnp.float32) for x in lrs])[jnp.clip(obj, 0, len(lrs) - 1)]
    step = sign * lr
    new_updates = jax.tree.map(lambda u: u * step.astype(u.dtype), updates)
    count = optax.safe_increment(state.count)
    valid = base.objective_is_valid(obj, len(lengths))
    if not isinstance(valid, bool):
      # Stay in step with the moment transformations, which skip such a step.
      count = jnp.where(valid, count, state.count)
    return new_updates, ScaleByObjectiveLearningRateState(count=count)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
