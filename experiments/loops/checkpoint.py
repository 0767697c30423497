"""Orbax checkpoints of (params, optimizer state, metadata), resumable by step.

Used for the fine-tuned and retain-only oracle models: a re-run (or a run with
other optimizers) restores the finished model instead of training it again,
and an interrupted fine-tuning resumes from its last saved epoch.
"""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp


class Checkpoints:
  """A step-indexed checkpoint directory.

  Args:
    directory: where the steps live (created if missing).
    max_to_keep: how many steps to keep.
  """

  def __init__(self, directory: pathlib.Path, max_to_keep: int = 2):
    directory = pathlib.Path(directory).absolute()
    directory.mkdir(parents=True, exist_ok=True)
    self.manager = ocp.CheckpointManager(
      directory, options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
    )

  def latest(self) -> int | None:
    """The latest saved step, or None."""
    return self.manager.latest_step()

  def save(self, step: int, params, opt_state, meta: dict) -> None:
    """Saves a step and waits until it is on disk."""
    self.manager.save(
      step,
      args=ocp.args.Composite(
        params=ocp.args.StandardSave(params),
        opt_state=ocp.args.StandardSave(opt_state),
        meta=ocp.args.JsonSave(meta),
      ),
    )
    self.manager.wait_until_finished()

  def restore(self, step: int, params_like, opt_state_like):
    """Restores ``(params, opt_state, meta)`` with the structure of the ``*_like`` trees."""
    abstract = lambda t: jax.tree.map(ocp.utils.to_shape_dtype_struct, t)
    out = self.manager.restore(
      step,
      args=ocp.args.Composite(
        params=ocp.args.StandardRestore(abstract(params_like)),
        opt_state=ocp.args.StandardRestore(abstract(opt_state_like)),
        meta=ocp.args.JsonRestore(),
      ),
    )
    # Restored arrays come back committed to a device; jit keys its cache on
    # that, so hand back plain (uncommitted) arrays like freshly built ones, or
    # the first step after a restore would compile twice.
    fresh = lambda t: jax.tree.map(lambda x: jnp.asarray(np.asarray(x)), t)
    return fresh(out.params), fresh(out.opt_state), out.meta

  def close(self) -> None:
    """Releases the manager's resources."""
    self.manager.close()
