"""Objectives, the alternation schedule and argument checks shared by every optimizer."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

FORGET = 0
"""Index of the forget objective in two-objective unlearning."""
RETAIN = 1
"""Index of the retain objective in two-objective unlearning."""

ObjectiveLike = int | jax.Array | None


def run_lengths_from(
  forget_steps: int, retain_steps: int, run_lengths: Sequence[int] | None
) -> tuple[int, ...]:
  """Returns the per-objective run lengths, validated.

  ``run_lengths`` (one entry per objective) wins over the two-objective
  ``forget_steps``/``retain_steps`` pair when given.
  """
  lengths = (forget_steps, retain_steps) if run_lengths is None else tuple(run_lengths)
  if any(isinstance(n, jax.Array | np.ndarray) for n in lengths):
    raise TypeError(
      "forget_steps/retain_steps/run_lengths shape the program and must be Python ints, "
      f"got {lengths}. With optax.inject_hyperparams, pass "
      "static_args=('forget_steps', 'retain_steps')."
    )
  if len(lengths) < 1:
    raise ValueError("run_lengths must name at least one objective.")
  for n in lengths:
    if not isinstance(n, numbers.Integral) or n < 0:
      raise ValueError(f"Run lengths must be non-negative Python ints, got {lengths}.")
  if sum(lengths) == 0:
    raise ValueError(
      f"The alternation schedule is empty: run lengths {lengths} sum to 0 "
      "(forget_steps + retain_steps must be positive)."
    )
  return tuple(int(n) for n in lengths)


def objective_run_lengths(
  num_objectives: int,
  forget_steps: int,
  retain_steps: int,
  run_lengths: Sequence[int] | None,
) -> tuple[int, ...]:
  """The validated run lengths of a ``num_objectives``-objective transformation.

  Raises:
    ValueError: ``num_objectives != 2`` without ``run_lengths``, or a count mismatch.
  """
  lengths = run_lengths_from(forget_steps, retain_steps, run_lengths)
  if run_lengths is None and num_objectives != 2:
    raise ValueError(
      f"num_objectives={num_objectives} needs run_lengths (one per objective); "
      "forget_steps/retain_steps describe two objectives."
    )
  if len(lengths) != num_objectives:
    raise ValueError(
      f"run_lengths {lengths} has {len(lengths)} entries, expected {num_objectives}."
    )
  return lengths


def check_decays(eps: Any, **decays: Any) -> None:
  """Raises ValueError unless every decay is in ``[0, 1)`` and ``eps >= 0``."""
  for name, value in decays.items():
    check_hyperparameter(name, value, low=0.0, high=1.0)
  check_hyperparameter("eps", eps, low=0.0)


def scheduled_objective(count: jax.Array, run_lengths: Sequence[int]) -> jax.Array:
  """The objective the built-in alternation assigns to 0-based step ``count``.

  Objective ``o`` runs for ``run_lengths[o]`` consecutive steps, in order, and
  the cycle repeats: with ``(1, 5)`` the pattern is F, R, R, R, R, R, F, ...

  Example:
    >>> import jax.numpy as jnp
    >>> [int(scheduled_objective(jnp.int32(k), (1, 2))) for k in range(6)]
    [0, 1, 1, 0, 1, 1]
  """
  cycle = sum(run_lengths)
  r = jnp.asarray(count, jnp.int32) % jnp.int32(cycle)
  # Objective o owns the residues [start_o, start_o + run_lengths[o]); the
  # objective index is the number of boundaries at or below r.
  starts = np.cumsum(run_lengths)[:-1]
  obj = jnp.int32(0)
  for s in starts:
    obj = obj + (r >= jnp.int32(s)).astype(jnp.int32)
  return obj


def is_static_objective(objective: Any) -> bool:
  """True for a Python/NumPy integer objective (one trace per objective)."""
  return isinstance(objective, numbers.Integral) and not isinstance(objective, bool)


def resolve_objective(
  objective: ObjectiveLike, count: jax.Array, run_lengths: Sequence[int]
) -> int | jax.Array:
  """Returns the objective of this step: a Python int (static) or int32 scalar.

  Raises:
    ValueError: a Python objective outside ``[0, len(run_lengths))``.
    TypeError: an objective that is neither an integer nor an integer scalar array.
  """
  k = len(run_lengths)
  if objective is None:
    if k == 1:
      return 0
    return scheduled_objective(count, run_lengths)
  if isinstance(objective, bool):
    raise TypeError("objective must be an int (FORGET=0, RETAIN=1, ...), not a bool.")
  if is_static_objective(objective):
    if not 0 <= int(objective) < k:
      raise ValueError(f"objective={objective} is out of range for {k} objectives (0..{k - 1}).")
    return int(objective)
  arr = jnp.asarray(objective)
  if arr.shape != () or not jnp.issubdtype(arr.dtype, jnp.integer):
    raise TypeError(
      f"objective must be an int or an integer scalar array, got shape {arr.shape} "
      f"dtype {arr.dtype}."
    )
  return arr.astype(jnp.int32)


def objective_is_valid(objective: int | jax.Array, num_objectives: int) -> jax.Array | bool:
  """In-graph range check of a traced objective (always True for static ones)."""
  if isinstance(objective, int):
    return True
  return (objective >= 0) & (objective < num_objectives)


def check_hyperparameter(
  name: str, value: Any, *, low: float, high: float | None = None, high_inclusive: bool = False
) -> None:
  """Raises ValueError when a concrete hyperparameter lies outside its range.

  Traced values (e.g. under ``optax.inject_hyperparams``) and callables
  (schedules) are not checked: they cannot be inspected without a trace.
  """
  if callable(value) or isinstance(value, jax.core.Tracer):
    return
  try:
    v = float(np.asarray(value))
  except (TypeError, ValueError):
    return
  if (
    not np.isfinite(v)
    or v < low
    or (high is not None and (v > high if high_inclusive else v >= high))
  ):
    hi = "" if high is None else (f", {high}]" if high_inclusive else f", {high})")
    rng = f"[{low}{hi}" if high is not None else f">= {low}"
    raise ValueError(f"{name}={value!r} is outside its valid range {rng}.")


def evaluate_schedule(value: Any, count: jax.Array) -> Any:
  """A float, array or optax schedule evaluated at the 0-based step ``count``."""
  if not callable(value):
    return value
  # optax's schedules mix Python floats with the int32 count, which strict dtype
  # promotion (common in user test suites) rejects; their maths is fine as is.
  with jax.numpy_dtype_promotion("standard"):
    return value(count)


def bias_correction(decay: Any, count: jax.Array, dtype: Any = jnp.float32) -> jax.Array:
  """``1 - decay**count`` in ``dtype`` (count an int32 scalar)."""
  decay = jnp.asarray(decay, dtype)
  return 1 - decay ** count.astype(dtype)


def find_state(state: Any, match: Any, name: str) -> Any:
  """The single sub-state of a nested optax state for which ``match(x)`` holds.

  Works through ``optax.chain``, ``inject_hyperparams``, ``MultiSteps``,
  ``masked`` and ``nnx.Optimizer`` states (any container JAX can flatten).

  Raises:
    ValueError: when there is no such state, or more than one.
  """
  found = [s for s in jax.tree.leaves(state, is_leaf=match) if match(s)]
  if len(found) != 1:
    raise ValueError(f"Expected exactly one {name} in the given state, found {len(found)}.")
  return found[0]


def select_count(counts: jax.Array, objective: int | jax.Array) -> jax.Array:
  """``counts[objective]``, clamped so an invalid traced objective stays in bounds."""
  if isinstance(objective, int):
    return counts[objective]
  return counts[jnp.clip(objective, 0, counts.shape[0] - 1)]
