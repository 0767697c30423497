"""Ready-to-use 8-bit chains: DualOptim+ 8-bit, DualOptim 8-bit, and an AdamW 8-bit baseline."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import optax

from dualoptim_jax._src import base
from dualoptim_jax._src.alias import decay_and_learning_rate
from dualoptim_jax._src.dualoptim_8bit import scale_by_dualoptim_8bit
from dualoptim_jax._src.dualoptim_plus_8bit import KeepFp32, scale_by_dualoptim_plus_8bit
from dualoptim_jax._src.learning_rate import objective_learning_rates as objective_lrs


def dualoptim_plus_8bit(
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
  block_size: int | None = None,
  min_8bit_size: int | None = None,
  quantize_base: bool = True,
  quantize_delta: bool = True,
  keep_fp32: KeepFp32 = None,
) -> optax.GradientTransformationExtraArgs:
  """DualOptim+ with 8-bit moments, decoupled weight decay and per-objective learning rates.

  The same optimizer as :func:`dualoptim_plus`, storing ``Bm``, ``Dm_o`` and
  ``Dv_o`` in bitsandbytes' signed dynamic map and ``Bv`` in the unsigned one,
  blockwise along each leaf's last axis (codes keep the parameter's shape, so
  the state shards like the parameters). About ``6 + 24 / block_size`` state
  bytes per parameter instead of 24.

  Works under ``optax.inject_hyperparams`` with its defaults: every numeric
  argument becomes an injectable hyperparameter, ``forget_steps`` and
  ``retain_steps`` included (the schedule is integer arithmetic on the step
  count, so run lengths may be traced); ``run_lengths`` and
  ``objective_learning_rates`` are sequences, which it keeps static. It takes
  every callable for a schedule: list a callable ``mask`` (or ``keep_fp32``,
  ``muon_weight_dimension_numbers``) in ``static_args``, or a mask function
  silently becomes ``False`` (no weight decay), as with ``optax.adamw``.
  ``block_size`` and ``min_8bit_size`` shape the state, so they are static:
  their None defaults stay out of ``optax.inject_hyperparams``; passed
  explicitly through it, list them in ``static_args`` (an array raises a
  ``TypeError`` that says so).

  Args:
    learning_rate: the retain learning rate (float or optax schedule).
    forget_learning_rate: the forget learning rate (two objectives); defaults
      to ``learning_rate``.
    objective_learning_rates: one learning rate (or schedule) per objective;
      overrides the two above.
    b1, b2: delta-moment decays.
    base_b1, base_b2: base-moment decays.
    eps: denominator epsilon.
    weight_decay: decoupled weight decay.
    mask: optional weight-decay mask (as in ``optax.adamw``).
    forget_steps, retain_steps: the alternation (F x forget_steps, R x retain_steps, ...).
    run_lengths: one run length per objective (K = its length); overrides
      ``forget_steps``/``retain_steps``.
    bounded: floor the second moment at ``m**2`` so ``|update| <= lr_o`` (opt-in).
    block_size: quantization block along the last axis (default 256; static).
    min_8bit_size: leaves with fewer elements keep float32 moments (default
      4096; static).
    quantize_base: store the base moments in 8 bits.
    quantize_delta: store the delta moments in 8 bits.
    keep_fp32: leaves to keep in float32, e.g. embeddings: a predicate
      ``(path, param) -> bool`` or substrings of ``jax.tree_util.keystr(path)``.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import dualoptim_jax as do
    >>> tx = do.dualoptim_plus_8bit(1e-1, retain_steps=5, min_8bit_size=8)
    >>> params = jnp.array([[1.0, -2.0, 0.5, 3.0], [2.0, 1.5, -1.0, 0.2]])
    >>> state = tx.init(params)
    >>> for _ in range(100):
    ...   grads = jax.grad(lambda p: jnp.sum(p ** 2))(params)
    ...   updates, state = tx.update(grads, state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> bool(jnp.all(jnp.abs(params) < 0.3)), state[0].base_mu_codes.dtype
    (True, dtype('int8'))
  """
  lengths = base.run_lengths_from(forget_steps, retain_steps, run_lengths)
  lrs = objective_lrs(len(lengths), learning_rate, forget_learning_rate, objective_learning_rates)
  return optax.chain(
    scale_by_dualoptim_plus_8bit(
      b1, b2, base_b1, base_b2, eps,
      num_objectives=len(lengths), run_lengths=lengths, bounded=bounded,
      block_size=block_size, min_8bit_size=min_8bit_size, quantize_base=quantize_base,
      quantize_delta=quantize_delta, keep_fp32=keep_fp32,
    ),
    *decay_and_learning_rate(lrs, weight_decay, mask, lengths),
  )  # fmt: skip


def dualoptim_8bit(
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
  block_size: int | None = None,
  min_8bit_size: int | None = None,
  keep_fp32: KeepFp32 = None,
) -> optax.GradientTransformationExtraArgs:
  """DualOptim (one Adam state per objective) with 8-bit moments and decoupled weight decay.

  Works under ``optax.inject_hyperparams`` with its defaults: every numeric
  argument becomes an injectable hyperparameter, ``forget_steps`` and
  ``retain_steps`` included (the schedule is integer arithmetic on the step
  count, so run lengths may be traced); ``run_lengths`` and
  ``objective_learning_rates`` are sequences, which it keeps static. It takes
  every callable for a schedule: list a callable ``mask`` (or ``keep_fp32``,
  ``muon_weight_dimension_numbers``) in ``static_args``, or a mask function
  silently becomes ``False`` (no weight decay), as with ``optax.adamw``.
  ``block_size`` and ``min_8bit_size`` shape the state, so they are static:
  their None defaults stay out of ``optax.inject_hyperparams``; passed
  explicitly through it, list them in ``static_args`` (an array raises a
  ``TypeError`` that says so).

  Args:
    learning_rate: the retain learning rate (float or schedule).
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
    block_size: quantization block along the last axis (default 256; static).
    min_8bit_size: leaves with fewer elements keep float32 moments (default
      4096; static).
    keep_fp32: leaves to keep in float32 (predicate or path substrings).

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Example:
    >>> import jax.numpy as jnp
    >>> import dualoptim_jax as do
    >>> tx = do.dualoptim_8bit(1e-2, forget_learning_rate=2e-2, min_8bit_size=4)
    >>> params = {"w": jnp.zeros((2, 4))}
    >>> state = tx.init(params)
    >>> updates, state = tx.update({"w": jnp.ones((2, 4))}, state, params)  # a forget step
    >>> round(float(updates["w"][0, 0]), 4)
    -0.02
  """
  lengths = base.run_lengths_from(forget_steps, retain_steps, run_lengths)
  lrs = objective_lrs(len(lengths), learning_rate, forget_learning_rate, objective_learning_rates)
  return optax.chain(
    scale_by_dualoptim_8bit(
      b1, b2, eps, num_objectives=len(lengths), run_lengths=lengths,
      block_size=block_size, min_8bit_size=min_8bit_size, keep_fp32=keep_fp32,
    ),
    *decay_and_learning_rate(lrs, weight_decay, mask, lengths),
  )  # fmt: skip


def adamw_8bit(
  learning_rate: optax.ScalarOrSchedule,
  *,
  b1: float = 0.9,
  b2: float = 0.999,
  eps: float = 1e-8,
  weight_decay: optax.ScalarOrSchedule = 1e-4,
  mask: Any = None,
  block_size: int | None = None,
  min_8bit_size: int | None = None,
  keep_fp32: KeepFp32 = None,
) -> optax.GradientTransformationExtraArgs:
  """AdamW with 8-bit blockwise moments, built from the same parts (a baseline).

  Matches ``optax.adamw`` (``eps_root=0``) up to the quantization of ``m``
  (signed map) and ``v`` (unsigned map); defaults follow ``optax.adamw``. An
  ``objective=`` passed to ``update`` is ignored, so it drops into an
  unlearning loop written for :func:`dualoptim_plus_8bit`.

  Works under ``optax.inject_hyperparams`` with its defaults. ``block_size``
  and ``min_8bit_size`` shape the state, so they are static: their None
  defaults stay out of ``optax.inject_hyperparams``; passed explicitly through
  it, list them in ``static_args`` (an array raises a ``TypeError`` that says so).
  A callable ``mask`` or ``keep_fp32`` must be listed in ``static_args`` too
  (it would be taken for a schedule).

  Args:
    learning_rate: learning rate (float or schedule).
    b1, b2: Adam decays.
    eps: denominator epsilon.
    weight_decay: decoupled weight decay.
    mask: optional weight-decay mask.
    block_size: quantization block along the last axis (default 256; static).
    min_8bit_size: leaves with fewer elements keep float32 moments (default
      4096; static).
    keep_fp32: leaves to keep in float32 (predicate or path substrings).

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Example:
    >>> import jax.numpy as jnp
    >>> import dualoptim_jax as do
    >>> tx = do.adamw_8bit(1e-2, weight_decay=0.0, min_8bit_size=4)
    >>> params = {"w": jnp.zeros((2, 4))}
    >>> state = tx.init(params)
    >>> updates, state = tx.update({"w": jnp.ones((2, 4))}, state, params)
    >>> round(float(updates["w"][0, 0]), 4)
    -0.01
  """
  base.check_hyperparameter("learning_rate", learning_rate, low=0.0)
  base.check_hyperparameter("weight_decay", weight_decay, low=0.0)
  adam = scale_by_dualoptim_8bit(
    b1, b2, eps, num_objectives=1, run_lengths=(1,), block_size=block_size,
    min_8bit_size=min_8bit_size, keep_fp32=keep_fp32,
  )  # fmt: skip
  return optax.chain(
    _ignore_objective(adam),
    optax.add_decayed_weights(weight_decay, mask),
    optax.scale_by_learning_rate(learning_rate),
  )  # fmt: skip


def _ignore_objective(
  tx: optax.GradientTransformationExtraArgs,
) -> optax.GradientTransformationExtraArgs:
  """Drops the ``objective=`` extra argument (a one-objective optimizer has nothing to pick)."""

  def update_fn(updates, state, params=None, *, objective=None, **extra_args):
    del objective
    return tx.update(updates, state, params, **extra_args)

  return optax.GradientTransformationExtraArgs(tx.init, update_fn)
