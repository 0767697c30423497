"""Orders optimizer-state writes so XLA updates donated state buffers in place.

Params and state are donated, so XLA writes every new moment into its old
buffer. A buffer may only be overwritten once nothing still has to read its
old value, and XLA proves that from data dependencies alone (XLA:CPU expands
``optimization_barrier`` before copy insertion, so a barrier does not help).
Written directly, the rule lets the write of the new ``Bm``/``Bv`` float free
of the computations that still read the old ones (``u``, which the caller
fuses into the parameter update, and the deltas' updates), and copy insertion
keeps full-size copies of the old base moments. What keeps the copies out is a
free data dependency: the new base moments add ``zero_after(u)``, an exact 0.0
read from one element of ``u``. ``u`` contains divisions, which XLA does not
duplicate into a second consumer, so ``u`` is computed once, before those
writes, from the old values; the new deltas it reads are computed before it.
The price is that ``u`` becomes one materialised temporary instead of being
fused into the caller's parameter update. The ``dualoptim_plus`` alias avoids
that price with ``order_state_writes`` below: the zeros are read from the
caller's new parameters instead, so ``u`` stays fused into the parameter
update and the base moments are overwritten after it.

The per-objective moments need no ordering: only the active objective's are
rewritten, from their own old values, and ``u`` reads the new ones. With a
static objective that is plain indexing; with a traced one it is
``rewrite_active`` below (one ``lax.cond`` per objective and leaf), which
made the traced step as fast as the static one (64M params on CPU: 3.9x adamw
with a ``where`` over every delta). ``tests/test_hlo.py`` checks the compiled
HLO for state-sized copies.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax


def zero_after(x: jax.Array) -> jax.Array:
  """An exact 0 (never NaN) that data-depends on ``x``: orders a write after ``x``.

  It reads the first element of ``x`` (the first element of each shard along
  dims sharded over explicit mesh axes, so that the slice stays evenly sharded).
  """
  if x.size == 0:
    return jnp.zeros((), x.dtype)
  sizes = [1] * x.ndim
  sharding = getattr(jax.typeof(x), "sharding", None)
  mesh = getattr(sharding, "mesh", None)
  if mesh is not None and not mesh.empty:
    for d, entry in enumerate(sharding.spec):
      names = () if entry is None else entry if isinstance(entry, tuple) else (entry,)
      sizes[d] = math.prod(mesh.shape[n] for n in names)
  first = jax.lax.slice(x, (0,) * x.ndim, tuple(sizes))
  return jnp.sum(jnp.isnan(first).astype(x.dtype)) * jnp.zeros((), x.dtype)


WRITES_ORDERED_BY_CALLER = "_dualoptim_state_writes_ordered_by_caller"
"""Private extra argument: the caller orders the state writes (``order_state_writes``)."""


def order_state_writes(
  tx: optax.GradientTransformationExtraArgs, state_types: tuple[type, ...]
) -> optax.GradientTransformationExtraArgs:
  """Orders a DualOptim(+) chain's state writes after the caller's parameter update.

  Better than ordering them after ``u`` (``leaf_update``): ``u`` then need not
  be materialised. ``tx`` must return the final updates (the full chain, with
  its learning rate). This wrapper computes ``optax.apply_updates(params,
  updates)`` exactly as the caller will, so XLA merges the two (CSE), and adds
  ``zero_after`` of each new parameter to every state leaf the step rewrites:
  the parameter update (which reads the old moments) runs first and the
  moments are then overwritten in place, with no copy and no temporary. If the
  caller applies the updates differently, the writes are still ordered after
  ``u`` (materialised once). Without ``params`` it falls back to ``leaf_update``.

  Args:
    tx: the full chain (moments, weight decay, learning rate).
    state_types: the moment-state types of ``tx`` whose writes are ordered.

  Returns:
    ``tx`` with the same init and ordered state writes.
  """

  def update_fn(updates, state, params=None, **extra_args):
    if params is None:
      return tx.update(updates, state, params, **extra_args)
    extra_args[WRITES_ORDERED_BY_CALLER] = True
    final, new_state = tx.update(updates, state, params, **extra_args)
    new_params = optax.apply_updates(params, final)
    zeros = jax.tree.map(
      lambda p: zero_after(p) if jnp.issubdtype(p.dtype, jnp.floating) else None, new_params
    )
    treedef = jax.tree.structure(params)

    def after(new_tree, old_tree):
      if jax.tree.structure(new_tree) != treedef:
        return new_tree
      return jax.tree.map(
        lambda new, old, z: new if new is old or z is None else new + z.astype(new.dtype),
        new_tree,
        old_tree,
        zeros,
      )

    def order(new, old):
      if not isinstance(new, state_types):
        return new
      fields = {}
      for name in new._fields:
        n, o = getattr(new, name), getattr(old, name)
        if isinstance(n, tuple) and not hasattr(n, "_fields"):
          # Per-objective moments: only the active one is rewritten (traced or
          # not, see rewrite_active), from its own old value, and the update
          # reads the new value: nothing to order.
          fields[name] = n
        else:
          fields[name] = after(n, o)
      return type(new)(**fields)

    if isinstance(new_state, tuple) and not hasattr(new_state, "_fields"):
      new_state = tuple(order(n, o) for n, o in zip(new_state, state, strict=True))
    else:
      new_state = order(new_state, state)
    return final, new_state

  return optax.GradientTransformationExtraArgs(tx.init, update_fn)


def rewrite_active(
  objective: jax.Array, valid: jax.Array, moments: Sequence[Any], step: Callable[[Any], Any]
) -> list:
  """Rewrites only the active objective's moments, in place, for a traced objective.

  ``moments[k]`` is objective ``k``'s carry (a pytree of arrays); it goes
  through a ``lax.cond`` that applies ``step`` when ``k`` is the active (valid)
  objective and passes the carry through otherwise. One ``cond`` per objective
  and per leaf lets XLA update the active carry in place and leave the others
  untouched (no copies: ``tests/test_hlo.py``), where a ``jnp.where`` over
  every objective rewrites all of them and one ``switch`` over the whole state
  copies every moment a branch passes through. Unlike a ``while_loop`` with a
  data-dependent trip count, a ``cond`` is reverse-differentiable.

  Args:
    objective: the traced int32 objective.
    valid: whether it is in range (nothing is rewritten otherwise).
    moments: one carry per objective.
    step: ``step(carry) -> new carry``, same structure, shapes and dtypes.

  Returns:
    The new carries, in order.
  """
  return [
    jax.lax.cond((objective == k) & valid, step, lambda c: c, carry)
    for k, carry in enumerate(moments)
  ]
