"""Checkpoints of ``(params, optimizer state, step)`` with orbax-checkpoint.

Each checkpoint is one step directory written by ``orbax.checkpoint``'s
``CheckpointManager`` (params and state as ``StandardSave`` items, the step and
a format tag as JSON). Orbax writes a step into a temporary directory and
renames it only once every file is complete, so a save that dies half-way
leaves no step behind and never touches earlier steps; saving a step that
already exists is refused. Restoring reads into the abstract tree you pass
(``jax.ShapeDtypeStruct`` leaves with shardings, or arrays whose shardings are
used), so a checkpoint written on 8 devices restores bit-exactly onto 4 or 1.
A step whose files are damaged or missing raises :class:`CheckpointError`
naming the step and the other steps on disk. Damage that still decodes (a
flipped or zeroed block) is caught too: each save records two 32-bit checksums
per leaf (a sum and a position-weighted sum of the leaf's bit patterns), and a
restore recomputes and compares them, so damaged weights are never returned.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

FORMAT = "dualoptim_jax.checkpoint/1"


class CheckpointError(RuntimeError):
  """A checkpoint cannot be written or read back (exists already, damaged, incomplete)."""


def _manager(directory: str | os.PathLike, max_to_keep: int | None, *, create: bool):
  options = ocp.CheckpointManagerOptions(
    max_to_keep=max_to_keep, create=create, enable_async_checkpointing=False
  )
  return ocp.CheckpointManager(os.path.abspath(os.fspath(directory)), options=options)


_UINT = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}


def _words(x: jax.Array) -> jax.Array:
  """The leaf's bit patterns as a flat uint32 vector (64-bit items give two words)."""
  if jnp.issubdtype(x.dtype, jnp.complexfloating):
    return jnp.concatenate([_words(jnp.real(x)), _words(jnp.imag(x))])
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32).reshape(-1)
  size = x.dtype.itemsize
  if size == 8:
    return jax.lax.bitcast_convert_type(x, jnp.uint32).reshape(-1)
  return jax.lax.bitcast_convert_type(x, _UINT[size]).astype(jnp.uint32).reshape(-1)


@jax.jit
def _checksum_leaves(leaves: list[jax.Array]) -> list[jax.Array]:
  out = []
  for x in leaves:
    w = _words(x)
    # Odd multipliers make the weighted sum see a swap of two words as well as a change.
    weights = jnp.arange(w.size, dtype=jnp.uint32) * jnp.uint32(2654435761) + jnp.uint32(1)
    out.append(jnp.stack([jnp.sum(w, dtype=jnp.uint32), jnp.sum(w * weights, dtype=jnp.uint32)]))
  return out


def _checksums(tree: Any) -> list[list]:
  """``[path, dtype, sum, weighted sum]`` per array leaf of ``tree`` (uint32 sums)."""
  flat = [
    (jax.tree_util.keystr(k), x)
    for k, x in jax.tree_util.tree_flatten_with_path(tree)[0]
    if isinstance(x, jax.Array | np.ndarray | np.generic)
  ]
  sums = _checksum_leaves([jnp.asarray(x) for _, x in flat])
  # Replicated scalars: the first addressable shard holds the value on every process.
  host = [np.asarray(s.addressable_data(0)) for s in sums]
  return [[k, str(x.dtype), int(s[0]), int(s[1])] for (k, x), s in zip(flat, host, strict=True)]


def _mismatches(saved: list[list], restored: list[list]) -> list[str]:
  """Paths whose checksums differ (leaves restored into another dtype are not compared)."""
  if len(saved) != len(restored):
    return [f"{len(saved)} leaves saved, {len(restored)} restored"]
  return [a[0] for a, b in zip(saved, restored, strict=True) if a[1] == b[1] and a[2:] != b[2:]]


def _abstract(x: Any) -> Any:
  """A restore target for one leaf: shape, dtype and (for arrays) sharding."""
  if isinstance(x, jax.ShapeDtypeStruct):
    return x
  return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))


