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

import numbers
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax
from optax.contrib import MuonDimensionNumbers

# optax exports Muon's building blocks only through its private module; we reuse
# them rather than keep a second copy of the iteration and its scaling rules.
from optax.contrib import _muon as optax_muon

from dualoptim_jax._src import base
from dualoptim_jax._src import dualoptim_plus as dp

DEFAULT_NS_STEPS = 5
NsCoeffs = tuple[float, float, float] | Sequence[tuple[float, float, float]] | str
DimNumsOrFn = MuonDimensionNumbers | Any | Callable[[Any], Any] | None


class ScaleByDualOptimPlusMuonState(NamedTuple):
  """State of :func:`scale_by_dualoptim_plus_muon`."""

  count: jax.Array  # shape=(), dtype=int32: global step count T.
  objective_counts: jax.Array  # shape=(K,), dtype=int32: per-objective counts t_o.
  base_mu: optax.Updates  # shared momentum Bm, fed the raw gradient every step.
  delta_mu: tuple[optax.Updates, ...]  # per-objective momenta Dm_o of the residual g - Bm_hat.


def is_dimension_numbers(x: Any) -> bool:
  """Whether ``x`` is a ``MuonDimensionNumbers`` (a leaf of a dimension-number tree)."""
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


def _one_minus(x: Any, dtype: Any) -> jax.Array:
  """``1 - x`` in ``dtype``: in double precision first for a Python number."""
  if isinstance(x, numbers.Real):
    return jnp.asarray(1 - x, dtype)
  return 1 - jnp.asarray(x, dtype)


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
  numbers whose None entries mean "2-D, default axes", or a callable on
  ``updates`` returning one. Masked-out leaves (``MaskedNode``, as
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
    is_leaf=lambda x: x is None or is_dimension_numbers(x) or isinstance(x, optax.MaskedNode),
  )


def scale_by_dualoptim_plus_muon(
  ns_coeffs: NsCoeffs = optax_muon._DEFAULT_NS_COEFFS,
  ns_steps: int | None = None,
  beta: float | jax.Array = 0.95,
  base_beta: float | jax.Array = 0.95,
  eps: float | jax.Array = 1e-8,
  mu_dtype: Any | None = None,
  *,
  nesterov: bool = True,
  adaptive: bool = False,
  preconditioning: Literal["frobenius", "spectral", "aol", "schatten"] = "frobenius",
  weight_dimension_numbers: DimNumsOrFn = None,
  num_objectives: int | None = None,
  forget_steps: int | jax.Array = 1,
  retain_steps: int | jax.Array = 1,
  run_lengths: Sequence[int | jax.Array] | None = None,
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
    ns_steps: number of Newton-Schulz iterations (default 5). Static: it
      shapes the program, and its None default keeps ``optax.inject_hyperparams``
      from turning it into an array (passed explicitly through it, list it in
      ``static_args``).
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
    num_objectives: number of objectives ``K`` (default: ``len(run_lengths)``,
      else 2; static).
    forget_steps, retain_steps: run lengths of the two-objective alternation
      (ints, or integer scalar arrays: traced values work, e.g. under
      ``optax.inject_hyperparams``).
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
  lengths = base.objective_run_lengths(num_objectives, forget_steps, retain_steps, run_lengths)
  base.check_hyperparameter("beta", beta, low=0.0, high=1.0)
  base.check_hyperparameter("base_beta", base_beta, low=0.0, high=1.0, high_inclusive=True)
  base.check_hyperparameter("eps", eps, low=0.0)
  ns_steps = base.static_int("ns_steps", ns_steps, DEFAULT_NS_STEPS)
  coeffs = _ns_coeffs_array(ns_coeffs, ns_steps)
  k_obj = len(lengths)
  mu_dtype = base.storage_dtype("mu_dtype", mu_dtype)

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
      # Hyperparameters in the compute dtype (optax.inject_hyperparams stores
      # them in the params' dtype, bf16 for bf16 params); 1 - beta of a Python
      # float in double precision, as optax's Muon rounds it (bit-exact test).
      beta_, base_beta_, eps_ = (jnp.asarray(x, ct) for x in (beta, base_beta, eps))
      one_minus_beta = _one_minus(beta, ct)
      one_minus_base_beta = _one_minus(base_beta, ct)
      g_ = g.astype(ct)
      bm_ = bm.astype(ct)
      bm_hat = bm_ / base_c.astype(ct)
      r = g_ - bm_hat
      dm = one_minus_beta * r + beta_ * dp.select_objective(obj, dms).astype(ct)
      if nesterov:
        m = beta_ * (dm / c_next.astype(ct)) + one_minus_beta * (r / c_t.astype(ct))
      else:
        m = dm / c_t.astype(ct)
      m = m + bm_hat
      u = _orthogonalize(m, coeffs, ns_steps, preconditioning, eps_, dim_nums)
      if adaptive:
        u = jnp.sum(m.conj() * u) * u
      nbm = one_minus_base_beta * g_ + base_beta_ * bm_
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
