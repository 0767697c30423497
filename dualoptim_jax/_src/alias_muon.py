"""``dualoptim_plus_muon``: DualOptim+ Muon on matrices, DualOptim+ on the other leaves."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, Literal

import jax
import optax

# Muon's shape scaling and default coefficients live in optax's private module.
from optax.contrib import _muon as optax_muon

from dualoptim_jax._src import base, muon
from dualoptim_jax._src.alias import decay_and_learning_rate, dualoptim_plus
from dualoptim_jax._src.learning_rate import objective_learning_rates as objective_lrs
from dualoptim_jax._src.muon import DimNumsOrFn, NsCoeffs

_MUON, _ADAM = "muon", "adam"


def _labels_fn(spec: DimNumsOrFn) -> Callable[[Any], Any]:
  """``"muon"`` for 2-D (or declared) leaves, ``"adam"`` for the rest."""

  def labels(params):
    if spec is None:
      return jax.tree.map(lambda x: _MUON if x.ndim == 2 else _ADAM, params)
    dims = spec(params) if callable(spec) else spec
    return jax.tree.map(
      lambda d, sub: jax.tree.map(lambda _: _ADAM if d is None else _MUON, sub),
      dims,
      params,
      is_leaf=lambda x: x is None or muon.is_dimension_numbers(x),
    )

  return labels


def dualoptim_plus_muon(
  learning_rate: optax.ScalarOrSchedule,
  *,
  forget_learning_rate: optax.ScalarOrSchedule | None = None,
  objective_learning_rates: Sequence[optax.ScalarOrSchedule] | None = None,
  beta: float = 0.95,
  base_beta: float = 0.95,
  ns_coeffs: NsCoeffs = optax_muon._DEFAULT_NS_COEFFS,
  ns_steps: int | None = None,
  eps: float = 1e-8,
  weight_decay: optax.ScalarOrSchedule = 0.0,
  mask: Any = None,
  forget_steps: int = 1,
  retain_steps: int = 1,
  run_lengths: Sequence[int] | None = None,
  mu_dtype: Any | None = None,
  nesterov: bool = True,
  adaptive: bool = False,
  preconditioning: Literal["frobenius", "spectral", "aol", "schatten"] = "frobenius",
  consistent_rms: float | None = 0.2,
  muon_weight_dimension_numbers: DimNumsOrFn = None,
  adam_learning_rate: optax.ScalarOrSchedule | None = None,
  adam_forget_learning_rate: optax.ScalarOrSchedule | None = None,
  adam_objective_learning_rates: Sequence[optax.ScalarOrSchedule] | None = None,
  adam_b1: float = 0.9,
  adam_b2: float = 0.95,
  adam_base_b1: float = 0.9,
  adam_base_b2: float = 0.95,
  adam_weight_decay: optax.ScalarOrSchedule | None = None,
  adam_bounded: bool = False,
  b1: float | None = None,
  b2: float | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""DualOptim+ Muon for matrices, DualOptim+ (Adam-style) for the other leaves.

  Partitioned like ``optax.contrib.muon``: 2-D leaves (or those
  ``muon_weight_dimension_numbers`` declares; ``None`` entries opt out) get

  .. math::
    \Delta p = -\eta_o \big(s \cdot \mathrm{NS}(m) + \lambda p\big),

  with ``m`` the combined momentum of :func:`scale_by_dualoptim_plus_muon`
  and ``s`` optax's shape scale; embeddings, norms and biases get
  :func:`dualoptim_plus`. Both follow one objective schedule.

  ``consistent_rms`` defaults to 0.2 (optax's default is None): updates then
  have about AdamW's RMS, so ``learning_rate`` and ``weight_decay`` mean what
  they mean for :func:`dualoptim_plus`. ``consistent_rms=None`` gives Keller
  Jordan's width scaling ``sqrt(max(1, fan_out / fan_in))``.

  Works under ``optax.inject_hyperparams`` with its defaults: every numeric
  argument becomes an injectable hyperparameter, ``forget_steps`` and
  ``retain_steps`` included (the schedule is integer arithmetic on the step
  count, so run lengths may be traced); ``run_lengths`` and
  ``objective_learning_rates`` are sequences, which it keeps static. It takes
  every callable for a schedule: list a callable ``mask`` (or ``keep_fp32``,
  ``muon_weight_dimension_numbers``) in ``static_args``, or a mask function
  silently becomes ``False`` (no weight decay), as with ``optax.adamw``.
  ``ns_steps`` shapes the program: its None default (5) stays static; passed
  explicitly through ``optax.inject_hyperparams``, list it in ``static_args``.

  Args:
    learning_rate: the retain learning rate (float or schedule).
    forget_learning_rate: the forget learning rate (two objectives); defaults
      to ``learning_rate``.
    objective_learning_rates: one learning rate (or schedule) per objective;
      overrides the two above.
    beta: delta-momentum decay of the matrix leaves.
    base_beta: base-momentum decay of the matrix leaves (1 disables the base).
    ns_coeffs: Newton-Schulz coefficients or an optax preset name.
    ns_steps: Newton-Schulz iterations (default 5; static).
    eps: Newton-Schulz normalisation epsilon, and the other leaves' denominator
      epsilon (one ``eps`` for both, as in ``optax.contrib.muon``).
    weight_decay: decoupled weight decay of the matrix leaves (and of the
      others unless ``adam_weight_decay`` is given).
    mask: weight-decay mask (tree or callable, as in ``optax.adamw``), used by
      both partitions.
    forget_steps, retain_steps: the alternation schedule.
    run_lengths: one run length per objective (K = its length); overrides
      ``forget_steps``/``retain_steps``.
    mu_dtype: storage dtype of the first moments.
    nesterov: Nesterov look-ahead of the matrix momenta.
    adaptive: dual-norm scaling of the orthogonalised update.
    preconditioning: optax's pre-Newton-Schulz normalisation.
    consistent_rms: RMS target of the matrix updates, or None for width scaling.
    muon_weight_dimension_numbers: ``MuonDimensionNumbers`` tree (or callable);
      ``None`` entries go to the non-matrix rule. Default: 2-D leaves.
    adam_learning_rate: retain learning rate of the other leaves
      (default ``learning_rate``).
    adam_forget_learning_rate: their forget learning rate (default
      ``forget_learning_rate``, or ``adam_learning_rate`` when that is given).
    adam_objective_learning_rates: their per-objective learning rates
      (default: ``objective_learning_rates`` unless ``adam_learning_rate`` or
      ``adam_forget_learning_rate`` is given).
    adam_b1, adam_b2, adam_base_b1, adam_base_b2: their DualOptim+ delta and
      base decays.
    adam_weight_decay: their weight decay (default ``weight_decay``).
    adam_bounded: their ``bounded`` safeguard.
    b1, b2: :func:`dualoptim_plus`'s spelling of ``adam_b1``, ``adam_b2``
      (they win when given), so one call builds either optimizer; the matrix
      momentum's decay is ``beta``.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import dualoptim_jax as do
    >>> lr = optax.cosine_decay_schedule(0.5, 200)
    >>> tx = do.dualoptim_plus_muon(lr, forget_steps=1, retain_steps=3)
    >>> target = jnp.arange(6.0).reshape(3, 2)
    >>> params = {"w": jnp.zeros((3, 2)), "b": jnp.zeros(2)}
    >>> loss = lambda p: jnp.sum((p["w"] - target) ** 2) + jnp.sum((p["b"] - 1) ** 2)
    >>> @jax.jit
    ... def step(params, state):
    ...   updates, state = tx.update(jax.grad(loss)(params), state, params)
    ...   return optax.apply_updates(params, updates), state
    >>> state = tx.init(params)
    >>> for _ in range(200):
    ...   params, state = step(params, state)
    >>> bool(loss(params) < 0.05)  # from 56
    True

  References:
    Jordan, `Muon <https://github.com/KellerJordan/Muon>`_, 2024.
    Liu et al., `Muon is Scalable for LLM Training
    <https://arxiv.org/abs/2502.16982>`_, 2025.
  """
  adam_b1 = adam_b1 if b1 is None else b1
  adam_b2 = adam_b2 if b2 is None else b2
  lengths = base.run_lengths_from(forget_steps, retain_steps, run_lengths)
  k = len(lengths)
  lrs = objective_lrs(k, learning_rate, forget_learning_rate, objective_learning_rates)
  if adam_objective_learning_rates is not None:
    adam_lrs = objective_lrs(k, None, None, adam_objective_learning_rates)
  elif adam_learning_rate is None and adam_forget_learning_rate is None:
    adam_lrs = lrs
  else:
    adam_lrs = objective_lrs(
      k,
      learning_rate if adam_learning_rate is None else adam_learning_rate,
      adam_forget_learning_rate,
      None,
    )
  if adam_weight_decay is None:
    adam_weight_decay = weight_decay
  labels = _labels_fn(muon_weight_dimension_numbers)

  # Inside the partition the other leaves are MaskedNode; resolving against the
  # masked updates drops their entries so the trees line up.
  dims_fn = functools.partial(muon.resolve_dimension_numbers, muon_weight_dimension_numbers)

  return optax.partition(
    {
      _MUON: optax.chain(
        muon.scale_by_dualoptim_plus_muon(
          ns_coeffs,
          ns_steps,
          beta,
          base_beta,
          eps,
          mu_dtype,
          nesterov=nesterov,
          adaptive=adaptive,
          preconditioning=preconditioning,
          weight_dimension_numbers=dims_fn,
          num_objectives=k,
          run_lengths=lengths,
        ),
        optax_muon.scale_by_shape(dims_fn, consistent_rms),
        *decay_and_learning_rate(lrs, weight_decay, mask, lengths),
      ),
      _ADAM: dualoptim_plus(
        adam_lrs[-1],
        objective_learning_rates=adam_lrs,
        b1=adam_b1,
        b2=adam_b2,
        base_b1=adam_base_b1,
        base_b2=adam_base_b2,
        eps=eps,
        weight_decay=adam_weight_decay,
        mask=mask,
        run_lengths=lengths,
        bounded=adam_bounded,
        mu_dtype=mu_dtype,
      ),
    },
    labels,
  )
