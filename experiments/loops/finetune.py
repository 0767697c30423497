"""Fine-tuning loop (original model and retain-only oracle), resumable from orbax checkpoints.

:func:`finetuned_and_oracle` is the TOFU job's phase (both models, cached);
:func:`fine_tune_model` trains a :class:`~experiments.models.setup.ModelSetup`
(also the multi-objective jobs' base model).

The NNX model is split once into a graph definition and a parameter state; the
jitted step takes and returns the state, and the learning rate is a traced
argument so one compiled step serves both models. A LoRA model trains its
adapters only: its base weights ride along as the step's ``frozen`` argument.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import pathlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from experiments.data.batching import Encoder, round_up
from experiments.data.corpus import QA, Corpus
from experiments.loops import losses, optimizers
from experiments.loops.checkpoint import Checkpoints
from experiments.models import with_frozen

if TYPE_CHECKING:
  from experiments.models.setup import ModelSetup


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

  # Params and state are donated: updated in place, no second copy of either per step.
  @functools.partial(jax.jit, donate_argnums=(0, 1))
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
  params = jax.tree.map(jnp.copy, params)  # the step donates; the caller keeps its params
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


def fine_tune_model(
  m: ModelSetup,
  data: tuple[QA, ...],
  cfg: FineTuneConfig,
  ckpt_dir: pathlib.Path,
  *,
  desc: str,
  step_fn=None,
) -> tuple[Any, list[float], float]:
  """:func:`fine_tune` of the model ``m`` from its initial state: ``(params, losses, seconds)``."""
  t0 = time.perf_counter()
  params, history = fine_tune(
    m.apply,
    m.params,
    data,
    m.encoder,
    cfg,
    ckpt_dir,
    desc=desc,
    step_fn=step_fn,
    frozen=m.frozen,
    place_batch=m.place_batch,
  )
  return params, history, time.perf_counter() - t0


@dataclasses.dataclass
class Tuned:
  """The fine-tuned model and the retain-only oracle every unlearning run is measured against.

  Attributes:
    full: the fine-tuned model's trained state (``params``-shaped: adapters with LoRA).
    oracle: the oracle's state (``params``-shaped, or a whole state when given as is).
    seconds: fine-tuning time of each (``full``, ``oracle``; ~0 when cached, 0 when given).
  """

  full: Any
  oracle: Any
  seconds: dict[str, float]


def finetuned_and_oracle(
  m: ModelSetup,
  corpus: Corpus,
  cfg: FineTuneConfig,
  cache: pathlib.Path,
  *,
  oracle=None,
  log: Callable[[str], None] = print,
) -> Tuned:
  """Fine-tunes ``m`` on all the data and, from the same start, on the retain data only.

  Both are checkpointed under ``cache/full`` and ``cache/oracle``: an interrupted
  fine-tuning resumes and a finished one is read back. Given an ``oracle`` (a
  whole state: ``--oracle``), ``m`` already is the fine-tuned model (``--finetuned``)
  and nothing is trained.
  """
  if oracle is not None:
    full, history, t_full, t_oracle = m.params, [], 0.0, 0.0
  else:
    step_fn = make_finetune_step(m.apply, m.params, cfg.weight_decay)  # one for both models
    full, history, t_full = fine_tune_model(
      m, corpus.full_train(), cfg, cache / "full", desc="fine-tune (all data)", step_fn=step_fn
    )
    oracle, _, t_oracle = fine_tune_model(
      m,
      corpus.oracle_train(),
      cfg,
      cache / "oracle",
      desc="fine-tune (retain-only oracle)",
      step_fn=step_fn,
    )
  log(
    f"[fine-tune] {t_full:.0f}s (final epoch loss {history[-1] if history else 'cached'}); "
    f"oracle {t_oracle:.0f}s"
  )
  return Tuned(full, oracle, {"full": t_full, "oracle": t_oracle})
