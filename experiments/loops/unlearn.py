"""Unlearning loop: forget/retain batches in the reference's pattern and the jitted step.

The step is compiled once per (optimizer, loss pair) and reused for every
learning rate and seed: the objective, the peak learning rate and the seed are
traced arguments. Data flows batch -> loss(objective) -> grads ->
``tx.update(objective=)`` -> apply. A method that trains only some weights (RMU:
:attr:`experiments.loops.losses.Loss.trainable`) multiplies the gradients and the
updates by its 0/1 mask, so the optimizer never moves the rest (weight decay
included) and clipping sees only what is trained.
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
from experiments.data.corpus import Corpus
from experiments.loops import losses, optimizers
from experiments.models import with_frozen


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

  def next(self, objective: int, params=None) -> dict[str, Batch]:
    """The batch dict of one step (``params``, the current ones, serve on-policy batch makers
    such as de-attribution's :class:`~experiments.loops.rollout.RolloutBatches`)."""
    del params
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
    recipe: the shared :class:`~experiments.loops.optimizers.Recipe`.
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
    f_loss, r_loss = losses.pair(forget, retain)
    trained = losses.trainable(forget, params)  # 0/1 multipliers, or None: train everything
    masked = (
      (lambda t: t) if trained is None else (lambda t: jax.tree.map(jnp.multiply, t, trained))
    )

    def loss_fn(p, ref, batches, objective, frozen, seed):
      apply = with_frozen(self.apply, frozen)  # frozen: a LoRA model's base weights, or None
      batches = {**batches, "seed": seed}  # RMU draws its control vector from the run's seed
      return jax.lax.cond(
        objective == dualoptim_jax.FORGET,
        lambda: f_loss(apply, p, ref, batches),
        lambda: r_loss(apply, p, ref, batches),
      )

    # Params and state are donated: updated in place, no second copy of either per step.
    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, opt_state, ref, batches, objective, peak_lr, frozen, seed):
      loss, grads = jax.value_and_grad(loss_fn)(params, ref, batches, objective, frozen, seed)
      grads = masked(grads)
      with jax.numpy_dtype_promotion("standard"):  # optax.adamw: float ** int32 count
        updates, opt_state = tx.update(grads, opt_state, params, objective=objective)
        updates = masked(jax.tree.map(lambda u: u * peak_lr.astype(u.dtype), updates))
        params = optax.apply_updates(params, updates)  # bf16 weights: float32 sum, rounded once
      return params, opt_state, loss, optax.tree.norm(grads)

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
    frozen=None,
    seed: int = 0,
  ) -> UnlearnResult:
    """Unlearns from ``params`` for ``self.steps`` steps; returns params and per-step log.

    ``frozen`` is the state merged into the model but not trained (a LoRA
    model's base weights), or None. ``seed`` is the run's seed, which losses read
    as ``batches["seed"]`` (RMU's control vector).
    """
    tx, step = self._step_fn(opt_name, forget, retain, params)
    params = jax.tree.map(jnp.copy, params)  # the step donates; the caller keeps its params
    opt_state = tx.init(params)
    period = self.recipe.forget_steps + self.recipe.retain_steps
    lr = jnp.asarray(peak_lr, jnp.float32)
    run_seed = jnp.asarray(seed, jnp.int32)
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
      b = batches.next(objective, params)
      params, opt_state, loss, gnorm = step(
        params, opt_state, ref_params, b, jnp.asarray(objective, jnp.int32), lr, frozen, run_seed
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
