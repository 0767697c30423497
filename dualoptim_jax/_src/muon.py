"""DualOptim+ for Muon: a shared base momentum plus a delta momentum per objective.

For a step on objective ``o`` with gradient ``g`` on a matrix leaf (global
count ``T`` and the objective's count ``t_o`` already incremented)::

  Bm_hat = Bm / (1 - base_beta**(T-1))                    (0 when T == 1)
  r      = g - Bm_hat
  Dm_o  <- beta * Dm_o + (1 - beta) * r
  m      = Dm_o / (1 - beta**t_o) + Bm_hat                (plain momentum)
  m      = beta * Dm_o / (1 - beta**(t_o+1)) + (1 - beta) * r / (1 - beta**t_o) + Bm_hat
                                                          (Nesterov, the default)
  u      = NewtonSchulz(m)
  Bm    <- base_beta * Bm + (1 - base_beta) * g

These are DualOptim+'s first moments (no second moment: Muon normalises by
orthogonalising instead). The Newton-Schulz iteration, the dimension numbers
for non-2-D leaves and the shape scaling are optax.contrib's own.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax
from optax.contrib import MuonDimensionNumbers

# optax exports Muon's building blocks only through its private module; we reuse
# them rather than keep a second copy of the iteration and its scaling rules.
from optax.contrib import _muon as optax_muon
from optax.transforms import _masking

from dualoptim_jax._src import base
from dualoptim_jax._src import dualoptim_plus as dp
from dualoptim_jax._src.alias import decay_and_learning_rate, dualoptim_plus

NsCoeffs = tuple[float, float, float] | Sequence[tuple[float, float, float]] | str
DimNumsOrFn = MuonDimensionNumbers | Any | Callable[[Any], Any] | None

_MUON, _ADAM = "muon", "adam"


class ScaleByDualOptimPlusMuonState(NamedTuple):
  """State of :func:`scale_by_dualoptim_plus_muon`."""

  count: jax.Array  # shape=(), dtype=int32: global step count T.
  objective_counts: jax.Array  # shape=(K,), dtype=int32: per-objective counts t_o.
  base_mu: optax.Updates  # shared momentum Bm, fed the raw gradient every step.
  delta_mu: tuple[optax.Updates, ...]  # per-objective momenta Dm_o of the residual g - Bm_hat.


def _is_dims(x: Any) -> bool:
  return isinstance(x, MuonDimensionNumbers)


def _bias_correction(decay: Any, count: jax.Array) -> jax.Array:
  """``1 - decay**count`` with an integer power, rounded as optax's Muon rounds it."""
  return 1 - jax.lax.pow(jnp.asarray(decay, jnp.float32), count)


def _orthogonalize(m, coeffs, ns_steps, preconditioning, eps, dim_nums) -> jax.Array:
  """optax's Newton-Schulz, on a replicated copy when ``m`` is explicitly sharded.

  ``x @ x.T`` contracts the sharded axes, whose output sharding explicit mode
  will not guess; Newton-Schulz needs the whole matrix anyway, so gather it and
  give the update back the momentum's sharding. Under auto sharding the type
  carries no axes and XLA places the work itself.
  """
  spec = jax.typeof(m).sharding.spec
  sharded = any(axis is not None for axis in spec)
  if sharded:
    m = jax.sharding.reshard(m, jax.sharding.PartitionSpec())
  u = optax_muon.orthogonalize_via_newton_schulz(
    m, coeffs, ns_steps, preconditioning, eps, dim_nums
  )
  return jax.sharding.reshard(u, spec) if sharded else u


def _ns_coeffs_array(ns_coeffs: NsCoeffs, ns_steps: Any) -> jax.Array:
  """Coefficients as optax's Muon holds them: shape (3,) or the last ns_steps rows."""
  if isinstance(ns_coeffs, str):
    if ns_coeffs not in optax_muon._NS_COEFFS_PRESET_DICT:
      raise ValueError(f"Unknown ns_coeffs preset {ns_coeffs!r}.")
    ns_coeffs = optax_muon._NS_COEFFS_PRESET_DICT[ns_coeffs]
  coeffs = jnp.asarray(ns_coeffs, jnp.float32)
  if coeffs.ndim > 2 or coeffs.shape[-1] != 3:
    raise ValueError(f"ns_coeffs must have shape (3,) or (n, 3), got {coeffs.shape}.")
  if coeffs.ndim == 2:
    if coeffs.shape[0] < ns_steps:
      raise ValueError(f"Not enough ns_coeffs rows for ns_steps={ns_steps}.")
    coeffs = coeffs[-ns_steps:]
  return coeffs


