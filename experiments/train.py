"""Training loops: fine-tuning (original model and retain-only oracle) and unlearning.

Both loops are functional: the NNX model is split once into a graph
definition and a parameter state, and the jitted steps take and return the
state. The unlearning step is compiled once per (optimizer, loss pair) and
reused for every learning rate and seed: the objective and the peak learning
rate are traced arguments.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

import dualoptim_jax
from experiments import losses, optimizers
from experiments.batching import Batch, Encoder, round_up
from experiments.checkpoint import Checkpoints
from experiments.data import QA, Corpus


def make_apply(graphdef):
  """``apply(params, ids, mask) -> logits`` for an ``nnx`` graph definition."""
  from flax import nnx

  return lambda params, ids, mask: nnx.merge(graphdef, params)(ids, mask)


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
  """``(tx, step)`` for fine-tuning; ``step(params, opt_state, batch, lr)`` is jitted once.

  The learning rate is a traced argument (AdamW's update is linear in it), so
  the same compiled step serves the original model and the oracle, whose
  schedules differ in length.
  """
  tx = optax.chain(
    optax.clip_by_global_norm(1.0),
    optax.adamw(
      1.0, b1=0.9, b2=0.98, weight_decay=weight_decay, mask=optimizers.decay_mask(params)
    ),
  )

  @jax.jit
  def step(params, opt_state, batch, lr):
    loss, grads = jax.value_and_grad(lambda p: losses.ce_mean(apply, p, batch))(params)
    with jax.numpy_dtype_promotion("standard"):  # optax's bias correction: float ** int32
      updates, opt_state = tx.update(grads, opt_state, params)
    updates = jax.tree.map(lambda u: u * lr.astype(u.dtype), updates)
    return optax.apply_updates(params, updates), opt_state, loss

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
  if ckpt.latest() is not None:
    params, opt_state, meta = ckpt.restore(ckpt.latest(), params, opt_state)
    start = int(meta["epoch"])
  history: list[float] = []
  if start >= cfg.epochs:
    ckpt.close()
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
      params, opt_state, loss = step(params, opt_state, encoder.batch(chunk, length), lr)
      epoch_losses.append(loss)
    history.append(float(np.mean(jax.device_get(epoch_losses))))
    bar.set_postfix(loss=f"{history[-1]:.3f}")
    if (epoch + 1) % cfg.save_every == 0 or epoch + 1 == cfg.epochs:
      ckpt.save(epoch + 1, params, opt_state, {"epoch": epoch + 1, "loss": history[-1]})
  ckpt.close()
  return params, history


class UnlearnBatches:
  """Forget/retain batches in the reference's sampler pattern.

  Forget and retain indices come from independent shuffles that restart when
  exhausted; each IDK target is a refusal drawn per example with the seed.
  Every step carries all roles the loss pair reads (fixed shapes, so one
  compiled step); only the active side draws new examples, and the objective
  picks which loss branch runs.
  """

  def __init__(self, corpus: Corpus, encoder: Encoder, roles, batch_size: int, seed: int):
    rng = np.random.default_rng(seed)
    self.rng, self.batch_size, self.roles = rng, batch_size, tuple(roles)
    f_idk = [corpus.idk[i] for i in rng.integers(0, len(corpus.idk), len(corpus.forget))]
    r_idk = [corpus.idk[i] for i in rng.integers(0, len(corpus.idk), len(corpus.retain))]
    f_q = [q.question for q in corpus.forget]
    r_q = [q.question for q in corpus.retain]
    sets = {
      "forget": list(zip(f_q, [q.answer for q in corpus.forget], strict=True)),
      "forget_idk": list(zip(f_q, f_idk, strict=True)),
      "retain": list(zip(r_q, [q.answer for q in corpus.retain], strict=True)),
      "retain_idk": list(zip(r_q, r_idk, strict=True)),
    }
    self.arrays = {r: encoder.batch(sets[r]) for r in self.roles}
    self.sizes = {"forget": len(corpus.forget), "retain": len(corpus.retain)}
    self.queues: dict[str, list[int]] = {"forget": [], "retain": []}
    self.idle = {s: np.arange(batch_size) % n for s, n in self.sizes.items()}

  def _take(self, side: str) -> np.ndarray:
    q = self.queues[side]
    while len(q) < self.batch_size:
      q.extend(self.rng.permutation(self.sizes[side]).tolist())
    self.queues[side] = q[self.batch_size :]
    return np.array(q[: self.batch_size])

  def next(self, objective: int) -> dict[str, Batch]:
    """The batch dict of one step."""
    active = "forget" if objective == dualoptim_jax.FORGET else "retain"
    idx = {s: self._take(s) if s == active else self.idle[s] for s in self.sizes}
    return {
      r: Batch(*(a[idx["forget" if r.startswith("forget") else "retain"]] for a in arrays))
      for r, arrays in self.arrays.items()
    }


@dataclasses.dataclass
class UnlearnResult:
  params: object
  log: list[dict]
  wall_s: float
  state_bytes: int


class Unlearner:
  """Runs unlearning jobs, caching one compiled step per (optimizer, loss pair).

  Args:
    apply: ``apply(params, ids, mask) -> logits``.
    recipe: the shared :class:`~experiments.optimizers.Recipe`.
    steps: total optimizer steps (same budget for every optimizer).
    warmup: warm-up steps (one epoch of forget batches).
  """

  def __init__(self, apply, recipe: optimizers.Recipe, steps: int, warmup: int):
    self.apply, self.recipe, self.steps, self.warmup = apply, recipe, steps, warmup
    self._compiled: dict = {}

  def _step_fn(self, opt_name: str, forget: str, retain: str, params):
    key = (opt_name, forget, retain)
    if key in self._compiled:
      return self._compiled[key]
    tx = optimizers.build(
      opt_name, optimizers.lr_shape(self.warmup, self.steps), self.recipe, params
    )
    f_loss, r_loss = losses.FORGET_LOSSES[forget], losses.RETAIN_LOSSES[retain]
    apply = self.apply

    def loss_fn(p, ref, batches, objective):
      return jax.lax.cond(
        objective == dualoptim_jax.FORGET,
        lambda: f_loss(apply, p, ref, batches),
        lambda: r_loss(apply, p, ref, batches),
      )

    @jax.jit
    def step(params, opt_state, ref, batches, objective, peak_lr):
      loss, grads = jax.value_and_grad(loss_fn)(params, ref, batches, objective)
      with jax.numpy_dtype_promotion("standard"):  # optax.adamw: float ** int32 count
        updates, opt_state = tx.update(grads, opt_state, params, objective=objective)
      updates = jax.tree.map(lambda u: u * peak_lr.astype(u.dtype), updates)
      return optax.apply_updates(params, updates), opt_state, loss, optax.tree.norm(grads)

    self._compiled[key] = (tx, step)
    return tx, step

  def run(
    self,
    params,
    ref_params,
    batches: UnlearnBatches,
    opt_name: str,
    forget: str,
    retain: str,
    peak_lr: float,
    *,
    desc: str = "unlearn",
  ) -> UnlearnResult:
    """Unlearns from ``params`` for ``self.steps`` steps; returns params and per-step log."""
    tx, step = self._step_fn(opt_name, forget, retain, params)
    opt_state = tx.init(params)
    period = self.recipe.forget_steps + self.recipe.retain_steps
    lr = jnp.asarray(peak_lr, jnp.float32)
    shape = optimizers.lr_shape(self.warmup, self.steps)
    log, pending = [], []
    t0 = t1 = time.perf_counter()
    for k in tqdm(range(self.steps), desc=desc, leave=False):
      if k == 1:  # time steady-state steps only (step 0 may include compilation)
        jax.block_until_ready(params)
        t1 = time.perf_counter()
      objective = (
        dualoptim_jax.FORGET if k % period < self.recipe.forget_steps else dualoptim_jax.RETAIN
      )
      b = batches.next(objective)
      params, opt_state, loss, gnorm = step(
        params, opt_state, ref_params, b, jnp.asarray(objective, jnp.int32), lr
      )
      pending.append((k, objective, loss, gnorm))
    jax.block_until_ready(params)
    t2 = time.perf_counter()
    wall = (t2 - t1) * self.steps / max(self.steps - 1, 1) if self.steps > 1 else t2 - t0
    for k, objective, loss, gnorm in pending:
      log.append(
        {
          "step": k,
          "objective": "forget" if objective == dualoptim_jax.FORGET else "retain",
          "loss": float(loss),
          "grad_norm": float(gnorm),
          "lr": float(shape(k)) * peak_lr,
        }
      )
    return UnlearnResult(params, log, wall, optimizers.state_bytes(opt_state))
