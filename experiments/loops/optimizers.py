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

Every optimizer is fitted to its parameters by :func:`for_params`: moments
in float32 when the parameters are not (the reference trains bfloat16 weights
with float32 moments), and on a mesh the gradients laid out like their
parameters and the state created with each parameter's sharding.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding

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


def _is_stacked(path) -> bool:
  """A leaf of an HF model's scanned blocks (leading ``layers`` axis)."""
  return bool(path) and getattr(path[0], "key", None) == "blocks"


def decay_mask(params) -> Any:
  """True for leaves with weight decay: everything but norms and biases.

  Norm scales are 1-D per layer; biases are 1-D or, in head-shaped projections,
  named ``bias``. LoRA adapters (2-D) are decayed, as HF's trainer decays them.
  An HF model's stacked blocks (``blocks.*``) count dimensions per layer.
  """

  def decayed(path, p):
    per_layer = p.ndim - 1 if _is_stacked(path) else p.ndim
    return per_layer > 1 and not any(getattr(k, "key", None) in ("bias", "scale") for k in path)

  return jax.tree_util.tree_map_with_path(decayed, params)


def muon_dimensions(params) -> Any:
  """Muon's ``MuonDimensionNumbers`` for an HF model's stacked projection kernels, else None.

  A kernel ``(layers, *in_shape, *out_shape)`` is orthogonalised per layer over its flat input
  and output (the layers axis is a batch axis; ``o_proj``'s input is ``(heads, head_dim)``);
  the in-house model's 2-D kernels get the library's default (None: 2-D leaves only).
  """
  from optax.contrib import MuonDimensionNumbers

  def dims(path, p):
    names = [k.key for k in path if hasattr(k, "key")]  # an nnx.State path ends in .value
    if not _is_stacked(path) or names[-1] != "kernel":
      return None
    n_in = 2 if any(getattr(k, "key", None) == "o_proj" for k in path) else 1
    return MuonDimensionNumbers(
      reduction_axis=tuple(range(1, 1 + n_in)), output_axis=tuple(range(1 + n_in, p.ndim))
    )

  if not any(_is_stacked(path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]):
    return None
  return jax.tree_util.tree_map_with_path(dims, params)


def param_shardings(params) -> Any:
  """The parameters' ``NamedSharding`` tree when they lie on a multi-device mesh, else None."""
  shardings = [getattr(p, "sharding", None) for p in jax.tree.leaves(params)]
  if not shardings or not all(isinstance(s, NamedSharding) for s in shardings):
    return None
  if shardings[0].mesh.size == 1:
    return None
  return jax.tree.map(lambda p: p.sharding, params)


