"""Directional-conflict metrics read from a DualOptim+ state, for logging."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from dualoptim_jax._src import base
from dualoptim_jax._src.dualoptim_plus import ScaleByDualOptimPlusState


def find_dualoptim_plus_state(state: Any) -> ScaleByDualOptimPlusState:
  """Finds the (single) DualOptim+ moment state inside a possibly nested optax state.

  Works through ``optax.chain``, ``inject_hyperparams``, ``MultiSteps``,
  ``masked`` and ``nnx.Optimizer`` states (any container JAX can flatten).

  Raises:
    ValueError: when there is no such state, or more than one.
  """
  return base.find_state(
    state, lambda x: hasattr(x, "delta_mu") and hasattr(x, "base_mu"), "DualOptim+ state"
  )


def _float(x: Any) -> jax.Array:
  return getattr(x, "value", x).astype(jnp.float32) if hasattr(x, "astype") else x


def conflict_metrics(
  state: Any,
  *,
  b1: float = 0.9,
  base_b1: float = 0.9,
  per_leaf: bool = False,
  decode: Any = None,
) -> dict[str, Any]:
  """Directional conflict between objectives and the base's share of the update.

  * ``delta_cosine``: cosine similarity between the first-moment deltas of
    objectives 0 and 1 (forget and retain). Negative: the objectives pull apart,
    and DualOptim+ keeps those directions out of the shared base.
  * ``base_share``: per objective ``o``, ``|Bm_hat| / (|Bm_hat| + |Dm_o_hat|)``
    with bias-corrected moments: 1 when the base carries the whole first moment
    of that objective's next step, 0 when its delta does.

  Norms and dot products are over all leaves together (``per_leaf=False``) or
  per leaf (``per_leaf=True``: each value a tree shaped like the params).

  Args:
    state: an optax state containing one DualOptim+ state (any nesting).
    b1, base_b1: the delta and base first-moment decays the state was built with.
    per_leaf: return per-leaf trees instead of global scalars.
    decode: maps a stored moment leaf to a float array (for quantized states);
      by default leaves are cast to float32.

  Returns:
    ``{"delta_cosine": ..., "base_share": ...}``; ``base_share`` has one entry per
    objective (last axis, shape ``(K,)``).

  Example:
    >>> import jax.numpy as jnp, dualoptim_jax as do
    >>> tx = do.dualoptim_plus(1e-3)
    >>> p = {"w": jnp.ones(4)}
    >>> s = tx.init(p)
    >>> _, s = tx.update({"w": jnp.array([1.0, 2.0, 3.0, 4.0])}, s, p, objective=do.FORGET)
    >>> _, s = tx.update({"w": jnp.array([-1.0, -2.0, -3.0, -4.0])}, s, p, objective=do.RETAIN)
    >>> round(float(do.conflict_metrics(s)["delta_cosine"]), 3)
    -1.0
  """
  st = find_dualoptim_plus_state(state)
  decode = decode or _float
  k = len(st.delta_mu)
  t = st.objective_counts
  base_c = jnp.where(st.count > 0, base.bias_correction(base_b1, st.count), 1.0)
  delta_c = [jnp.where(t[o] > 0, base.bias_correction(b1, t[o]), 1.0) for o in range(k)]

  bm = jax.tree.map(lambda x: decode(x) / base_c, st.base_mu)
  dms = [jax.tree.map(lambda x, c=delta_c[o]: decode(x) / c, st.delta_mu[o]) for o in range(k)]

  def sq(x):
    return jnp.sum(x * x)

  def reduce(fn, *trees):
    per = jax.tree.map(fn, *trees)
    return per if per_leaf else sum(jax.tree.leaves(per), jnp.float32(0))

  tiny = jnp.float32(1e-30)
  dot = reduce(lambda a, b: jnp.sum(a * b), dms[0], dms[min(1, k - 1)])
  n0 = reduce(sq, dms[0])
  n1 = reduce(sq, dms[min(1, k - 1)])
  cos = jax.tree.map(lambda d, a, b: d / jnp.maximum(jnp.sqrt(a * b), tiny), dot, n0, n1)
  nb = reduce(sq, bm)
  shares = []
  for o in range(k):
    nd = reduce(sq, dms[o])
    shares.append(
      jax.tree.map(
        lambda b_, d_: jnp.sqrt(b_) / jnp.maximum(jnp.sqrt(b_) + jnp.sqrt(d_), tiny), nb, nd
      )
    )
  share = jax.tree.map(lambda *xs: jnp.stack(xs, axis=-1), *shares)
  return {"delta_cosine": cos, "base_share": share}
