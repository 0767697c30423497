"""DualOptim (one Adam state per objective) with 8-bit blockwise moments.

The storage follows :mod:`dualoptim_plus_8bit`: ``m_o`` in the signed map,
``v_o`` in the unsigned map (it is never negative), parameter-shaped codes and
``(*p.shape[:-1], blocks)`` scales, float32 for small or excluded leaves. With
one objective (``run_lengths=(1,)``) this is plain Adam with 8-bit moments,
which :func:`adamw_8bit` uses as a baseline.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from dualoptim_jax._src import base
from dualoptim_jax._src.dualoptim_plus import (
  advance_counts,
  check_tree_matches,
  unzip,
)
from dualoptim_jax._src.dualoptim_plus_8bit import KeepFp32, make_codec
from dualoptim_jax._src.row_chunks import (
  compute_once,
  map_row_chunks,
  update_active,
  written_after,
)


class ScaleByDualOptim8bitState(NamedTuple):
  """State of :func:`scale_by_dualoptim_8bit`."""

  count: jax.Array  # shape=(), dtype=int32: global step count.
  objective_counts: jax.Array  # shape=(K,), dtype=int32: per-objective counts t_o.
  mu_codes: tuple[optax.Updates, ...]  # m_o per objective: int8 codes or float32.
  mu_scales: tuple[optax.Updates, ...]  # m_o per objective: block absmaxes (MaskedNode if float).
  nu_codes: tuple[optax.Updates, ...]  # v_o per objective: uint8 codes or float32.
  nu_scales: tuple[optax.Updates, ...]  # v_o per objective: block absmaxes (MaskedNode if float).


def scale_by_dualoptim_8bit(
  b1: float | jax.Array = 0.9,
  b2: float | jax.Array = 0.95,
  eps: float | jax.Array = 1e-8,
  *,
  num_objectives: int | None = None,
  forget_steps: int | jax.Array = 1,
  retain_steps: int | jax.Array = 1,
  run_lengths: Sequence[int | jax.Array] | None = None,
  block_size: int | None = None,
  min_8bit_size: int | None = None,
  keep_fp32: KeepFp32 = None,
) -> optax.GradientTransformationExtraArgs:
  """DualOptim (:func:`scale_by_dualoptim`) with 8-bit blockwise moments.

  Args:
    b1, b2: Adam decays of every objective's moments.
    eps: added to the denominator.
    num_objectives: number of objectives ``K`` (default: ``len(run_lengths)``,
      else 2; static).
    forget_steps, retain_steps: run lengths of the two-objective alternation
      (ints, or integer scalar arrays: traced values work, e.g. under
      ``optax.inject_hyperparams``).
    run_lengths: per-objective run lengths (overrides the two above; length K).
    block_size: elements per quantization block along each leaf's last axis
      (default 256; static).
    min_8bit_size: leaves with fewer elements keep float32 moments (default
      4096; static).
    keep_fp32: leaves to keep in float32 (predicate on ``(path, param)`` or
      substrings of ``jax.tree_util.keystr(path)``).

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Example:
    >>> import jax.numpy as jnp
    >>> import dualoptim_jax as do
    >>> tx = do.scale_by_dualoptim_8bit(min_8bit_size=4)
    >>> params = {"w": jnp.ones((2, 4))}
    >>> state = tx.init(params)
    >>> u, state = tx.update({"w": jnp.full((2, 4), -2.0)}, state, params, objective=do.RETAIN)
    >>> round(float(u["w"][0, 0]), 4), state.nu_codes[1]["w"].dtype
    (-1.0, dtype('uint8'))
  """
  lengths = base.objective_run_lengths(num_objectives, forget_steps, retain_steps, run_lengths)
  base.check_decays(eps, b1=b1, b2=b2)
  codec = make_codec(block_size, min_8bit_size, keep_fp32)
  k_obj = len(lengths)

  def init_fn(params):
    mus = [codec.init(params, signed=True, quantize=True) for _ in range(k_obj)]
    nus = [codec.init(params, signed=False, quantize=True) for _ in range(k_obj)]
    return ScaleByDualOptim8bitState(
      count=jnp.zeros([], jnp.int32),
      objective_counts=jnp.zeros([k_obj], jnp.int32),
      mu_codes=tuple(c for c, _ in mus),
      mu_scales=tuple(s for _, s in mus),
      nu_codes=tuple(c for c, _ in nus),
      nu_scales=tuple(s for _, s in nus),
    )

  def update_fn(updates, state, params=None, *, objective=None, **extra_args):
    del params, extra_args
    check_tree_matches(updates, state.mu_codes[0])
    obj = base.resolve_objective(objective, state.count, lengths)
    valid = base.objective_is_valid(obj, k_obj)
    count, counts = advance_counts(state.count, state.objective_counts, obj, valid)
    t = base.select_count(counts, obj)
    c1 = base.bias_correction(b1, t)
    c2 = base.bias_correction(b2, t)
    f32 = jnp.float32
    b1_, b2_, eps_ = jnp.asarray(b1, f32), jnp.asarray(b2, f32), jnp.asarray(eps, f32)

    def core(g, m_c, m_s, v_c, v_s):
      gc = g.astype(f32)
      m = b1_ * codec.decode(m_c, m_s) + (1 - b1_) * gc
      v = b2_ * codec.decode(v_c, v_s) + (1 - b2_) * (gc * gc)
      m, v = compute_once((m, v), count)
      u = (m / c1) / (jnp.sqrt(v / c2) + eps_)
      new = (*codec.encode(m, m_c, m_s), *codec.encode(v, v_c, v_s))
      return (u.astype(g.dtype), *written_after(u, new))

    def step(g, shared, own, u_out=None):
      u, *new = map_row_chunks(core, (g, *own), u_out)
      return u, shared, tuple(new)

    def leaf(g, *moments):
      m_c, m_s, v_c, v_s = (moments[i * k_obj : (i + 1) * k_obj] for i in range(4))
      own = [
        (m_c[k], codec.open_scales(m_c[k], m_s[k]), v_c[k], codec.open_scales(v_c[k], v_s[k]))
        for k in range(k_obj)
      ]
      u, _, own = update_active(obj, valid, g, (), own, step)
      new_m_c, new_m_s, new_v_c, new_v_s = (tuple(o[i] for o in own) for i in range(4))
      return (
        u,
        new_m_c,
        tuple(map(codec.close_scales, new_m_s, m_s)),
        new_v_c,
        tuple(map(codec.close_scales, new_v_s, v_s)),
      )

    out = jax.tree.map(
      leaf, updates, *state.mu_codes, *state.mu_scales, *state.nu_codes, *state.nu_scales
    )
    u, m_c, m_s, v_c, v_s = unzip(updates, out, 5)
    return u, ScaleByDualOptim8bitState(
      count=count,
      objective_counts=counts,
      mu_codes=unzip(updates, m_c, k_obj),
      mu_scales=unzip(updates, m_s, k_obj),
      nu_codes=unzip(updates, v_c, k_obj),
      nu_scales=unzip(updates, v_s, k_obj),
    )

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