def resolve_dimension_numbers(spec: DimNumsOrFn, updates: Any) -> Any:
  """One ``MuonDimensionNumbers`` per array leaf of ``updates`` (a full tree).

  ``spec`` is None (every leaf must be 2-D), a (prefix) tree of dimension
  numbers, or a callable on ``updates``. Masked-out leaves (``MaskedNode``, as
  inside ``optax.partition``) stay masked, so the result lines up with
  ``updates`` in ``jax.tree.map``.
  """
  if callable(spec):
    spec = spec(updates)

  def per_leaf(dims, x):
    if dims is None:
      if x.ndim != 2:
        raise ValueError(
          f"A leaf of shape {x.shape} is not a matrix: give it MuonDimensionNumbers "
          "(weight_dimension_numbers) or route it elsewhere (dualoptim_plus_muon does)."
        )
      return MuonDimensionNumbers()
    return dims

  def broadcast(dims, subtree):
    return jax.tree.map(lambda x: per_leaf(dims, x), subtree)

  if spec is None:
    return broadcast(None, updates)
  return jax.tree.map(
    broadcast,
    spec,
    updates,
    is_leaf=lambda x: x is None or _is_dims(x) or isinstance(x, _masking.MaskedNode),
  )


def scale_by_dualoptim_plus_muon(
  ns_coeffs: NsCoeffs = optax_muon._DEFAULT_NS_COEFFS,
  ns_steps: int = 5,
  beta: float | jax.Array = 0.95,
  base_beta: float | jax.Array = 0.95,
  eps: float | jax.Array = 1e-8,
  mu_dtype: Any | None = None,
  *,
  nesterov: bool = True,
  adaptive: bool = False,
  preconditioning: Literal["frobenius", "spectral", "aol", "schatten"] = "frobenius",
  weight_dimension_numbers: DimNumsOrFn = None,
  num_objectives: int = 2,
  forget_steps: int = 1,
  retain_steps: int = 1,
  run_lengths: Sequence[int] | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Orthogonalises DualOptim+'s combined (base + delta) momentum, as Muon does.

  .. math::
    \hat B_{t} = B_{t-1} / (1 - \beta_B^{T-1}), \quad
    D_o \leftarrow \beta D_o + (1 - \beta)(g - \hat B_t), \\
    u = \mathrm{NS}\big(D_o / (1 - \beta^{t_o}) + \hat B_t\big), \quad
    B_t = \beta_B B_{t-1} + (1 - \beta_B) g,

  with Nesterov look-ahead on the delta by default. ``base_beta=1`` freezes the
  base at zero: with one objective this is exactly ``optax.contrib.scale_by_muon``.

  The objective of a step is ``update(..., objective=o)`` (a Python int: one
  trace per objective; an int32 scalar array, traced is fine: one program), else
  the built-in alternation (``forget_steps`` of objective 0, then
  ``retain_steps`` of objective 1, ...). A traced objective outside ``[0, K)``
  yields NaN updates and leaves the state unchanged.

  Args:
    ns_coeffs: Newton-Schulz coefficients, shape (3,) or (n, 3), or an
      optax preset name (``"standard"``, ``"dion"``).
    ns_steps: number of Newton-Schulz iterations (a Python int).
    beta: decay of the delta momenta.
    base_beta: decay of the shared base momentum (1 disables the base).
    eps: Newton-Schulz normalisation epsilon.
    mu_dtype: storage dtype of the momenta (default: the parameter's dtype);
      arithmetic is float32 or wider.
    nesterov: Nesterov look-ahead on the delta momentum (as optax's Muon).
    adaptive: scale by the dual norm ``<m, u>`` (https://arxiv.org/abs/2409.20325).
    preconditioning: optax's pre-Newton-Schulz normalisation.
    weight_dimension_numbers: ``MuonDimensionNumbers`` per leaf (a tree, a
      prefix tree, or a callable on the updates); None: every leaf is 2-D.
    num_objectives: number of objectives ``K``.
    forget_steps, retain_steps: run lengths of the two-objective alternation.
    run_lengths: per-objective run lengths (overrides the two above; length K).

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Example:
    >>> import jax.numpy as jnp
    >>> import dualoptim_jax as do
    >>> tx = do.scale_by_dualoptim_plus_muon()
    >>> params = {"w": jnp.ones((3, 2))}
    >>> state = tx.init(params)
    >>> u, state = tx.update({"w": jnp.eye(3, 2)}, state, params, objective=do.FORGET)
    >>> u["w"].shape, int(state.objective_counts[do.FORGET])
    ((3, 2), 1)

  References:
    Jordan, `Muon <https://github.com/KellerJordan/Muon>`_, 2024.
  """
  lengths = base.run_lengths_from(forget_steps, retain_steps, run_lengths)
  if run_lengths is None and num_objectives != 2:
    raise ValueError(
      f"num_objectives={num_objectives} needs run_lengths (one per objective); "
      "forget_steps/retain_steps describe two objectives."
    )
  if len(lengths) != num_objectives:
    raise ValueError(
      f"run_lengths {lengths} has {len(lengths)} entries, expected {num_objectives}."
    )
  base.check_hyperparameter("beta", beta, low=0.0, high=1.0)
  base.check_hyperparameter("base_beta", base_beta, low=0.0, high=1.0, high_inclusive=True)
  base.check_hyperparameter("eps", eps, low=0.0)
  coeffs = _ns_coeffs_array(ns_coeffs, ns_steps)
  k_obj = num_objectives

  def init_fn(params):
    def zeros():
      return optax.tree.zeros_like(params, dtype=mu_dtype)

    return ScaleByDualOptimPlusMuonState(
      count=jnp.zeros([], jnp.int32),
      objective_counts=jnp.zeros([k_obj], jnp.int32),
      base_mu=zeros(),
      delta_mu=tuple(zeros() for _ in range(k_obj)),
    )

  def update_fn(updates, state, params=None, *, objective=None, **extra_args):
    del params, extra_args
    dp.check_tree_matches(updates, state.base_mu)
    dims = resolve_dimension_numbers(weight_dimension_numbers, updates)
    obj = base.resolve_objective(objective, state.count, lengths)
    valid = base.objective_is_valid(obj, k_obj)
    count, counts = dp.advance_counts(state.count, state.objective_counts, obj, valid)
    t = base.select_count(counts, obj)
    # The base's bias correction is 0 on the first step (the base is still 0)
    # and forever when base_beta == 1 (the base stays exactly 0): divide by 1.
    base_c = base.bias_correction(base_beta, count - 1)
    base_c = jnp.where((count == 1) | (base_c == 0), jnp.float32(1), base_c)
    c_t = _bias_correction(beta, t)
    c_next = _bias_correction(beta, optax.safe_increment(t))

    def leaf(g, bm, *rest):
      dms, dim_nums = rest[:k_obj], rest[k_obj]
      ct = dp.compute_dtype(g.dtype)
      g_ = g.astype(ct)
      bm_ = bm.astype(ct)
      bm_hat = bm_ / base_c.astype(ct)
      r = g_ - bm_hat
      dm = (1 - beta) * r + beta * dp.select_objective(obj, dms).astype(ct)
      if nesterov:
        m = beta * (dm / c_next.astype(ct)) + (1 - beta) * (r / c_t.astype(ct))
      else:
        m = dm / c_t.astype(ct)
      m = m + bm_hat
      u = _orthogonalize(m, coeffs, ns_steps, preconditioning, eps, dim_nums)
      if adaptive:
        u = jnp.sum(m.conj() * u) * u
      nbm = (1 - base_beta) * g_ + base_beta * bm_
      if not isinstance(valid, bool):
        u = jnp.where(valid, u, jnp.nan)
        nbm = jnp.where(valid, nbm, bm_)
      return (
        u.astype(g.dtype),
        nbm.astype(bm.dtype),
        dp.write_objective(obj, dms, dm.astype(dms[0].dtype)),
      )

    out = jax.tree.map(leaf, updates, state.base_mu, *state.delta_mu, dims)
    u, bm, dms = dp.unzip(updates, out, 3)
    return u, ScaleByDualOptimPlusMuonState(
      count=count,
      objective_counts=counts,
      base_mu=bm,
      delta_mu=dp.unzip(updates, dms, k_obj),
    )

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


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
      is_leaf=lambda x: x is None or _is_dims(x),
    )

  return labels


def dualoptim_plus_muon(
  learning_rate: optax.ScalarOrSchedule,
  *,
  forget_learning_rate: optax.ScalarOrSchedule | None = None,
  beta: float = 0.95,
  base_beta: float = 0.95,
  ns_coeffs: NsCoeffs = optax_muon._DEFAULT_NS_COEFFS,
  ns_steps: int = 5,
  eps: float = 1e-8,
  weight_decay: optax.ScalarOrSchedule = 0.0,
  mask: Any = None,
  forget_steps: int = 1,
  retain_steps: int = 1,
  mu_dtype: Any | None = None,
  nesterov: bool = True,
  adaptive: bool = False,
  preconditioning: Literal["frobenius", "spectral", "aol", "schatten"] = "frobenius",
  consistent_rms: float | None = 0.2,
  muon_weight_dimension_numbers: DimNumsOrFn = None,
  adam_learning_rate: optax.ScalarOrSchedule | None = None,
  adam_forget_learning_rate: optax.ScalarOrSchedule | None = None,
  adam_b1: float = 0.9,
  adam_b2: float = 0.95,
  adam_base_b1: float = 0.9,
  adam_base_b2: float = 0.95,
  adam_eps: float = 1e-8,
  adam_weight_decay: optax.ScalarOrSchedule | None = None,
  adam_bounded: bool = False,
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

  Args:
    learning_rate: the retain learning rate (float or schedule).
    forget_learning_rate: the forget learning rate; defaults to ``learning_rate``.
    beta: delta-momentum decay of the matrix leaves.
    base_beta: base-momentum decay of the matrix leaves (1 disables the base).
    ns_coeffs: Newton-Schulz coefficients or an optax preset name.
    ns_steps: Newton-Schulz iterations.
    eps: Newton-Schulz normalisation epsilon.
    weight_decay: decoupled weight decay of the matrix leaves (and of the
      others unless ``adam_weight_decay`` is given).
    mask: weight-decay mask (tree or callable, as in ``optax.adamw``), used by
      both partitions.
    forget_steps, retain_steps: the alternation schedule.
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
    adam_b1, adam_b2, adam_base_b1, adam_base_b2, adam_eps: their DualOptim+
      hyperparameters.
    adam_weight_decay: their weight decay (default ``weight_decay``).
    adam_bounded: their ``bounded`` safeguard.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import dualoptim_jax as do
    >>> tx = do.dualoptim_plus_muon(5e-2, forget_steps=1, retain_steps=3)
    >>> target = jnp.arange(6.0).reshape(3, 2)
    >>> params = {"w": jnp.zeros((3, 2)), "b": jnp.zeros(2)}
    >>> loss = lambda p: jnp.sum((p["w"] - target) ** 2) + jnp.sum((p["b"] - 1) ** 2)
    >>> state = tx.init(params)
    >>> for _ in range(300):
    ...   updates, state = tx.update(jax.grad(loss)(params), state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> bool(loss(params) < 0.05)
    True

  References:
    Jordan, `Muon <https://github.com/KellerJordan/Muon>`_, 2024.
    Liu et al., `Muon is Scalable for LLM Training
    <https://arxiv.org/abs/2502.16982>`_, 2025.
  """
  if adam_forget_learning_rate is None:
    adam_forget_learning_rate = (
      forget_learning_rate if adam_learning_rate is None else adam_learning_rate
    )
  if adam_learning_rate is None:
    adam_learning_rate = learning_rate
  if adam_weight_decay is None:
    adam_weight_decay = weight_decay
  labels = _labels_fn(muon_weight_dimension_numbers)

  # Inside the partition the other leaves are MaskedNode; resolving against the
  # masked updates drops their entries so the trees line up.
  dims_fn = functools.partial(resolve_dimension_numbers, muon_weight_dimension_numbers)

  return optax.partition(
    {
      _MUON: optax.chain(
        scale_by_dualoptim_plus_muon(
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
          forget_steps=forget_steps,
          retain_steps=retain_steps,
        ),
        optax_muon.scale_by_shape(dims_fn, consistent_rms),
        *decay_and_learning_rate(
          learning_rate, forget_learning_rate, weight_decay, mask, forget_steps, retain_steps
        ),
      ),
      _ADAM: dualoptim_plus(
        adam_learning_rate,
        forget_learning_rate=adam_forget_learning_rate,
        b1=adam_b1,
        b2=adam_b2,
        base_b1=adam_base_b1,
        base_b2=adam_base_b2,
        eps=adam_eps,
        weight_decay=adam_weight_decay,
        mask=mask,
        forget_steps=forget_steps,
        retain_steps=retain_steps,
        bounded=adam_bounded,
        mu_dtype=mu_dtype,
      ),
    },
    labels,
  )
