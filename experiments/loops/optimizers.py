"""Optimizer registry for the unlearning loop, and the reference learning-rate shape.

Every optimizer is built with learning rate = the schedule's *shape* (warm-up
to 1, linear decay to 0); the loop multiplies the updates by the peak learning
rate, passed as a traced scalar. All our optimizers end in ``-lr * (u + wd *
p)``, so this is exactly the scheduled optimizer, and one compiled step serves
every learning rate of a sweep.

``adamw`` is the baseline "alternating Adam": ``optax.adamw`` fed the forget
and retain gradients in the same F,R,R,R,R,R pattern, both objectives sharing
its one state. The DualOptim family comes from :mod:`dualoptim_jax` by name
(``dualoptim``, ``dualoptim_plus``, ``dualoptim_plus_8bit``,
``dualoptim_plus_muon``, ...), so variants added to the library later are
picked up without changes here.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

import dualoptim_jax

DEFAULT_OPTIMIZERS = ("adamw", "dualoptim", "dualoptim_plus", "dualoptim_plus_8bit")


class OptimizerUnavailable(ValueError):
  """The requested optimizer does not exist in this installation."""


@dataclasses.dataclass(frozen=True)
class Recipe:
  """The unlearning recipe shared by every optimizer (UNLEARNING.md section 1).

  Attributes:
    forget_steps: forget steps per cycle.
    retain_steps: retain steps per cycle.
    weight_decay: decoupled weight decay (not on biases/norms).
    clip_norm: global gradient-norm clip.
    b1, b2: Adam / delta-moment decays (reference: 0.9, 0.95).
    eps: denominator epsilon.
  """

  forget_steps: int = 1
  retain_steps: int = 5
  weight_decay: float = 0.01
  clip_norm: float = 1.0
  b1: float = 0.9
  b2: float = 0.95
  eps: float = 1e-8


def lr_shape(warmup_steps: int, total_steps: int):
  """Linear warm-up from 0 to 1 over ``warmup_steps``, then linear decay to 0 at ``total_steps``."""
  warm = max(int(warmup_steps), 1)
  decay = max(int(total_steps) - warm, 1)

  def schedule(count):
    t = jnp.asarray(count, jnp.int32).astype(jnp.float32)
    up = t / jnp.float32(warm)
    down = jnp.maximum(jnp.float32(0.0), (jnp.float32(total_steps) - t) / jnp.float32(decay))
    return jnp.where(t < jnp.float32(warm), up, down)

  return schedule


def decay_mask(params) -> Any:
  """True for leaves with weight decay: everything but 1-D leaves (norm scales, biases)."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


def build(name: str, schedule, recipe: Recipe, params) -> optax.GradientTransformation:
  """The named optimizer (clipping included) with ``schedule`` as its learning rate.

  Raises:
    OptimizerUnavailable: unknown name, or a DualOptim variant missing from
      the installed ``dualoptim_jax``.
  """
  mask = decay_mask(params)
  clip = optax.clip_by_global_norm(recipe.clip_norm)
  if name == "adamw":
    tx = optax.adamw(
      schedule,
      b1=recipe.b1,
      b2=recipe.b2,
      eps=recipe.eps,
      weight_decay=recipe.weight_decay,
      mask=mask,
    )
    return optax.chain(clip, tx)
  if not name.startswith("dualoptim"):
    raise OptimizerUnavailable(f"unknown optimizer {name!r}; use adamw or a dualoptim_jax name")
  factory = getattr(dualoptim_jax, name, None)
  if factory is None:
    raise OptimizerUnavailable(
      f"optimizer {name!r} is not available: the installed dualoptim_jax has no {name}()"
    )
  tx = factory(
    schedule,
    forget_learning_rate=schedule,
    b1=recipe.b1,
    b2=recipe.b2,
    eps=recipe.eps,
    weight_decay=recipe.weight_decay,
    mask=mask,
    forget_steps=recipe.forget_steps,
    retain_steps=recipe.retain_steps,
  )
  return optax.chain(clip, tx)


def available(name: str) -> bool:
  """Whether :func:`build` knows ``name``."""
  return name == "adamw" or (name.startswith("dualoptim") and hasattr(dualoptim_jax, name))


def state_bytes(opt_state) -> int:
  """Bytes held by the optimizer state's arrays."""
  return int(sum(x.nbytes for x in jax.tree.leaves(opt_state) if hasattr(x, "nbytes")))
