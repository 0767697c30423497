"""DualOptim (NeurIPS'25): an independent Adam moment pair per objective.

Only the active objective's moments are updated and used; each objective keeps
its own bias-correction count, so a retain run does not dilute the forget
moments (and vice versa)::

  m_o <- b1 * m_o + (1 - b1) * g        v_o <- b2 * v_o + (1 - b2) * g * g
  u = (m_o / (1 - b1**t_o)) / (sqrt(v_o / (1 - b2**t_o)) + eps)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from dualoptim_jax._src import base
from dualoptim_jax._src.dualoptim_plus import (
  advance_counts,
  check_tree_matches,
  compute_dtype,
  select_objective,
  unzip,
  write_objective,
)
from dualoptim_jax._src.ordering import rewrite_active


class ScaleByDualOptimState(NamedTuple):
  """State of :func:`scale_by_dualoptim`."""

  count: jax.Array  # shape=(), dtype=int32: global step count.
  objective_counts: jax.Array  # shape=(K,), dtype=int32: per-objective counts t_o.
  mu: tuple[optax.Updates, ...]  # per-objective first moments m_o.
  nu: tuple[optax.Updates, ...]  # per-objective second moments v_o.


def scale_by_dualoptim(
  b1: float | jax.Array = 0.9,
  b2: float | jax.Array = 0.95,
  eps: float | jax.Array = 1e-8,
  *,
  num_objectives: int | None = None,
  forget_steps: int | jax.Array = 1,
  retain_steps: int | jax.Array = 1,
  run_lengths: Sequence[int | jax.Array] | None = None,
  mu_dtype: Any | None = None,
  nu_dtype: Any | None = None,
) -> optax.GradientTransformationExtraArgs:
  """Rescales updates with DualOptim: one Adam state per objective.

  The objective of a step is chosen exactly as in
  :func:`scale_by_dualoptim_plus` (``objective=`` keyword or the built-in
  alternation; a traced out-of-range objective gives NaN updates and an
  unchanged state, a Python one raises ``ValueError``).

  Args:
    b1, b2: Adam decays of every objective's moments.
    eps: added to the denominator.
    num_objectives: number of objectives ``K`` (default: ``len(run_lengths)``,
      else 2; static).
    forget_steps, retain_steps: run lengths of the two-objective alternation
      (ints, or integer scalar arrays: traced values work, e.g. under
      ``optax.inject_hyperparams``).
    run_lengths: per-objective run lengths (overrides the two above; length K).
    mu_dtype, nu_dtype: storage dtypes of the moments (default: param dtype).

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Example:
    >>> import jax.numpy as jnp
    >>> import dualoptim_jax as do
    >>> tx = do.scale_by_dualoptim()
    >>> params = {"w": jnp.ones(2)}
    >>> state = tx.init(params)
    >>> u, state = tx.update({"w": jnp.array([0.5, -2.0])}, state, params, objective=do.RETAIN)
    >>> [round(float(x), 4) for x in u["w"]]
    [1.0, -1.0]
  """
  lengths = base.objective_run_lengths(num_objectives, forget_steps, retain_steps, run_lengths)
  base.check_decays(eps, b1=b1, b2=b2)
  k_obj = len(lengths)
  mu_dtype = base.storage_dtype("mu_dtype", mu_dtype)
  nu_dtype = base.storage_dtype("nu_dtype", nu_dtype)

  def init_fn(params):
    return ScaleByDualOptimState(
      count=jnp.zeros([], jnp.int32),
      objective_counts=jnp.zeros([k_obj], jnp.int32),
      mu=tuple(optax.tree.zeros_like(params, dtype=mu_dtype) for _ in range(k_obj)),
      nu=tuple(optax.tree.zeros_like(params, dtype=nu_dtype) for _ in range(k_obj)),
    )

  def update_fn(updates, state, params=None, *, objective=None, **extra_args):
    del params, extra_args
    check_tree_matches(updates, state.mu[0])
    obj = base.resolve_objective(objective, state.count, lengths)
    valid = base.objective_is_valid(obj, k_obj)
    count, counts = advance_counts(state.count, state.objective_counts, obj, valid)
    t = base.select_count(counts, obj)
    c1 = base.bias_correction(b1, t)
    c2 = base.bias_correction(b2, t)
    f32 = jnp.float32
    b1_, b2_, eps_ = jnp.asarray(b1, f32), jnp.asarray(b2, f32), jnp.asarray(eps, f32)

    def leaf(g, *moments):
      mus, nus = moments[:k_obj], moments[k_obj:]
      ct = compute_dtype(g.dtype)

      # g is converted where it is used: one conversion shared with the
      # traced path's conds would be materialised as a full-size temporary.
      def new_m(mu):
        return b1_ * mu.astype(ct) + (1 - b1_) * g.astype(ct)

      def new_v(nu):
        gc = g.astype(ct)
        return b2_ * nu.astype(ct) + (1 - b2_) * (gc * gc)

      def direction(m, v):
        return (m / c1) / (jnp.sqrt(v / c2) + eps_)

      if isinstance(obj, int):
        m = new_m(mus[obj])
        v = new_v(nus[obj])
        u = direction(m, v).astype(g.dtype)
        return (
          u,
          write_objective(obj, mus, m.astype(mus[0].dtype)),
          write_objective(obj, nus, v.astype(nus[0].dtype)),
        )

      # Traced objective: only the active moments are rewritten, in place
      # (ordering.rewrite_active), and u reads their new values.
      def step(carry):
        mu, nu = carry
        return new_m(mu).astype(mu.dtype), new_v(nu).astype(nu.dtype)

      pairs = list(zip(mus, nus, strict=True))
      new_mus, new_nus = zip(*rewrite_active(obj, valid, pairs, step), strict=True)
      m = select_objective(obj, new_mus).astype(ct)
      v = select_objective(obj, new_nus).astype(ct)
      u = jnp.where(valid, direction(m, v), jnp.nan).astype(g.dtype)
      return u, tuple(new_mus), tuple(new_nus)

    out = jax.tree.map(leaf, updates, *state.mu, *state.nu)
    u, mus, nus = unzip(updates, out, 3)
    return u, ScaleByDualOptimState(
      count=count,
      objective_counts=counts,
      mu=unzip(updates, mus, k_obj),
      nu=unzip(updates, nus, k_obj),
    )

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