def int8_block_size(params, shardings, default: int = 256) -> int:
  """The largest int8 block (dividing ``default``) that no shard boundary cuts.

  An 8-bit moment is blocked along its last axis; when that axis is sharded,
  each shard must hold whole blocks (``dualoptim_jax.state_shardings`` checks).
  Without ``shardings`` (one device) it is ``default``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jax.sharding import AbstractMesh, NamedSharding, PartitionSpec as P
    >>> on_4 = NamedSharding(AbstractMesh((4,), ("data",)), P(None, "data"))
    >>> int8_block_size({"w": jax.ShapeDtypeStruct((4, 64), jnp.float32)}, {"w": on_4})
    16
  """
  block = default
  if shardings is None:
    return block
  for p, s in zip(jax.tree.leaves(params), jax.tree.leaves(shardings), strict=True):
    entry = tuple(s.spec)[p.ndim - 1] if p.ndim and len(s.spec) >= p.ndim else None
    names = () if entry is None else entry if isinstance(entry, tuple) else (entry,)
    n = math.prod(s.mesh.shape[a] for a in names)
    block = math.gcd(block, p.shape[-1] // n) if n > 1 else block
  return block


def _float32_init(tx: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
  """``tx`` with its state created from float32 copies of the params (float32 moments)."""
  return optax.GradientTransformationExtraArgs(
    lambda params: tx.init(optax.tree.cast(params, jnp.float32)), tx.update
  )


def gradients_like(shardings) -> optax.GradientTransformation:
  """A stateless transformation that lays the gradients out like ``shardings`` (the params').

  The backward pass leaves the gradients' layout to the compiler; constrained,
  the optimizer's arithmetic runs on each parameter's own shards.
  """
  return optax.stateless(lambda g, _: jax.lax.with_sharding_constraint(g, shardings))


def _committed_device(params):
  """The one device all ``params`` are committed to, or None (uncommitted, or several)."""
  leaves = jax.tree.leaves(params)
  if not leaves or not all(getattr(p, "committed", False) for p in leaves):
    return None
  devices = {d for p in leaves for d in p.sharding.device_set}
  return devices.pop() if len(devices) == 1 else None


def for_params(tx: optax.GradientTransformation, params) -> optax.GradientTransformation:
  """``tx`` fitted to ``params``: float32 moments, and on a mesh sharded like the params.

  - Parameters below float32 (bf16): the state is created from float32 copies,
    so every moment is float32 (optax's adam has no ``nu_dtype``).
  - Parameters on a mesh: the gradients are constrained to their parameter's
    sharding before the optimizer reads them, and ``init`` creates each state
    leaf with its parameter's sharding (``dualoptim_jax.state_shardings``).
  - Parameters committed to one device (a loaded checkpoint, a fine-tuned
    model): ``init`` commits the state there too, or the first step (state
    uncommitted) and the later ones (committed) would compile separately.

  Elsewhere ``tx`` is returned as is.

  Example:
    >>> import jax.numpy as jnp
    >>> tx = for_params(optax.adam(1e-3), {"w": jnp.zeros(3, jnp.bfloat16)})
    >>> tx.init({"w": jnp.zeros(3, jnp.bfloat16)})[0].nu["w"].dtype
    dtype('float32')
  """
  if any(p.dtype != jnp.float32 for p in jax.tree.leaves(params)):
    tx = _float32_init(tx)
  shardings = param_shardings(params)
  if shardings is None:
    device = _committed_device(params)
    if device is None:
      return tx
    init = lambda p: jax.device_put(tx.init(p), device)
    return optax.GradientTransformationExtraArgs(init, tx.update)
  tx = optax.chain(gradients_like(shardings), tx)
  block = int8_block_size(params, shardings)
  state = dualoptim_jax.state_shardings(tx, params, shardings, block_size=block)
  return optax.GradientTransformationExtraArgs(jax.jit(tx.init, out_shardings=state), tx.update)


def build(name: str, schedule, recipe: Recipe, params) -> optax.GradientTransformation:
  """The named optimizer (clipping included) with ``schedule`` as its learning rate.

  Fitted to ``params`` by :func:`for_params`; 8-bit optimizers on a mesh use
  the largest block size the shards allow (:func:`int8_block_size`).

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
    return for_params(optax.chain(clip, tx), params)
  if not name.startswith("dualoptim"):
    raise OptimizerUnavailable(f"unknown optimizer {name!r}; use adamw or a dualoptim_jax name")
  factory = getattr(dualoptim_jax, name, None)
  if factory is None:
    raise OptimizerUnavailable(
      f"optimizer {name!r} is not available: the installed dualoptim_jax has no {name}()"
    )
  options = {}
  if "block_size" in inspect.signature(factory).parameters:
    options["block_size"] = int8_block_size(params, param_shardings(params))
  if "muon_weight_dimension_numbers" in inspect.signature(factory).parameters:
    options["muon_weight_dimension_numbers"] = muon_dimensions(params)
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
    **options,
  )
  return for_params(optax.chain(clip, tx), params)


def available(name: str) -> bool:
  """Whether :func:`build` knows ``name``."""
  return name == "adamw" or (name.startswith("dualoptim") and hasattr(dualoptim_jax, name))


def state_bytes(opt_state) -> int:
  """Bytes held by the optimizer state's arrays (or ``jax.ShapeDtypeStruct`` leaves)."""
  leaves = jax.tree.leaves(opt_state)
  return int(sum(x.size * jnp.dtype(x.dtype).itemsize for x in leaves if hasattr(x, "dtype")))


def planned_state_bytes(name: str, recipe: Recipe, params) -> int:
  """State bytes the named optimizer would hold for ``params``, without allocating them.

  Example:
    >>> import jax.numpy as jnp
    >>> planned_state_bytes("dualoptim_plus", Recipe(), {"w": jnp.zeros((10, 10))})
    2416
  """
  abstract = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), params)
  tx = build(name, lr_shape(1, 2), recipe, abstract)
  return state_bytes(jax.eval_shape(tx.init, abstract))
