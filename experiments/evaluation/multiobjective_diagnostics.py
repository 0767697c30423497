"""Conflict diagnostics of K objectives: gradient cosines and DualOptim+ delta cosines / base share.

``dualoptim_jax.conflict_metrics`` reads the pair (0, 1) of a float32
DualOptim+ state; with K objectives (and 8-bit or Muon states) the pairwise
version is computed here from the state found in the optimizer state:
``dequantize_dualoptim_plus_state`` decodes an 8-bit one, and the Muon
partition's two states (matrices, other leaves) are pooled. A candidate for
the library.

How to read them. The base tracks the mean of the objectives' gradients and
each delta the residual of its objective against it, so for K objectives
whose (momentum) gradients have equal norms and any common pairwise cosine
``rho``, every delta cosine is ``-1/(K-1)`` (-1 for two objectives, -0.5 for
three) *whatever* ``rho`` is: the delta cosine measures the construction, not
the conflict. The base share does depend on it:
``sqrt(1+(K-1) rho) / (sqrt(1+(K-1) rho) + sqrt((K-1)(1-rho)))``, 0.5 for
two orthogonal objectives, 0.41 for three, 1 for identical ones and 0 for
exactly opposed ones. The gradient cosines on fixed probe batches measure the
conflict directly (noisier: single batches).
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp

import dualoptim_jax

MUON_DECAYS = (0.95, 0.95)  # dualoptim_plus_muon's default (beta, base_beta), which the jobs keep
ADAM_DECAYS = (0.9, 0.9)  # (b1, base_b1) of the jobs' DualOptim+ (the recipe's b1 and the default)


def _flat_dot(a, b) -> jax.Array:
  return sum(
    (jnp.sum(x * y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)),
    jnp.float32(0),
  )


def dot_matrix(vectors: list) -> jax.Array:
  """``(K, K)`` dot products of K pytrees of the same structure (all leaves together)."""
  k = len(vectors)
  return jnp.stack(
    [jnp.stack([_flat_dot(vectors[i], vectors[j]) for j in range(k)]) for i in range(k)]
  )


def cosine_matrix(vectors: list) -> jax.Array:
  """``(K, K)`` cosines between K pytrees of the same structure.

  Example:
    >>> m = cosine_matrix([{"a": jnp.array([1.0, 0.0])}, {"a": jnp.array([-1.0, 0.0])}])
    >>> m.tolist()
    [[1.0, -1.0], [-1.0, 1.0]]
  """
  dots = dot_matrix(vectors)
  norms = jnp.sqrt(jnp.diagonal(dots))
  return dots / jnp.maximum(norms[:, None] * norms[None, :], jnp.float32(1e-30))


def _plus_states(state) -> list[tuple[object, float, float]]:
  """The DualOptim+ moment states in ``state`` (8-bit decoded) with their (b1, base_b1)."""
  is_8bit = lambda x: isinstance(x, dualoptim_jax.ScaleByDualOptimPlus8bitState)  # noqa: E731
  if any(is_8bit(s) for s in jax.tree.leaves(state, is_leaf=is_8bit)):
    return [(dualoptim_jax.dequantize_dualoptim_plus_state(state), *ADAM_DECAYS)]
  match = lambda x: hasattr(x, "delta_mu") and hasattr(x, "base_mu")  # noqa: E731
  out = []
  for s in jax.tree.leaves(state, is_leaf=match):
    if match(s):
      muon = isinstance(s, dualoptim_jax.ScaleByDualOptimPlusMuonState)
      out.append((s, *(MUON_DECAYS if muon else ADAM_DECAYS)))
  return out


def _correction(decay: float, count: jax.Array) -> jax.Array:
  """Adam's bias correction ``1 - decay**count`` (1 before the first update)."""
  t = count.astype(jnp.float32)
  return jnp.where(t > 0, 1.0 - jnp.float32(decay) ** t, jnp.float32(1.0))


def is_plus(opt_state) -> bool:
  """Whether the optimizer state holds DualOptim+ base and delta moments."""
  return bool(_plus_states(opt_state))


def delta_conflict(opt_state) -> dict[str, jax.Array]:
  """Pairwise cosines of the objectives' first-moment deltas and each one's base share.

  Moments are bias-corrected as in ``dualoptim_jax.conflict_metrics`` (whose
  ``delta_cosine`` is entry ``[0, 1]`` here); the states of a partitioned
  optimizer (Muon matrices + DualOptim+ elsewhere) are pooled.

  Returns:
    ``{"delta_cosine": (K, K), "base_share": (K,)}``.
  """
  dms, bms = None, []
  for st, b1, base_b1 in _plus_states(opt_state):
    k = len(st.delta_mu)
    c = [_correction(b1, st.objective_counts[o]) for o in range(k)]
    base_c = _correction(base_b1, st.count)
    scaled = [
      jax.tree.map(lambda x, c=c[o]: x.astype(jnp.float32) / c, st.delta_mu[o]) for o in range(k)
    ]
    dms = scaled if dms is None else [{"a": a, "b": b} for a, b in zip(dms, scaled, strict=True)]
    bms.append(jax.tree.map(lambda x, c=base_c: x.astype(jnp.float32) / c, st.base_mu))
  cos = cosine_matrix(dms)
  base_norm = jnp.sqrt(sum(_flat_dot(b, b) for b in bms))
  delta_norm = jnp.sqrt(jnp.diagonal(dot_matrix(dms)))
  share = base_norm / jnp.maximum(base_norm + delta_norm, jnp.float32(1e-30))
  return {"delta_cosine": cos, "base_share": share}


def pairs_of(names: tuple[str, ...]) -> list[tuple[int, int, str]]:
  """``(i, j, "a/b")`` for every unordered pair of objective names."""
  return [(i, j, f"{names[i]}/{names[j]}") for i, j in itertools.combinations(range(len(names)), 2)]
