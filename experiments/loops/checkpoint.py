"""The experiments' checkpoint cache: (params, optimizer state) per epoch, through the library.

Saving and restoring go through :func:`dualoptim_jax.save_checkpoint` and
:func:`dualoptim_jax.restore_checkpoint`, which write each step atomically,
verify per-leaf checksums on restore and raise
:class:`dualoptim_jax.CheckpointError` for a damaged step. A damaged step is
never used: :meth:`Checkpoints.restore_latest` says which step is damaged,
moves it aside (renamed ``damaged-<step>[-n]``, kept for inspection, never
deleted) and falls back to the previous good step, or to no step at all (the
caller then trains that phase again).
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import pathlib
import sys
import tempfile
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

import dualoptim_jax


def _warn(message: str) -> None:
  print(message, file=sys.stderr)


class Checkpoints:
  """A step-indexed checkpoint directory (the step is the epoch).

  Args:
    directory: where the steps live (created on the first save).
    max_to_keep: how many most recent steps to keep.
    warn: where to report damaged steps (default: one line on stderr).

  Example:
    >>> import tempfile, jax.numpy as jnp, optax
    >>> params = {"w": jnp.ones(3)}
    >>> tx = optax.adam(1e-3)
    >>> ckpt = Checkpoints(tempfile.mkdtemp())
    >>> ckpt.save(4, params, tx.init(params))
    >>> _, _, step = ckpt.restore_latest(params, tx.init(params))
    >>> step
    4
  """

  def __init__(
    self,
    directory: pathlib.Path | str,
    max_to_keep: int = 2,
    warn: Callable[[str], None] = _warn,
  ):
    self.directory = pathlib.Path(directory).absolute()
    self.max_to_keep, self.warn = max_to_keep, warn

  def steps(self) -> list[int]:
    """The complete steps on disk, oldest first."""
    return dualoptim_jax.checkpoint_steps(self.directory)

  def latest(self) -> int | None:
    """The latest complete step, or None (not checked for damage: see :meth:`restore_latest`)."""
    steps = self.steps()
    return steps[-1] if steps else None

  def save(self, step: int, params, opt_state) -> None:
    """Writes ``step`` (an existing step is refused by the library, never overwritten)."""
    dualoptim_jax.save_checkpoint(
      self.directory, step, params, opt_state, max_to_keep=self.max_to_keep
    )

  def restore_latest(self, params_like, opt_state_like):
    """``(params, opt_state, step)`` of the latest undamaged step, or None if there is none.

    Damaged steps on the way are reported, moved aside and skipped.
    """
    for step in reversed(self.steps()):
      noise = _Captured()
      with _stderr_captured(noise):
        try:
          params, opt_state, step = dualoptim_jax.restore_checkpoint(
            self.directory, params_like, opt_state_like, step=step
          )
        except dualoptim_jax.CheckpointError as e:
          noise.error = str(e)
        if noise.error:  # the failed reads are unreachable now: let them print while captured
          for _ in range(4):
            time.sleep(0.1)
            gc.collect()
      if noise.error:
        moved = self._set_aside(step)
        (moved / "restore_error.txt").write_text(f"{noise.error}\n\n{noise.text}")
        earlier = [s for s in self.steps() if s < step]
        then = f"falling back to step {earlier[-1]}" if earlier else "no earlier step: retraining"
        reason = noise.error.split(" (")[0].split(": checksum")[0].rstrip(".")
        self.warn(
          f"[checkpoint] {reason}; moved it to {moved.name} (details in its restore_error.txt) "
          f"and {then}"
        )
        continue
      # Restored arrays come back committed to a device; jit keys its cache on
      # that, so hand back plain (uncommitted) arrays like freshly built ones, or
      # the first step after a restore would compile twice. Arrays restored onto a
      # mesh (the targets' NamedShardings) stay there: placement is the point.
      fresh = lambda t: jax.tree.map(_uncommitted, t)
      return fresh(params), fresh(opt_state), step
    return None

  def _set_aside(self, step: int) -> pathlib.Path:
    target = self.directory / f"damaged-{step}"
    n = 1
    while target.exists():
      n += 1
      target = self.directory / f"damaged-{step}-{n}"
    (self.directory / str(step)).rename(target)
    return target


class _Captured:
  """What a restore attempt printed (``text``) and its error (``error``, "" if none)."""

  text = ""
  error = ""


@contextlib.contextmanager
def _stderr_captured(out: _Captured):
  """Holds back what is written to file descriptor 2; replays it unless ``out.error`` is set.

  When a step's files are damaged, orbax's reader threads print tracebacks of
  their cancelled reads (some only when the abandoned coroutines are collected):
  they go to ``out.text`` (kept beside the damaged step), not the terminal,
  which gets one line instead.
  """
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as tmp:
    os.dup2(tmp.fileno(), 2)
    try:
      yield
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      tmp.seek(0)
      out.text = tmp.read().decode(errors="replace")
      if out.text and not out.error:
        sys.stderr.write(out.text)  # nothing is hidden when the restore succeeds


def _uncommitted(x: jax.Array) -> jax.Array:
  """``x`` as a plain array, unless it lies on a mesh."""
  if isinstance(x.sharding, jax.sharding.NamedSharding):
    return x
  return jnp.asarray(np.asarray(x))


def set_aside(path: pathlib.Path) -> pathlib.Path:
  """Renames a damaged cache file to ``<name>.damaged[-n]`` (kept, never deleted)."""
  target = path.with_name(path.name + ".damaged")
  n = 1
  while target.exists():
    n += 1
    target = path.with_name(f"{path.name}.damaged-{n}")
  path.rename(target)
  return target


def write_json(path: pathlib.Path, record) -> None:
  """Writes JSON atomically (a temporary file renamed into place): a killed job leaves the
  old file or the new one, never half of one.

  Example:
    >>> import pathlib, tempfile
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "run.json"
    >>> write_json(p, {"a": 1}); read_json(p)
    {'a': 1}
  """
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(json.dumps(record))
  os.replace(tmp, path)


def read_json(path: pathlib.Path, warn: Callable[[str], None] = _warn):
  """The record in ``path``; None if it is missing, or damaged (then reported and set aside)."""
  if not path.is_file():
    return None
  try:
    record = json.loads(path.read_text())
    if not isinstance(record, dict):
      raise ValueError("not a JSON object")
  except (ValueError, UnicodeDecodeError) as e:
    moved = set_aside(path)
    warn(f"[cache] {path} is damaged ({e}); moved it to {moved.name}; running it again")
    return None
  return record
