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


RunLength = int | jax.Array
"""A run length: a Python int, or an integer scalar array (traced is fine)."""


def run_lengths_from(
  forget_steps: RunLength, retain_steps: RunLength, run_lengths: Sequence[RunLength] | None
) -> tuple[RunLength, ...]:
  """Returns the per-objective run lengths, validated.

  ``run_lengths`` (one entry per objective) wins over the two-objective
  ``forget_steps``/``retain_steps`` pair when given. Entries may be integer
  scalar arrays, traced or not (``optax.inject_hyperparams`` passes them so):
  the schedule is arithmetic on the step count. The number of entries (the
  number of objectives) shapes the state and is always static. Concrete values
  are checked here; traced ones cannot be.

  Example:
    >>> run_lengths_from(1, 5, None)
    (1, 5)
    >>> run_lengths_from(1, 5, (2, 2, 2))
    (2, 2, 2)
  """
  lengths = (forget_steps, retain_steps) if run_lengths is None else tuple(run_lengths)
  if len(lengths) < 1:
    raise ValueError("run_lengths must name at least one objective.")
  out = []
  for n in lengths:
    if isinstance(n, jax.Array | np.ndarray):
      if n.shape != () or not jnp.issubdtype(n.dtype, jnp.integer):
        raise TypeError(
          f"A run length must be an integer scalar, got shape {n.shape} dtype {n.dtype}."
        )
      out.append(n if isinstance(n, jax.core.Tracer) else jnp.asarray(n, jnp.int32))
    elif isinstance(n, numbers.Integral) and not isinstance(n, bool):
      out.append(int(n))
    else:
      raise ValueError(f"Run lengths must be non-negative integers, got {lengths}.")
  concrete = [int(n) for n in out if not isinstance(n, jax.core.Tracer)]
  if any(n < 0 for n in concrete):
    raise ValueError(f"Run lengths must be non-negative integers, got {_show(lengths)}.")
  if len(concrete) == len(out) and sum(concrete) == 0:
    raise ValueError(
      f"The alternation schedule is empty: run lengths {_show(lengths)} sum to 0 "
      "(forget_steps + retain_steps must be positive)."
    )
  return tuple(out)


def _show(lengths: Sequence[Any]) -> tuple:
  return tuple(n if isinstance(n, jax.core.Tracer) else int(n) for n in lengths)


def objective_run_lengths(
  num_objectives: int | None,
  forget_steps: RunLength,
  retain_steps: RunLength,
  run_lengths: Sequence[RunLength] | None,
) -> tuple[RunLength, ...]:
  """The validated run lengths of a transformation with ``num_objectives`` objectives.

  ``num_objectives=None`` means ``len(run_lengths)`` (2 without them).

  Raises:
    ValueError: ``num_objectives != 2`` without ``run_lengths``, or a count mismatch.
    TypeError: ``num_objectives`` given as an array (it shapes the state).
  """
  lengths = run_lengths_from(forget_steps, retain_steps, run_lengths)
  if num_objectives is None:
    return lengths
  num_objectives = static_int("num_objectives", num_objectives)
  if run_lengths is None and num_objectives != 2:
    raise ValueError(
      f"num_objectives={num_objectives} needs run_lengths (one per objective); "
      "forget_steps/retain_steps describe two objectives."
    )
  if len(lengths) != num_objectives:
    raise ValueError(
      f"run_lengths {_show(lengths)} has {len(lengths)} entries, expected {num_objectives}."
    )
  return lengths


def static_int(name: str, value: Any, default: int | None = None) -> int:
  """``value`` as a Python int (``default`` when None), for arguments that shape the program.

  Such arguments (``block_size``, ``min_8bit_size``, ``ns_steps``,
  ``num_objectives``) default to None so that ``optax.inject_hyperparams``,
  which turns every numeric argument into an array, leaves them alone.

  Raises:
    TypeError: ``value`` is an array (e.g. passed explicitly through
      ``optax.inject_hyperparams``): the message names the argument and the
      ``static_args`` fix.

  Example:
    >>> static_int("block_size", None, 256), static_int("block_size", 64)
    (256, 64)
  """
  if value is None:
    value = default
  if isinstance(value, jax.Array | np.ndarray):
    raise TypeError(
      f"{name} shapes the compiled program and must be a Python int, got an array "
      f"({value.dtype}{list(value.shape)}). optax.inject_hyperparams turns numeric "
      f"arguments into arrays: pass static_args=({name!r},) (plus any other such argument)."
    )
  if not isinstance(value, numbers.Integral) or isinstance(value, bool):
    raise TypeError(f"{name} must be an int, got {value!r}.")
  return int(value)


def storage_dtype(name: str, value: Any) -> Any:
  """``value`` (None or a dtype), rejecting the array ``optax.inject_hyperparams`` makes of a type.

  ``jnp.bfloat16`` is callable, so ``inject_hyperparams`` treats it as a
  schedule and passes its value at the step count instead.

  Example:
    >>> storage_dtype("mu_dtype", "bfloat16")
    'bfloat16'
  """
  if isinstance(value, jax.Array | np.ndarray):
    raise TypeError(
      f"{name} arrived as an array, not a dtype: optax.inject_hyperparams treats callables "
      f"(jnp.bfloat16 is one) as schedules. Pass static_args=({name!r},) or a dtype name "
      f"such as {name}='bfloat16'."
    )
  return value


def check_decays(eps: Any, **decays: Any) -> None:
  """Raises ValueError unless every decay is in ``[0, 1)`` and ``eps >= 0``."""
  for name, value in decays.items():
    check_hyperparameter(name, value, low=0.0, high=1.0)
  check_hyperparameter("eps", eps, low=0.0)


def scheduled_objective(count: jax.Array, run_lengths: Sequence[RunLength]) -> jax.Array:
  """The objective the built-in alternation assigns to 0-based step ``count``.

  Objective ``o`` runs for ``run_lengths[o]`` consecutive steps, in order, and
  the cycle repeats: with ``(1, 5)`` the pattern is F, R, R, R, R, R, F, ...
  Run lengths may be traced integer scalars (the objective is then computed
  in the program; the number of objectives is ``len(run_lengths)``).

  Example:
    >>> import jax.numpy as jnp
    >>> [int(scheduled_objective(jnp.int32(k), (1, 2))) for k in range(6)]
    [0, 1, 1, 0, 1, 1]
  """
  lengths = [jnp.asarray(n, jnp.int32) for n in run_lengths]
  # max(., 1): a traced all-zero schedule (which concrete values reject) must not divide by 0.
  cycle = jnp.maximum(sum(lengths[1:], lengths[0]), jnp.int32(1))
  r = jnp.asarray(count, jnp.int32) % cycle
  # Objective o owns the residues [start_o, start_o + run_lengths[o]); the
  # objective index is the number of run ends at or below r.
  obj, end = jnp.int32(0), jnp.int32(0)
  for n in lengths[:-1]:
    end = end + n
    obj = obj + (r >= end).astype(jnp.int32)
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
    hint = ""
    dtype = getattr(value, "dtype", None)
    if dtype is not None and jnp.issubdtype(dtype, jnp.floating) and dtype.itemsize < 4:
      # e.g. b2=0.999 becomes exactly 1.0 in bfloat16.
      hint = (
        f" It is a {dtype} array: optax.inject_hyperparams stores hyperparameters in the "
        "params' dtype, which rounds them; pass hyperparam_dtype=jnp.float32."
      )
    raise ValueError(f"{name}={value!r} is outside its valid range {rng}.{hint}")


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
