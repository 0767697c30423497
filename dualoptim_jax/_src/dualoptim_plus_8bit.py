"""DualOptim+ with 8-bit moments (blockwise dynamic quantization, parameter-shaped).

Every quantized moment is two parallel trees built by one ``jax.tree.map``
over the params each, so a PartitionSpec that fits a parameter fits both:

* ``*_codes``: int8 (signed map) or uint8 (unsigned map) with the parameter's
  shape;
* ``*_scales``: float32 per-block absmax, shape
  ``(*p.shape[:-1], ceil(p.shape[-1] / block_size))``.

Leaves kept in float32 (fewer than ``min_8bit_size`` elements, excluded by
``keep_fp32``, or a moment kind left unquantized) store the float32 moment in
the ``*_codes`` tree and ``optax.MaskedNode()`` (no array at all, as
``optax.masked`` marks a leaf it holds no state for) in the ``*_scales`` tree.
Every checkpointer saves that: orbax refuses zero-size arrays. The codes'
dtype tells the update which case a leaf is.

The signed map stores ``Bm``, ``Dm_o`` and ``Dv_o`` (second-moment residuals
can be negative); the unsigned map stores ``Bv``. Each step decodes the base
and the active objective's deltas, applies :func:`plus_step` in float32 and
re-encodes with fresh block absmaxes, as bitsandbytes' 8-bit optimizers do.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from dualoptim_jax._src import base
from dualoptim_jax._src import quantization as quant
from dualoptim_jax._src.dualoptim_plus import (
  ScaleByDualOptimPlusState,
  advance_counts,
  check_tree_matches,
  plus_coefficients,
  plus_step,
  unzip,
)
from dualoptim_jax._src.row_chunks import (
  compute_once,
  map_row_chunks,
  update_active,
  written_after,
)

KeepFp32 = Callable[[Any, Any], bool] | str | Sequence[str] | None


class ScaleByDualOptimPlus8bitState(NamedTuple):
  """State of :func:`scale_by_dualoptim_plus_8bit` (see the module docstring for the layout)."""

  count: jax.Array  # shape=(), dtype=int32: global step count T.
  objective_counts: jax.Array  # shape=(K,), dtype=int32: per-objective counts t_o.
  base_mu_codes: optax.Updates  # Bm: int8 codes (signed map) or float32.
  base_mu_scales: optax.Updates  # Bm: float32 block absmaxes (MaskedNode if float32).
  base_nu_codes: optax.Updates  # Bv: uint8 codes (unsigned map) or float32.
  base_nu_scales: optax.Updates  # Bv: float32 block absmaxes (MaskedNode if float32).
  delta_mu_codes: tuple[optax.Updates, ...]  # Dm_o per objective: int8 codes or float32.
  delta_mu_scales: tuple[optax.Updates, ...]  # Dm_o per objective: block absmaxes.
  delta_nu_codes: tuple[optax.Updates, ...]  # Dv_o per objective: int8 codes or float32.
  delta_nu_scales: tuple[optax.Updates, ...]  # Dv_o per objective: block absmaxes.


def keep_fp32_predicate(keep_fp32: KeepFp32) -> Callable[[Any, Any], bool]:
  """Normalises ``keep_fp32`` (predicate, name or names) to a ``(path, param) -> bool``.

  Strings match as substrings of ``jax.tree_util.keystr(path)``, e.g.
  ``"embed"`` matches ``['embed']['embedding']``.
  """
  if keep_fp32 is None:
    return lambda path, p: False
  if callable(keep_fp32):
    return keep_fp32
  names = (keep_fp32,) if isinstance(keep_fp32, str) else tuple(keep_fp32)
  return lambda path, p: any(n in jax.tree_util.keystr(path) for n in names)


def explicit_sharding(p: Any) -> Any:
  """``p``'s sharding when it is sharded over explicit mesh axes, else None.

  Scales have the parameter's rank, so the parameter's spec shards them too
  (``*_like`` constructors cannot be used: the shapes differ).
  """
  try:
    sharding = jax.typeof(p).sharding
  except TypeError:  # not an array (e.g. a ShapeDtypeStruct without sharding)
    return None
  mesh = getattr(sharding, "mesh", None)
  if mesh is None or mesh.empty or jax.sharding.AxisType.Explicit not in mesh.axis_types:
    return None
  return sharding


class MomentCodec(NamedTuple):
  """How one optimizer stores its moments: which leaves are 8-bit, and the block size."""

  block_size: int
  min_8bit_size: int
  keep_fp32: Callable[[Any, Any], bool]

  def wants_8bit(self, path: Any, p: Any) -> bool:
    return p.ndim >= 1 and p.size >= self.min_8bit_size and not self.keep_fp32(path, p)

  def init(self, params: Any, *, signed: bool, quantize: bool) -> tuple[Any, Any]:
    """Zero moments as ``(codes, scales)``: one ``jax.tree.map`` over ``params`` each."""

    def codes(path, p):
      # ``*_like`` keeps a concrete parameter's sharding.
      if quantize and self.wants_8bit(path, p):
        return jnp.full_like(p, quant.zero_code(signed), quant.code_dtype(signed))
      return jnp.zeros_like(p, jnp.float32)

    def scales(path, p):
      if not (quantize and self.wants_8bit(path, p)):
        return optax.MaskedNode()
      shape = quant.scales_shape(p.shape, self.block_size)
      return jnp.zeros(shape, jnp.float32, out_sharding=explicit_sharding(p))

    return (
      jax.tree_util.tree_map_with_path(codes, params),
      jax.tree_util.tree_map_with_path(scales, params),
    )

  @staticmethod
  def open_scales(codes: jax.Array, scales: Any) -> jax.Array:
    """A leaf's scales inside the update: a zero-size stand-in where none are stored.

    The update's code paths (row chunks, conds, selects) then treat every leaf
    alike; :meth:`close_scales` drops the stand-in again.
    """
    if not isinstance(scales, optax.MaskedNode):
      return scales
    shape = (*codes.shape[:-1], 0) if codes.ndim else ()
    return jnp.zeros(shape, jnp.float32, out_sharding=explicit_sharding(codes))

  @staticmethod
  def close_scales(new: jax.Array, old: Any) -> Any:
    """The scales to store: ``MaskedNode`` again where the state held one."""
    return old if isinstance(old, optax.MaskedNode) else new

  def decode(self, codes: jax.Array, scales: jax.Array) -> jax.Array:
    """The float32 moment of one stored leaf."""
    if quant.is_codes(codes):
      q = quant.QuantizedArray(codes, scales)
      return quant.dequantize_blockwise(q, block_size=self.block_size)
    return codes.astype(jnp.float32)

  def encode(
    self, x: jax.Array, codes: jax.Array, scales: jax.Array
  ) -> tuple[jax.Array, jax.Array]:
    """Stores float32 ``x`` in the form of the leaf ``(codes, scales)`` it replaces."""
    if quant.is_codes(codes):
      q = quant.quantize_blockwise(x, signed=codes.dtype == jnp.int8, block_size=self.block_size)
      return q.codes, q.scales
    return x.astype(codes.dtype), scales


def scale_by_dualoptim_plus_8bit(
  b1: float | jax.Array = 0.9,
  b2: float | jax.Array = 0.95,
  base_b1: float | jax.Array = 0.9,
  base_b2: float | jax.Array = 0.95,
  eps: float | jax.Array = 1e-8,
  *,
  num_objectives: int | None = None,
  forget_steps: int | jax.Array = 1,
  retain_steps: int | jax.Array = 1,
  run_lengths: Sequence[int | jax.Array] | None = None,
  bounded: bool = False,
  block_size: int | None = None,
  min_8bit_size: int | None = None,
  quantize_base: bool = True,
  quantize_delta: bool = True,
  keep_fp32: KeepFp32 = None,
) -> optax.GradientTransformationExtraArgs:
  """DualOptim+ (:func:`scale_by_dualoptim_plus`) with 8-bit blockwise moments.

  The update rule, the objective selection (``objective=`` keyword or the
  built-in alternation) and the handling of a traced out-of-range objective
  (NaN updates, state unchanged) are those of the float32 transformation; only
  the storage differs. State bytes per parameter: ``6 + 24 / block_size`` for
  quantized leaves (K = 2) against 24 in float32.

  ``block_size``, ``min_8bit_size`` and ``num_objectives`` shape the state, so
  they are static Python ints; their None defaults keep
  ``optax.inject_hyperparams`` from turning them into arrays. Passed explicitly
  through it, list them in ``static_args`` (an array raises ``TypeError``
  saying so). Every other numeric argument, run lengths included, may be traced.

  Args:
    b1, b2: decays of the delta moments.
    base_b1, base_b2: decays of the shared base moments.
    eps: added to the denominator.
    num_objectives: number of objectives ``K`` (default: ``len(run_lengths)``,
      else 2; static).
    forget_steps, retain_steps: run lengths of the two-objective alternation
      (ints, or integer scalar arrays: traced values work, e.g. under
      ``optax.inject_hyperparams``).
    run_lengths: per-objective run lengths (overrides the two above; length K).
    bounded: floor the combined second moment at ``m**2`` (``|u| <= 1``).
    block_size: elements per quantization block along each leaf's last axis
      (default 256; static).
    min_8bit_size: leaves with fewer elements keep float32 moments (default
      4096; static).
    quantize_base: store ``Bm, Bv`` in 8 bits.
    quantize_delta: store every ``Dm_o, Dv_o`` in 8 bits.
    keep_fp32: leaves to keep in float32: a predicate ``(path, param) -> bool``
      or a string / strings matched against ``jax.tree_util.keystr(path)``
      (e.g. ``"embed"``).

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Example:
    >>> import jax.numpy as jnp
    >>> import dualoptim_jax as do
    >>> tx = do.scale_by_dualoptim_plus_8bit(min_8bit_size=16)
    >>> params = {"w": jnp.ones((4, 8))}
    >>> state = tx.init(params)
    >>> state.base_mu_codes["w"].dtype, state.base_mu_scales["w"].shape
    (dtype('int8'), (4, 1))
    >>> u, state = tx.update({"w": jnp.full((4, 8), 0.5)}, state, params, objective=do.FORGET)
    >>> round(float(u["w"][0, 0]), 4)
    1.0
  """
  lengths = base.objective_run_lengths(num_objectives, forget_steps, retain_steps, run_lengths)
  base.check_decays(eps, b1=b1, b2=b2, base_b1=base_b1, base_b2=base_b2)
  codec = make_codec(block_size, min_8bit_size, keep_fp32)
  k_obj = len(lengths)

  def init_fn(params):
    bm_c, bm_s = codec.init(params, signed=True, quantize=quantize_base)
    bv_c, bv_s = codec.init(params, signed=False, quantize=quantize_base)
    deltas = [codec.init(params, signed=True, quantize=quantize_delta) for _ in range(2 * k_obj)]
    return ScaleByDualOptimPlus8bitState(
      count=jnp.zeros([], jnp.int32),
      objective_counts=jnp.zeros([k_obj], jnp.int32),
      base_mu_codes=bm_c,
      base_mu_scales=bm_s,
      base_nu_codes=bv_c,
      base_nu_scales=bv_s,
      delta_mu_codes=tuple(c for c, _ in deltas[:k_obj]),
      delta_mu_scales=tuple(s for _, s in deltas[:k_obj]),
      delta_nu_codes=tuple(c for c, _ in deltas[k_obj:]),
      delta_nu_scales=tuple(s for _, s in deltas[k_obj:]),
    )

  def update_fn(updates, state, params=None, *, objective=None, **extra_args):
    del params, extra_args
    check_tree_matches(updates, state.base_mu_codes)
    obj = base.resolve_objective(objective, state.count, lengths)
    valid = base.objective_is_valid(obj, k_obj)
    count, counts = advance_counts(state.count, state.objective_counts, obj, valid)
    coeffs = plus_coefficients(b1, b2, base_b1, base_b2, eps, count, base.select_count(counts, obj))

    def core(g, bm_c, bm_s, bv_c, bv_s, dm_c, dm_s, dv_c, dv_s):
      u, nbm, nbv, ndm, ndv = plus_step(
        g.astype(jnp.float32),
        codec.decode(bm_c, bm_s),
        codec.decode(bv_c, bv_s),
        codec.decode(dm_c, dm_s),
        codec.decode(dv_c, dv_s),
        coeffs,
        bounded=bounded,
      )
      nbm, nbv, ndm, ndv = compute_once((nbm, nbv, ndm, ndv), count)
      new = (
        *codec.encode(nbm, bm_c, bm_s),
        *codec.encode(nbv, bv_c, bv_s),
        *codec.encode(ndm, dm_c, dm_s),
        *codec.encode(ndv, dv_c, dv_s),
      )
      return (u.astype(g.dtype), *written_after(u, new))

    def step(g, shared, own, u_out=None):
      u, *new = map_row_chunks(core, (g, *shared, *own), u_out)
      return u, tuple(new[:4]), tuple(new[4:])

    def leaf(g, bm_c, bm_s, bv_c, bv_s, *deltas):
      dm_c, dm_s, dv_c, dv_s = (deltas[i * k_obj : (i + 1) * k_obj] for i in range(4))
      opened = [(c, codec.open_scales(c, s)) for c, s in zip(dm_c, dm_s, strict=True)]
      opened_v = [(c, codec.open_scales(c, s)) for c, s in zip(dv_c, dv_s, strict=True)]
      own = [(*opened[k], *opened_v[k]) for k in range(k_obj)]
      shared = (bm_c, codec.open_scales(bm_c, bm_s), bv_c, codec.open_scales(bv_c, bv_s))
      u, (nbm_c, nbm_s, nbv_c, nbv_s), own = update_active(obj, valid, g, shared, own, step)
      new_dm_c, new_dm_s, new_dv_c, new_dv_s = (tuple(o[i] for o in own) for i in range(4))
      return (
        u,
        nbm_c,
        codec.close_scales(nbm_s, bm_s),
        nbv_c,
        codec.close_scales(nbv_s, bv_s),
        new_dm_c,
        tuple(map(codec.close_scales, new_dm_s, dm_s)),
        new_dv_c,
        tuple(map(codec.close_scales, new_dv_s, dv_s)),
      )

    out = jax.tree.map(
      leaf,
      updates,
      state.base_mu_codes,
      state.base_mu_scales,
      state.base_nu_codes,
      state.base_nu_scales,
      *state.delta_mu_codes,
      *state.delta_mu_scales,
      *state.delta_nu_codes,
      *state.delta_nu_scales,
    )
    u, bm_c, bm_s, bv_c, bv_s, dm_c, dm_s, dv_c, dv_s = unzip(updates, out, 9)
    return u, ScaleByDualOptimPlus8bitState(
      count=count,
      objective_counts=counts,
      base_mu_codes=bm_c,
      base_mu_scales=bm_s,
      base_nu_codes=bv_c,
      base_nu_scales=bv_s,
      delta_mu_codes=unzip(updates, dm_c, k_obj),
      delta_mu_scales=unzip(updates, dm_s, k_obj),
      delta_nu_codes=unzip(updates, dv_c, k_obj),
      delta_nu_scales=unzip(updates, dv_s, k_obj),
    )

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


DEFAULT_BLOCK_SIZE = 256
DEFAULT_MIN_8BIT_SIZE = 4096


def make_codec(block_size: Any, min_8bit_size: Any, keep_fp32: KeepFp32) -> MomentCodec:
  """Validates the storage options (they shape the state, so they must be static ints).

  None means the default (256 and 4096): a default that is not a number keeps
  ``optax.inject_hyperparams`` from turning it into an array.
  """
  block_size = base.static_int("block_size", block_size, DEFAULT_BLOCK_SIZE)
  min_8bit_size = base.static_int("min_8bit_size", min_8bit_size, DEFAULT_MIN_8BIT_SIZE)
  if block_size < 1:
    raise ValueError(f"block_size must be positive, got {block_size}.")
  if min_8bit_size < 0:
    raise ValueError(f"min_8bit_size must be non-negative, got {min_8bit_size}.")
  return MomentCodec(block_size, min_8bit_size, keep_fp32_predicate(keep_fp32))


def find_8bit_state(state: Any, cls: type) -> Any:
  """The single state of type ``cls`` inside a nested optax state."""
  return base.find_state(state, lambda x: isinstance(x, cls), cls.__name__)


def dequantize_dualoptim_plus_state(
  state: Any, *, block_size: int = 256
) -> ScaleByDualOptimPlusState:
  """A float32 view of the DualOptim+ 8-bit state found inside ``state``.

  The result is a :class:`ScaleByDualOptimPlusState`, so the float32 tools
  (``conflict_metrics``, ``find_dualoptim_plus_state``) read it unchanged.

  Args:
    state: an optax state containing one 8-bit DualOptim+ state (any nesting).
    block_size: the block size the optimizer was built with.

  Returns:
    The decoded state (float32 moments, same counts).

  Example:
    >>> import jax.numpy as jnp, dualoptim_jax as do
    >>> tx = do.dualoptim_plus_8bit(1e-3, min_8bit_size=4)
    >>> p = {"w": jnp.ones((2, 4))}
    >>> s = tx.init(p)
    >>> _, s = tx.update({"w": jnp.ones((2, 4))}, s, p, objective=do.FORGET)
    >>> _, s = tx.update({"w": -jnp.ones((2, 4))}, s, p, objective=do.RETAIN)
    >>> m = do.conflict_metrics(do.dequantize_dualoptim_plus_state(s))
    >>> round(float(m["delta_cosine"]), 2)
    -1.0
  """
  st = find_8bit_state(state, ScaleByDualOptimPlus8bitState)
  codec = make_codec(block_size, 0, None)

  def tree(codes, scales):
    return jax.tree.map(codec.decode, codes, scales)

  return ScaleByDualOptimPlusState(
    count=st.count,
    objective_counts=st.objective_counts,
    base_mu=tree(st.base_mu_codes, st.base_mu_scales),
    base_nu=tree(st.base_nu_codes, st.base_nu_scales),
    delta_mu=tuple(map(tree, st.delta_mu_codes, st.delta_mu_scales)),
    delta_nu=tuple(map(tree, st.delta_nu_codes, st.delta_nu_scales)),
  )
