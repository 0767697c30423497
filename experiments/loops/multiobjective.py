"""Training with K objectives (tasks, or safety and utility) and the diagnostics of their conflict.

Optimizers, all on the same budget (steps, sequences per step, learning-rate
shape, clipping, weight decay; see :func:`build`):

* ``joint``: AdamW on the sum of the K objectives' losses every step (each
  step takes ``batch_size // K`` sequences of every objective).
* ``alternating``: AdamW on one objective per step, in the cycle
  ``run_lengths`` gives (``(1, 1, 1)``: 0, 1, 2, 0, ...), ``batch_size``
  sequences of the active objective; one AdamW state for all objectives.
* any ``dualoptim_jax`` alias by name (``dualoptim``, ``dualoptim_plus``,
  ``dualoptim_plus_8bit``, ``dualoptim_plus_muon``, ...), built with
  ``run_lengths`` (K objectives: one delta pair per objective), on the same
  cycle, passed as ``objective=``.

As in :mod:`experiments.loops.unlearn`, the data of one step travels batch ->
loss(objective) -> grads -> ``tx.update(objective=)`` -> apply, and one compiled
step per optimizer serves every learning rate and seed (the objective and the
peak learning rate are traced).

Logged every ``diag_every`` steps: the objectives' gradient cosines (every
optimizer) and, for the DualOptim+ family, delta cosines and base shares
(:mod:`experiments.evaluation.multiobjective_diagnostics`).
"""

from __future__ import annotations

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

import dualoptim_jax
from experiments.data.batching import Batch, Encoder
from experiments.evaluation.multiobjective_diagnostics import (
  cosine_matrix,
  delta_conflict,
  is_plus,
  pairs_of,
)
from experiments.loops import losses, optimizers

JOINT, ALTERNATING = "joint", "alternating"
PROBE_SIZE = 64
# Logit floats of one slice of a probe batch (256 MB): a 49k-vocabulary checkpoint's probe is
# taken in slices, the in-house model's (vocabulary ~1k) in one piece.
PROBE_LOGITS = 2**26
DEFAULT_OPTIMIZERS = (
  JOINT,
  ALTERNATING,
  "dualoptim",
  "dualoptim_plus",
  "dualoptim_plus_8bit",
  "dualoptim_plus_muon",
)


def available(name: str) -> bool:
  """Whether :func:`build` knows ``name``."""
  return name in (JOINT, ALTERNATING) or optimizers.available(name) and name != "adamw"


def build(name: str, schedule, recipe: optimizers.Recipe, params, run_lengths: tuple[int, ...]):
  """The named optimizer (global-norm clipping included) for ``len(run_lengths)`` objectives.

  ``recipe.forget_steps``/``retain_steps`` are ignored: ``run_lengths`` is the cycle.

  Example:
    >>> import jax.numpy as jnp
    >>> p = {"w": jnp.ones((2, 3))}
    >>> tx = build("dualoptim_plus", 1e-3, optimizers.Recipe(), p, (1, 1, 1))
    >>> len(dualoptim_jax.find_dualoptim_plus_state(tx.init(p)).delta_mu)
    3
  """
  if name in (JOINT, ALTERNATING):
    return optimizers.build("adamw", schedule, recipe, params)
  if not available(name):
    raise optimizers.OptimizerUnavailable(
      f"unknown optimizer {name!r}; use {JOINT}, {ALTERNATING} or a dualoptim_jax name"
    )
  tx = getattr(dualoptim_jax, name)(
    schedule,
    b1=recipe.b1,
    b2=recipe.b2,
    eps=recipe.eps,
    weight_decay=recipe.weight_decay,
    mask=optimizers.decay_mask(params),
    run_lengths=tuple(run_lengths),
  )
  return optax.chain(optax.clip_by_global_norm(recipe.clip_norm), tx)


