"""Fine-tuning loop (original model and retain-only oracle), resumable from orbax checkpoints.

The NNX model is split once into a graph definition and a parameter state; the
jitted step takes and returns the state, and the learning rate is a traced
argument so one compiled step serves both models. A LoRA model trains its
adapters only: its base weights ride along as the step's ``frozen`` argument.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from experiments.data.batching import Encoder, round_up
from experiments.data.corpus import QA
from experiments.loops import losses, optimizers
from experiments.loops.checkpoint import Checkpoints
from experiments.models import with_frozen


@dataclasses.dataclass(frozen=True)
class FineTuneConfig:
  """Fine-tuning hyperparameters (AdamW, warm-up then cosine decay to 10 %).

  Attributes:
    epochs: passes over the training set.
    batch_size: sequences per step.
    lr: peak learning rate.
    weight_decay: decoupled weight decay on matrices.
    save_every: epochs between checkpoints.
  """

  epochs: int = 40
  batch_size: int = 32
  lr: float = 3e-3
  weight_decay: float = 0.01
  save_every: int = 10


def make_finetune_step(apply, params, weight_decay: float):
  """``(tx, step)`` for fine-tuning; ``step(params, opt_state, batch, lr, frozen)`` is jitted once.

  The learning rate is a traced argument (AdamW's update is linear in it), so
  the same compiled step serves the original model and the oracle, whose
  schedules differ in length. ``frozen`` is the untrained state (None, or a
  LoRA model's base weights).
  """
  tx = optax.chain(
    optax.clip_by_global_norm(1.0),
    optax.adamw(
      1.0, b1=0.9, b2=0.98, weight_decay=weight_decay, mask=optimizers.decay_mask(params)
    ),
  )
  tx = optimizers.for_params(tx, params)

  @jax.jit
  def step(params, opt_state, batch, lr, frozen):
    run = with_frozen(apply, frozen)
    loss, grads = jax.value_and_grad(lambda p: losses.ce_mean(run, p, batch))(params)
    with jax.numpy_dtype_promotion("standard"):  # optax's bias correction: float ** int32
      updates, opt_state = tx.update(grads, opt_state, params)
      updates = jax.tree.map(lambda u: u * lr.astype(u.dtype), updates)
      params = optax.apply_updates(params, updates)  # bf16 weights: float32 sum, rounded once
    return params, opt_state, loss

  return tx, step


def fine_tune(
  apply,
  params,
  data: tuple[QA, ...],
  encoder: Encoder,
  cfg: FineTuneConfig,
  ckpt_dir: pathlib.Path,
  *,
  seed: int = 0,
  desc: str = "fine-tune",
  step_fn=None,
  frozen=None,
  place_batch=None,
):
  """Trains ``params`` on ``data`` (mean answer CE), resuming from ``ckpt_dir``.

  Args:
    apply: ``apply(params, ids, mask) -> logits``.
    params: initial parameters.
    data: training pairs.
    encoder: tokeniser.
    cfg: hyperparameters.
    ckpt_dir: checkpoint directory (resumed from when it holds a step).
    seed: shuffling seed.
    desc: progress-bar label.
    step_fn: a ``(tx, step)`` pair from :func:`make_finetune_step` to reuse.
    frozen: state merged into the model but not trained (a LoRA model's base).
    place_batch: puts each batch where the step wants it (e.g. split over a
      mesh's ``data`` axis); None leaves it to ``jit``.

  Returns:
    ``(params, losses)``: the trained parameters and the mean loss per epoch of
    this call (empty when the checkpoint was already complete).
  """
  n_batches = math.ceil(len(data) / cfg.batch_size)
  total = cfg.epochs * n_batches
  schedule = optax.warmup_cosine_decay_schedule(
    0.0, cfg.lr, max(total // 20, 1), total, end_value=cfg.lr * 0.1
  )
  tx, step = step_fn or make_finetune_step(apply, params, cfg.weight_decay)
  opt_state = tx.init(params)
  ckpt = Checkpoints(ckpt_dir)
  start = 0
  restored = ckpt.restore_latest(params, opt_state)  # damaged steps are reported and skipped
  if restored is not None:
    params, opt_state, start = restored  # the step is the number of finished epochs
  history: list[float] = []
  if start >= cfg.epochs:
    return params, history

  pairs = [(q.question, q.answer) for q in data]
  rng = np.random.default_rng(seed)
  for _ in range(start):  # replay the shuffles of finished epochs
    rng.permutation(len(pairs))
  bar = tqdm(range(start, cfg.epochs), desc=desc, leave=False)
  for epoch in bar:
    order = rng.permutation(len(pairs))
    order = np.concatenate([order, order[: n_batches * cfg.batch_size - len(order)]])
    epoch_losses = []
    for b in range(n_batches):
      chunk = [pairs[i] for i in order[b * cfg.batch_size : (b + 1) * cfg.batch_size]]
      bucket = 16 if encoder.max_len <= 64 else 32  # few distinct shapes, little padding
      length = min(round_up(encoder.max_pair_len(chunk), bucket), encoder.max_len)
      lr = jnp.asarray(schedule(epoch * n_batches + b), jnp.float32)
      batch = encoder.batch(chunk, length)
      batch = batch if place_batch is None else place_batch(batch)
      params, opt_state, loss = step(params, opt_state, batch, lr, frozen)
      epoch_losses.append(loss)
    history.append(float(np.mean(jax.device_get(epoch_losses))))
    bar.set_postfix(loss=f"{history[-1]:.3f}")
    if (epoch + 1) % cfg.save_every == 0 or epoch + 1 == cfg.epochs:
      ckpt.save(epoch + 1, params, opt_state)
  return params, history
