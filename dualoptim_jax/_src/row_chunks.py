"""Row-chunk loops for the 8-bit optimizers' CPU step (cache blocking, in place).

The 8-bit update of one leaf decodes its moments, applies the rule, takes the
new block absmaxes and re-encodes. On a single CPU device that runs as a loop
over chunks of rows that writes the donated codes and scales in place; on
other backends (and on sharded leaves) as one whole-leaf computation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from dualoptim_jax._src.dualoptim_plus import select_objective, write_objective
from dualoptim_jax._src.ordering import zero_after
from dualoptim_jax._src.quantization import is_codes


def written_after(u: jax.Array, new_state: Sequence[jax.Array]) -> tuple:
  """``new_state`` with every array except 8-bit codes made to wait for ``u``.

  ``u`` reads the old moments: XLA recomputes the new moments inside it from
  the old scales (and float32 moments). Written after ``u`` (``zero_after``),
  those are updated in place by the chunk loop instead of copied on every
  iteration (see ordering.py). The codes need no order: XLA decodes them into a
  temporary first, and writing them without waiting for ``u`` keeps both cores
  busy (ordering every write after ``u``: 16M step 129 -> 181 ms).
  """
  z = zero_after(u)
  return tuple(x if is_codes(x) else x + z.astype(x.dtype) for x in new_state)


def compute_once(values: Sequence[jax.Array], count: jax.Array) -> tuple:
  """``values`` unchanged, but computed once: divides them by an exact runtime 1.0.

  XLA copies a cheap elementwise producer into each of its consumers, so every
  new moment (decodes included) was computed again for the block absmax and
  for the encode. A division is an expensive producer that XLA does not
  duplicate, and ``count / count`` is exactly 1.0 yet not a constant XLA could
  fold: the absmax and the encode then read one temporary (8-bit step 12-13%
  faster at 64M on CPU). ``u`` divides the moments again, and XLA merges the
  two divisions, so ``u`` still recomputes them from the old codes and scales.
  """
  c = jnp.maximum(count, 1).astype(jnp.float32)
  one = c / c
  return tuple(v / one.astype(v.dtype) for v in values)


# Cache blocking (CPU). Decoding, updating and re-encoding a moment takes several
# XLA fusions (the block absmax is a reduction the encode must wait for), so a
# whole-leaf update puts full-size float32 temporaries between them. On CPU those
# cost more than their bytes: each execution maps fresh pages for them (writing a
# fresh 16M-float output here costs 1.25 ns/element, 0.26 in place). Looping over
# chunks of rows keeps the temporaries small and in cache. 131,072 elements per
# chunk: 583-660 ms per 64M step against 775 ms with 16,384 (4 leaves of width
# 4096). Skipped with several devices: a loop over a sharded leading axis would
# make GSPMD gather the leaf, and that layout is what the codes/scales design keeps.
CHUNK_ELEMENTS = 131072


def chunking_enabled() -> bool:
  """Whether per-leaf updates run in row chunks (single-device CPU only)."""
  return jax.default_backend() == "cpu" and jax.device_count() == 1


def chunk_rows(g: jax.Array) -> int | None:
  """Rows per chunk of a leaf shaped like ``g``, or None when it is updated whole."""
  if g.ndim < 2 or g.size < 2 * CHUNK_ELEMENTS or not chunking_enabled():
    return None
  rows = g.size // g.shape[-1]
  per = max(1, CHUNK_ELEMENTS // g.shape[-1])
  while rows % per:
    per -= 1
  if per * g.shape[-1] * 4 < CHUNK_ELEMENTS:  # awkward row counts: many tiny chunks
    return None
  return per


def map_row_chunks(
  fn: Callable[..., tuple], arrays: Sequence[jax.Array], u_out: jax.Array | None = None
) -> tuple:
  """``fn(*arrays)`` computed ``CHUNK_ELEMENTS`` elements of rows at a time when worthwhile.

  ``fn(g, *state)`` returns ``(u, *new_state)``: ``u`` shaped like ``g`` and
  each new state array shaped like the one it replaces. ``fn`` must treat rows
  (every axis but the last) independently; every array shares the leading
  axes of ``g``. Results are the same as one call on the whole arrays.

  The loop writes each chunk's new state into the old state's buffers (donated
  state is updated in place) and reads a chunk's old values before writing it.
  A ``lax.map`` would stack its results in fresh zero-filled buffers and then
  copy them into the state's (about 10% of the 8-bit step at 16M and 64M on
  CPU). ``fn`` must order its new state after its ``u`` (``written_after``):
  ``u`` reads the old values, and a write XLA may schedule first makes it copy
  the whole state array on every iteration.

  ``u_out`` (shaped and typed like ``u``; zeros when None) is the buffer the
  loop writes ``u`` into, chunk by chunk; the whole-leaf path ignores it.
  """
  g, state = arrays[0], tuple(arrays[1:])
  per = chunk_rows(g)
  if per is None:
    return fn(g, *state)
  n = g.size // g.shape[-1] // per

  def split(a):
    return a.reshape(n, per, a.shape[-1])

  def body(i, carry):
    u, st = carry
    out_u, *new = fn(*(jax.lax.dynamic_index_in_dim(a, i, keepdims=False) for a in (gs, *st)))
    u = jax.lax.dynamic_update_index_in_dim(u, out_u.astype(u.dtype), i, 0)
    return u, tuple(
      jax.lax.dynamic_update_index_in_dim(a, x, i, 0) for a, x in zip(st, new, strict=True)
    )

  gs = split(g)
  u0 = jnp.zeros_like(gs) if u_out is None else split(u_out)
  u, st = jax.lax.fori_loop(0, n, body, (u0, tuple(map(split, state))))
  return tuple(o.reshape(*g.shape[:-1], o.shape[-1]) for o in (u, *st))


def update_active(
  objective: int | jax.Array,
  valid: bool | jax.Array,
  g: jax.Array,
  shared: tuple,
  own: Sequence[tuple],
  update: Callable[..., tuple],
) -> tuple[jax.Array, tuple, list]:
  """One leaf's 8-bit step: only the active objective's moments move.

  ``update(g, shared, own_k, u_out=None) -> (u, shared, own_k)`` is the step
  of objective ``k``. A static (Python int) objective just runs it on its own
  moments. For a traced one, when the leaf runs in row chunks, it runs inside one
  ``lax.cond`` per objective (the branch of the active, valid one), chained
  through the shared moments and ``u``: the chunk loop then updates the active
  and the shared moments in place and no other moment is read or written. A
  ``where`` over every objective's codes rewrote all of them: the traced 8-bit
  step at 64M took 535 ms against 457 ms with the conds on CPU. A whole-leaf
  update keeps the ``where``: chained through conds, XLA copies the moments
  that the branches pass along.

  Returns:
    ``(u, shared, own)``: ``u`` is NaN and nothing changes when no objective
    is active (an invalid objective).
  """
  if isinstance(objective, int):
    new_own = list(own)
    u, shared, new_own[objective] = update(g, shared, own[objective])
    return u, shared, new_own
  if chunk_rows(g) is None:
    return _update_active_where(objective, valid, g, shared, own, update)
  u = jnp.full_like(g, jnp.nan)
  new_own = []
  for k, mine in enumerate(own):

    def run(carry):
      return update(g, carry[1], carry[2], carry[0])

    u, shared, mine = jax.lax.cond((objective == k) & valid, run, lambda c: c, (u, shared, mine))
    new_own.append(mine)
  return u, shared, new_own


def _update_active_where(objective, valid, g, shared, own, update):
  """:func:`update_active` by selecting the active moments and writing every objective's back."""
  active = tuple(select_objective(objective, field) for field in zip(*own, strict=True))
  u, new_shared, new_active = update(g, shared, active)
  u = jnp.where(valid, u, jnp.nan)
  new_shared = tuple(jnp.where(valid, n, o) for n, o in zip(new_shared, shared, strict=True))
  # An invalid objective matches no k, so write_objective leaves every objective's moments alone.
  olds = zip(*own, strict=True)
  fields = [write_objective(objective, o, n) for o, n in zip(olds, new_active, strict=True)]
  return u, new_shared, [tuple(field[k] for field in fields) for k in range(len(own))]