def probe_gradient(apply, params, batch: Batch):
  """The gradient of ``batch``'s mean answer cross-entropy (``losses.ce_mean``).

  A batch whose logits would exceed :data:`PROBE_LOGITS` floats is taken in equal slices
  (halving until they fit), each slice's summed cross-entropy differentiated in turn: the same
  gradient up to summation order, with one slice's logits in memory.

  Example:
    >>> import jax.numpy as jnp
    >>> apply = lambda p, ids, mask: p["w"][ids]
    >>> ids = jnp.array([[0, 1, 2], [2, 1, 0]]); b = Batch(ids, ids * 0 + 1, ids * 0.0 + 1)
    >>> probe_gradient(apply, {"w": jnp.zeros((3, 3))}, b)["w"].shape
    (3, 3)
  """
  n, length = batch.ids.shape
  vocab = jax.eval_shape(apply, params, batch.ids[:1], batch.mask[:1]).shape[-1]
  slices = 1
  while n % (2 * slices) == 0 and n // slices * length * vocab > PROBE_LOGITS:
    slices *= 2
  if slices == 1:
    return jax.grad(losses.ce_mean, argnums=1)(apply, params, batch)

  def add(total, part):
    part = Batch(*part)
    tokens = jnp.sum(part.targets[:, 1:])  # ce_mean's denominator: undo it, divide once below
    grad = jax.grad(lambda p: losses.ce_mean(apply, p, part) * tokens)(params)
    return jax.tree.map(jnp.add, total, grad), None

  parts = tuple(a.reshape(slices, n // slices, *a.shape[1:]) for a in batch)
  total, _ = jax.lax.scan(add, jax.tree.map(jnp.zeros_like, params), parts)
  count = jnp.maximum(jnp.sum(batch.targets[:, 1:]), 1.0)
  return jax.tree.map(lambda g: g / count, total)


def schedule_of(run_lengths: tuple[int, ...], steps: int) -> list[int]:
  """The objective of each step: objective ``o`` for ``run_lengths[o]`` steps, cycling.

  Example:
    >>> schedule_of((1, 2), 5)
    [0, 1, 1, 0, 1]
  """
  return [int(dualoptim_jax.scheduled_objective(k, run_lengths)) for k in range(steps)]


class ObjectiveBatches:
  """Fixed-shape batches of K objectives' (prompt, target) pairs.

  Each objective's examples come from its own shuffle, restarted when
  exhausted (seeded). A step carries a batch of every objective (fixed
  shapes: one compiled step); only the active one draws new examples.

  Args:
    objectives: per objective, its (prompt, target) training pairs.
    encoder: the tokeniser.
    batch_size: sequences per step (joint: ``batch_size // K`` per objective).
    seed: shuffling seed.
  """

  def __init__(self, objectives, encoder: Encoder, batch_size: int, seed: int):
    self.rng = np.random.default_rng(seed)
    self.k, self.batch_size = len(objectives), batch_size
    self.arrays = [encoder.batch(list(pairs)) for pairs in objectives]
    self.sizes = [len(pairs) for pairs in objectives]
    self.queues: list[list[int]] = [[] for _ in objectives]

  def _take(self, o: int, n: int) -> Batch:
    q = self.queues[o]
    while len(q) < n:
      q.extend(self.rng.permutation(self.sizes[o]).tolist())
    self.queues[o], idx = q[n:], np.array(q[:n])
    return Batch(*(a[idx] for a in self.arrays[o]))

  def idle(self, o: int, n: int | None = None) -> Batch:
    """A fixed batch of ``n`` (default ``batch_size``) sequences of objective ``o``.

    It fills the inactive slots of a step (never trained on) and, larger, is the
    probe the gradient cosines are measured on.
    """
    idx = np.arange(n or self.batch_size) % self.sizes[o]
    return Batch(*(a[idx] for a in self.arrays[o]))

  def next(self, objective: int) -> tuple[Batch, ...]:
    """The batches of an alternating step on ``objective``."""
    return tuple(
      self._take(o, self.batch_size) if o == objective else self.idle(o) for o in range(self.k)
    )

  def joint(self) -> tuple[Batch, ...]:
    """The batches of a joint step: ``batch_size // K`` new sequences of every objective."""
    return tuple(self._take(o, max(self.batch_size // self.k, 1)) for o in range(self.k))


@dataclasses.dataclass
class TrainResult:
  """A finished run: parameters, per-step log, diagnostics, timing and state size."""

  params: object
  log: list[dict]
  diagnostics: list[dict]
  wall_s: float
  state_bytes: int


class MultiObjectiveTrainer:
  """Runs K-objective training jobs, caching one compiled step per optimizer.

  Args:
    apply: ``apply(params, ids, mask) -> logits``.
    names: the objectives' names (K = their number).
    recipe: clipping, betas, eps and weight decay shared by every optimizer.
    run_lengths: the objective cycle of the alternating optimizers.
    steps: optimizer steps (same for every optimizer).
    warmup: warm-up steps of the linear warm-up / linear decay shape.
    diag_every: steps between diagnostics (and at the end).
  """

  def __init__(self, apply, names, recipe, run_lengths, steps: int, warmup: int, diag_every: int):
    self.apply, self.names, self.recipe = apply, tuple(names), recipe
    self.run_lengths, self.steps, self.warmup = tuple(run_lengths), steps, warmup
    self.diag_every = max(diag_every, 1)
    self.shape = optimizers.lr_shape(warmup, steps)
    self._compiled: dict = {}
    k = len(self.names)

    def probe(params, batches):
      return cosine_matrix([probe_gradient(apply, params, b) for b in batches])

    self._probe = jax.jit(probe)
    self._conflict = jax.jit(delta_conflict)
    self.k = k

  def _step_fn(self, name: str, params):
    if name in self._compiled:
      return self._compiled[name]
    tx = build(name, self.shape, self.recipe, params, self.run_lengths)
    apply, k = self.apply, self.k

    def loss_fn(p, batches, objective):
      per = [losses.ce_mean(apply, p, b) for b in batches] if name == JOINT else None
      if per is not None:
        return sum(per), jnp.stack(per)
      branches = [lambda p, bs, o=o: losses.ce_mean(apply, p, bs[o]) for o in range(k)]
      loss = jax.lax.switch(objective, branches, p, batches)
      return loss, jnp.zeros((k,), jnp.float32).at[objective].set(loss)

    # Params and state are donated: updated in place, no second copy of either per step.
    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, opt_state, batches, objective, peak_lr):
      (loss, per), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batches, objective)
      with jax.numpy_dtype_promotion("standard"):  # optax.adamw: float ** int32 count
        updates, opt_state = tx.update(grads, opt_state, params, objective=objective)
      updates = jax.tree.map(lambda u: u * peak_lr.astype(u.dtype), updates)
      return optax.apply_updates(params, updates), opt_state, per

    self._compiled[name] = (tx, step)
    return tx, step

  def _diagnose(self, k_step: int, params, opt_state, probe) -> dict:
    rec: dict = {"step": k_step}
    grad_cos = np.asarray(self._probe(params, probe))
    rec["grad_cosine"] = {p: float(grad_cos[i, j]) for i, j, p in pairs_of(self.names)}
    if is_plus(opt_state):
      c = jax.device_get(self._conflict(opt_state))
      rec["delta_cosine"] = {p: float(c["delta_cosine"][i, j]) for i, j, p in pairs_of(self.names)}
      rec["base_share"] = {n: float(c["base_share"][o]) for o, n in enumerate(self.names)}
    return rec

  def run(self, params, batches: ObjectiveBatches, name: str, peak_lr: float, *, desc: str):
    """Trains from ``params`` for ``self.steps`` steps; returns a :class:`TrainResult`."""
    tx, step = self._step_fn(name, params)
    params = jax.tree.map(jnp.copy, params)  # the step donates; the caller keeps its params
    opt_state = tx.init(params)
    lr = jnp.asarray(peak_lr, jnp.float32)
    # 64 sequences per objective: a single batch's gradient is mostly sampling noise
    probe = tuple(batches.idle(o, PROBE_SIZE) for o in range(self.k))
    plan = schedule_of(self.run_lengths, self.steps)
    pending, diags, t0 = [], [], time.perf_counter()
    t_diag = 0.0
    for k in tqdm(range(self.steps), desc=desc, leave=False):
      if k == 1:  # time steady-state steps only (step 0 includes compilation)
        jax.block_until_ready(params)
        t0 = time.perf_counter()
      if k % self.diag_every == 0 and k:
        t = time.perf_counter()
        diags.append(self._diagnose(k, params, opt_state, probe))
        t_diag += time.perf_counter() - t
      objective = plan[k]
      b = batches.joint() if name == JOINT else batches.next(objective)
      params, opt_state, per = step(params, opt_state, b, jnp.asarray(objective, jnp.int32), lr)
      pending.append((k, objective, per))
    jax.block_until_ready(params)
    wall = (time.perf_counter() - t0 - t_diag) * self.steps / max(self.steps - 1, 1)
    diags.append(self._diagnose(self.steps, params, opt_state, probe))
    log = []
    for k, objective, per in pending:
      per = np.asarray(per)
      entry = {"step": k, "objective": "all" if name == JOINT else self.names[objective]}
      entry["losses"] = {
        n: float(per[o]) for o, n in enumerate(self.names) if name == JOINT or o == objective
      }
      entry["lr"] = float(self.shape(k)) * peak_lr
      log.append(entry)
    return TrainResult(params, log, diags, wall, optimizers.state_bytes(opt_state))
