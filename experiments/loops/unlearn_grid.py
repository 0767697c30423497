"""The unlearning grid: a run per (loss, optimizer, lr, seed), each from the fine-tuned model.

:func:`cells` lists the grid and names each run's record, :func:`budget` gives the
steps and warm-up every run shares, and :class:`UnlearningRun` runs one cell: its
batches (de-attribution's on-policy rollouts for a ``DeAttr`` loss), the
unlearning loop, the evaluation, the optional export and the record that
:func:`experiments.loops.grid.run_cached` keeps.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from collections.abc import Callable, Sequence

from experiments.data.corpus import Corpus
from experiments.evaluation.report import brief
from experiments.loops import losses, optimizers, rollout
from experiments.loops.unlearn import UnlearnBatches, Unlearner
from experiments.models.setup import ModelSetup


@dataclasses.dataclass(frozen=True)
class Cell:
  """One run of the grid."""

  loss: str
  optimizer: str
  lr: float
  seed: int


def cells(
  loss_names: Sequence[str],
  optimizer_names: Sequence[str],
  lrs: Sequence[float],
  seeds: Sequence[int],
  run_key: str,
) -> list[tuple[str, Cell]]:
  """``(record name, cell)`` of every run, seed-major.

  Seed-major: an interrupted job still has whole grids for its first seeds (each
  step function is compiled once per optimizer and loss pair either way).

  Example:
    >>> cells(["NPO+GD"], ["adamw"], [1e-3], [0, 1], "k")[1]
    ('NPO_GD-adamw-lr0.001-s1-k', Cell(loss='NPO+GD', optimizer='adamw', lr=0.001, seed=1))
  """
  grid = [
    Cell(loss, opt, lr, seed)
    for seed in seeds
    for loss in loss_names
    for opt in optimizer_names
    for lr in lrs
  ]
  return [
    (f"{c.loss.replace('+', '_')}-{c.optimizer}-lr{c.lr:g}-s{c.seed}-{run_key}", c) for c in grid
  ]


def budget(
  n_forget: int, batch_size: int, recipe: optimizers.Recipe, steps: int | None, epochs: int
) -> tuple[int, int]:
  """``(steps, warmup)`` of every run: ``steps``, or ``epochs`` epochs of forget batches.

  An epoch is one pass over the forget set in the recipe's alternation
  (``forget_steps`` forget steps, then ``retain_steps`` retain steps); the
  warm-up is one epoch.

  Example:
    >>> budget(10, 4, optimizers.Recipe(forget_steps=1, retain_steps=5), None, 5)
    (90, 18)
  """
  n_forget_batches = math.ceil(n_forget / batch_size)
  period = recipe.forget_steps + recipe.retain_steps
  per_epoch = period * n_forget_batches // recipe.forget_steps
  return (steps if steps is not None else epochs * per_epoch), per_epoch


def needs_rollouts(loss_names: Sequence[str]) -> bool:
  """Whether any loss is de-attribution (then runs need the owner classifier and rollouts)."""
  return any(rollout.is_deattr(losses.parse_loss(n)[0]) for n in loss_names)


class UnlearningRun:
  """Runs one cell of the grid (``run(cell, name, tag) -> record``).

  Args:
    m: the model (apply, batch placement, LoRA base, export).
    start: the fine-tuned parameters every run starts from (also the frozen reference).
    corpus: the data.
    unlearner: the loop (compiled steps, budget).
    batch_size: sequences per step.
    evaluate: a whole model state -> its evaluation.
    rollouts: de-attribution's batch maker (needed by ``DeAttr`` losses), or None.
    export_to: a folder for each unlearned model (``{name}``), or None.
    log: where the one-line summary of a run goes.
    export_format: ``hf`` or ``gguf`` (see :meth:`~experiments.models.setup.ModelSetup.export`).
  """

  def __init__(
    self,
    m: ModelSetup,
    start,
    corpus: Corpus,
    unlearner: Unlearner,
    batch_size: int,
    evaluate: Callable[..., dict],
    rollouts: rollout.Rollouts | None = None,
    export_to: pathlib.Path | None = None,
    log: Callable[[str], None] = print,
    export_format: str = "hf",
  ):
    self.m, self.start, self.corpus, self.unlearner = m, start, corpus, unlearner
    self.batch_size, self.evaluate, self.rollouts = batch_size, evaluate, rollouts
    self.export_to, self.log, self.export_format = export_to, log, export_format

  def batches(self, forget: str, retain: str, seed: int):
    """The batch source of a run of ``forget+retain`` with ``seed``."""
    if rollout.is_deattr(forget):
      return self.rollouts.batches(forget, retain, self.batch_size, seed)
    roles = losses.roles_for(forget, retain)
    return UnlearnBatches(self.corpus, self.m.encoder, roles, self.batch_size, seed)

  def __call__(self, cell: Cell, name: str, tag: str) -> dict:
    """Unlearns, evaluates and (with ``export_to``) exports ``cell``; returns its record."""
    forget, retain = losses.parse_loss(cell.loss)
    batches = self.batches(forget, retain, cell.seed)
    res = self.unlearner.run(
      self.start,
      self.start,
      self.m.placed(batches),
      cell.optimizer,
      forget,
      retain,
      cell.lr,
      desc=f"{tag} {cell.loss} {cell.optimizer} lr={cell.lr:g} seed={cell.seed}",
      frozen=self.m.frozen,
      seed=cell.seed,
    )
    ev = self.evaluate(self.m.full(res.params))
    if self.export_to is not None:
      self.m.export(res.params, self.export_to / name, self.export_format)
    rec = {
      "loss": cell.loss,
      "optimizer": cell.optimizer,
      "lr": cell.lr,
      "seed": cell.seed,
      "steps": self.unlearner.steps,
      "wall_s": res.wall_s,
      "state_bytes": res.state_bytes,
      "eval": ev,
      "log": res.log,
    }
    if isinstance(batches, rollout.RolloutBatches):
      rec["rollouts"] = batches.history  # per forget step: reward, attribution, seconds
    self.log(
      f"{tag} {cell.loss:8s} {cell.optimizer:20s} lr={cell.lr:<7g} seed={cell.seed}: "
      f"{brief(ev)} | {res.wall_s:.1f}s | state {res.state_bytes:,} B"
    )
    return rec