def save_checkpoint(
  directory: str | os.PathLike,
  step: int,
  params: Any,
  opt_state: Any,
  *,
  max_to_keep: int | None = None,
) -> str:
  """Writes ``(params, opt_state, step)`` as step ``step`` of ``directory``.

  Args:
    directory: the checkpoint root (created if missing); each step is a subdirectory.
    step: the training step (a non-negative int); an existing step is never overwritten.
    params: the parameters (any pytree of arrays, sharded or not).
    opt_state: the optimizer state (e.g. from :func:`dualoptim_plus` or the int8 variant).
    max_to_keep: keep only this many most recent steps (default: all).

  Returns:
    The path of the written step directory.

  Raises:
    CheckpointError: the step exists already.

  Example:
    >>> import tempfile, jax.numpy as jnp
    >>> import dualoptim_jax as do
    >>> tx = do.dualoptim_plus(1e-3)
    >>> params = {"w": jnp.ones(4)}
    >>> d = tempfile.mkdtemp()
    >>> _ = do.save_checkpoint(d, 0, params, tx.init(params))
    >>> p, s, step = do.restore_checkpoint(d, params, tx.init(params))
    >>> step, p["w"].tolist()
    (0, [1.0, 1.0, 1.0, 1.0])
  """
  step = int(step)
  if step < 0:
    raise ValueError(f"step must be non-negative, got {step}.")
  with _manager(directory, max_to_keep, create=True) as mgr:
    if step in mgr.all_steps():
      raise CheckpointError(
        f"Step {step} already exists in {mgr.directory}; refusing to overwrite a checkpoint."
      )
    mgr.save(
      step,
      args=ocp.args.Composite(
        params=ocp.args.StandardSave(params),
        opt_state=ocp.args.StandardSave(opt_state),
        meta=ocp.args.JsonSave(
          {"format": FORMAT, "step": step, "checksums": _checksums((params, opt_state))}
        ),
      ),
    )
    mgr.wait_until_finished()
    return os.fspath(mgr.directory / str(step))


def checkpoint_steps(directory: str | os.PathLike) -> list[int]:
  """The complete steps in ``directory``, oldest first (empty if there is none).

  Example:
    >>> import tempfile
    >>> checkpoint_steps(tempfile.mkdtemp())
    []
  """
  if not os.path.isdir(directory):
    return []
  with _manager(directory, None, create=False) as mgr:
    return sorted(mgr.all_steps())


def restore_checkpoint(
  directory: str | os.PathLike,
  params: Any,
  opt_state: Any,
  *,
  step: int | None = None,
) -> tuple[Any, Any, int]:
  """Reads ``(params, opt_state, step)`` back onto the shardings of the given targets.

  Args:
    directory: the checkpoint root given to :func:`save_checkpoint`.
    params: the target params: arrays or ``jax.ShapeDtypeStruct`` (with the
      ``sharding`` to restore onto; any mesh, any device count).
    opt_state: the target optimizer state, e.g. ``jax.eval_shape(tx.init,
      params)`` or a state built with :func:`state_shardings`.
    step: the step to read (default: the latest complete one).

  Returns:
    ``(params, opt_state, step)``.

  Raises:
    FileNotFoundError: no checkpoint (or not that step) in ``directory``.
    CheckpointError: the step is damaged or incomplete, or does not match the targets.

  Example:
    >>> import tempfile, jax, jax.numpy as jnp
    >>> import dualoptim_jax as do
    >>> tx = do.dualoptim_plus(1e-3)
    >>> params = {"w": jnp.ones(2)}
    >>> d = tempfile.mkdtemp()
    >>> _ = do.save_checkpoint(d, 7, params, tx.init(params))
    >>> _, state, step = do.restore_checkpoint(d, params, jax.eval_shape(tx.init, params))
    >>> step, int(state[0].count)
    (7, 0)
  """
  steps = checkpoint_steps(directory)
  if not steps:
    raise FileNotFoundError(f"No complete checkpoint in {os.fspath(directory)!r}.")
  step = steps[-1] if step is None else int(step)
  if step not in steps:
    raise FileNotFoundError(f"Step {step} is not in {os.fspath(directory)!r} (steps: {steps}).")
  targets = jax.tree.map(_abstract, (params, opt_state))
  with _manager(directory, None, create=False) as mgr:
    try:
      out = mgr.restore(
        step,
        args=ocp.args.Composite(
          params=ocp.args.StandardRestore(targets[0]),
          opt_state=ocp.args.StandardRestore(targets[1]),
          meta=ocp.args.JsonRestore(),
        ),
      )
    except Exception as e:  # orbax/tensorstore raise many types for damaged files.
      others = [s for s in steps if s != step]
      raise CheckpointError(
        f"Checkpoint step {step} in {mgr.directory} is damaged, incomplete or does not match "
        f"the given params/opt_state ({type(e).__name__}: {str(e)[:500]}). Nothing was "
        f"changed on disk; other steps: {others or 'none'} (pass step=...)."
      ) from e
  meta = out.meta or {}
  if meta.get("format") != FORMAT or meta.get("step") != step:
    raise CheckpointError(f"Step {step} in {os.fspath(directory)!r} has bad metadata: {meta}.")
  if "checksums" in meta:  # checkpoints written before checksums existed restore unverified
    bad = _mismatches(meta["checksums"], _checksums((out.params, out.opt_state)))
    if bad:
      others = [s for s in steps if s != step]
      raise CheckpointError(
        f"Checkpoint step {step} in {os.fspath(directory)!r} is damaged: checksum mismatch in "
        f"{', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}. Nothing was changed on disk; "
        f"other steps: {others or 'none'} (pass step=...)."
      )
  return out.params, out.opt_state, step
