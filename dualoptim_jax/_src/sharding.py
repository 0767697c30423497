"""Optimizer-state shardings from parameter shardings.

Every param-shaped state leaf of the fp32 and int8 optimizers comes from one
``jax.tree.map`` over the params, so ``optax.tree.map_params`` can put each
parameter's PartitionSpec on its state leaves: moments and int8 codes have the
parameter's shape and take its spec as is. Counters and other non-parameter
leaves are replicated (``P()``). Where a state holds nothing for a parameter
(the scales of a leaf an int8 optimizer keeps in float32; the other
partition's leaves in ``dualoptim_plus_muon``) it holds ``optax.MaskedNode()``,
an empty node: calling ``optax.tree.map_params`` yourself, pass
``is_leaf=lambda x: isinstance(x, optax.MaskedNode)``, as optax documents for
``optax.masked``; the helpers below do.

**The last-axis rule for int8 scales.** A quantized moment's float32 scales
have shape ``(*p.shape[:-1], ceil(p.shape[-1] / block_size))``: the same rank
as the parameter, one entry per block of ``block_size`` elements along the last
axis. They take the parameter's spec too, which is exact as long as no block
straddles two shards: when the last axis is sharded over ``n`` devices,
``block_size`` must divide the per-shard length ``p.shape[-1] / n``. The
helpers check this and raise ``ValueError`` otherwise (choose another
``block_size``, shard another axis, or keep that leaf in float32 with
``keep_fp32``). Axes other than the last carry no constraint.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P


def _axis_size(mesh: Any, entry: Any) -> int:
  """Devices along one PartitionSpec entry (``None``, a name or a tuple of names)."""
  if entry is None or mesh is None:
    return 1
  names = entry if isinstance(entry, tuple) else (entry,)
  return math.prod(mesh.shape[name] for name in names)


def _leaf_spec(leaf: Any, spec: Any, param: Any, mesh: Any, block_size: int) -> Any:
  """The spec of one state leaf that stands for ``param`` (whose spec is ``spec``).

  A ``MaskedNode`` (no state for this parameter: a float32 leaf's int8 scales,
  or a leaf that ``optax.masked``/``partition`` routes elsewhere) stays one.
  """
  if isinstance(leaf, optax.MaskedNode):
    return leaf
  spec = P() if spec is None else spec
  shape, pshape = tuple(leaf.shape), tuple(param.shape)
  if shape == pshape:
    return spec
  if len(shape) != len(pshape) or shape[:-1] != pshape[:-1]:
    raise ValueError(
      f"A state leaf of shape {shape} stands for a parameter of shape {pshape}; only "
      "parameter-shaped leaves and last-axis block scales are supported."
    )
  # Block scales.
  entries = tuple(spec) + (None,) * (len(pshape) - len(spec))
  n = _axis_size(mesh, entries[-1]) if pshape else 1
  if n > 1:
    length = pshape[-1]
    if length % n or (length // n) % block_size:
      raise ValueError(
        f"The last axis (length {length}) of a parameter of shape {pshape} is sharded over "
        f"{n} devices ({entries[-1]!r}), so its int8 blocks of {block_size} would straddle "
        f"shards: block_size must divide the per-shard length {length / n:g}."
      )
  return spec


def state_partition_specs(
  tx: optax.GradientTransformation,
  params: Any,
  param_specs: Any,
  *,
  mesh: Any = None,
  block_size: int = 256,
) -> Any:
  """PartitionSpecs for ``tx``'s state, taken from the parameters' specs.

  Built on ``optax.tree.map_params``: each state leaf that stands for a
  parameter gets that parameter's spec (int8 codes and moments as is, int8
  scales too, after the last-axis check in the module docstring); counters and
  other leaves get ``P()``.

  Args:
    tx: the optimizer (any ``optax`` transformation, e.g. :func:`dualoptim_plus`).
    params: the parameters, as arrays or ``jax.ShapeDtypeStruct``.
    param_specs: a tree like ``params`` of ``PartitionSpec`` (``None`` = replicated).
    mesh: the mesh the specs refer to, for the int8 last-axis check (default:
      the mesh set with ``jax.set_mesh``, if any).
    block_size: the int8 block size the check assumes.

  Returns:
    A tree shaped like ``tx.init(params)`` whose leaves are ``PartitionSpec``.

  Raises:
    ValueError: int8 blocks would straddle shards of a sharded last axis.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jax.sharding import PartitionSpec as P
    >>> import dualoptim_jax as do
    >>> tx = do.dualoptim_plus(1e-3)
    >>> params = {"w": jax.ShapeDtypeStruct((8, 4), jnp.float32)}
    >>> specs = do.state_partition_specs(tx, params, {"w": P("data", None)})
    >>> specs[0].base_mu["w"], specs[0].count
    (P('data', None), P())
  """
  if mesh is None:
    abstract = jax.sharding.get_abstract_mesh()
    mesh = None if abstract.empty else abstract
  abstract_state = jax.eval_shape(tx.init, params)

  def is_spec(x):
    return x is None or isinstance(x, P)

  spec_leaves = jax.tree.leaves(param_specs, is_leaf=is_spec)
  param_leaves, treedef = jax.tree.flatten(params)
  if len(spec_leaves) != len(param_leaves):
    raise ValueError(
      f"param_specs has {len(spec_leaves)} leaves but params has {len(param_leaves)}."
    )
  specs = treedef.unflatten([_SpecBox(s) for s in spec_leaves])

  def leaf_spec(leaf, box, param):
    return _leaf_spec(leaf, box.spec, param, mesh, block_size)

  return optax.tree.map_params(
    tx.init,
    leaf_spec,
    abstract_state,
    specs,
    params,
    transform_non_params=lambda _: P(),
    # As optax documents for masked states: a MaskedNode sits where the params
    # tree has a leaf, so it must reach leaf_spec as one.
    is_leaf=lambda x: isinstance(x, optax.MaskedNode),
  )


class _SpecBox:
  """Holds a spec as an opaque leaf (a PartitionSpec or None would not survive tree maps)."""

  def __init__(self, spec: Any):
    self.spec = spec


def state_shardings(
  tx: optax.GradientTransformation,
  params: Any,
  param_shardings: Any,
  *,
  block_size: int = 256,
) -> Any:
  """``NamedSharding`` for every leaf of ``tx``'s state, from the parameters' shardings.

  Use it as ``out_shardings`` of a jitted ``tx.init`` (or to restore a
  checkpoint straight onto the mesh). Non-parameter leaves are replicated.

  Args:
    tx: the optimizer.
    params: the parameters, as arrays or ``jax.ShapeDtypeStruct``.
    param_shardings: a tree like ``params`` of ``NamedSharding`` on one mesh.
    block_size: the int8 block size (see :func:`state_partition_specs`).

  Returns:
    A tree shaped like ``tx.init(params)`` whose leaves are ``NamedSharding``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jax.sharding import NamedSharding, PartitionSpec as P
    >>> import dualoptim_jax as do
    >>> mesh = jax.make_mesh((1,), ("data",))
    >>> tx = do.dualoptim_plus(1e-3)
    >>> params = {"w": jnp.zeros((8, 4))}
    >>> shardings = do.state_shardings(tx, params, {"w": NamedSharding(mesh, P("data"))})
    >>> state = jax.jit(tx.init, out_shardings=shardings)(params)
    >>> state[0].base_mu["w"].sharding.spec
    P('data',)
  """
  named = jax.tree.leaves(param_shardings)
  if not named or not all(isinstance(s, NamedSharding) for s in named):
    raise TypeError("param_shardings must be a tree of NamedSharding (one mesh).")
  mesh = named[0].mesh
  specs = jax.tree.map(lambda s: s.spec, param_shardings)
  state_specs = state_partition_specs(tx, params, specs, mesh=mesh, block_size=block_size)
  return jax.tree.map(
    lambda s: NamedSharding(mesh, s), state_specs, is_leaf=lambda x: isinstance(x, P)
  )
