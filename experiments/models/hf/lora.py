"""LoRA adapters on a loaded model (``nnx.LoRAParam`` factors inside each projection), merge-back.

:func:`add_lora` gives chosen projections an adapter in place: ``y = base(x) + x @ A @ B`` with
``A`` (in, rank) He-uniform and ``B`` (rank, out) zero, as flax's ``nnx.LoRA`` initialises
them, so the adapted model starts equal to the base model (no ``alpha / rank`` factor: fold it
into the learning rate). The blocks are stacked (one ``lax.scan``), so each factor carries the
``layers`` axis too: ``A`` is ``(layers, in, rank)``. The factors are ``nnx.LoRAParam``, a
subclass of ``nnx.Param``; so:

- ``nnx.state(model, nnx.LoRAParam)`` is the adapter state (train and optimise only this, e.g.
  ``nnx.Optimizer(model, tx, wrt=nnx.LoRAParam)`` or ``nnx.split(model, nnx.LoRAParam, ...)``);
- :data:`BASE` selects the frozen base weights (``nnx.Param`` alone would include adapters).

:func:`merge_lora` folds ``A @ B`` into the base kernels of a copy, for export.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from experiments.models.hf import sharding
from experiments.models.hf.layers import Linear

ATTENTION_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_TARGETS = ("gate_proj", "up_proj", "down_proj", "fc1", "fc2")
ALL_TARGETS = ATTENTION_TARGETS + MLP_TARGETS

BASE = nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam))


def _mesh_of(variable: nnx.Variable):
  s = getattr(variable.get_value(), "sharding", None)
  return s.mesh if isinstance(s, jax.sharding.NamedSharding) else None


def projections(model):
  """``(name, Linear)`` of every wrappable projection of the (stacked) blocks."""
  for parent in (model.blocks.attn, model.blocks.mlp):
    for name in ALL_TARGETS:
      module = getattr(parent, name, None)
      if isinstance(module, Linear):
        yield name, module


def add_lora(model, rank: int, targets=ALL_TARGETS, *, rngs: nnx.Rngs | None = None, dtype=None):
  """Gives the ``targets`` projections of every block a rank-``rank`` adapter (in place).

  Args:
    model: a ``CausalLM`` (see :func:`~.loading.load_model`).
    rank: adapter rank.
    targets: projection names among :data:`ALL_TARGETS` (a family lacking one, e.g. phi's
      ``gate_proj``, skips it).
    rngs: initialiser keys for ``A`` (default ``nnx.Rngs(0)``).
    dtype: adapter parameter dtype (default: the model's).

  Returns:
    ``model``, whose adapters are placed like their base kernels when those are on a mesh.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from experiments.models.hf.config import arch_from_dict
    >>> from experiments.models.hf.model import CausalLM
    >>> arch = arch_from_dict({"model_type": "qwen2", "vocab_size": 32, "hidden_size": 16,
    ...   "intermediate_size": 32, "num_hidden_layers": 3, "num_attention_heads": 2})
    >>> model = add_lora(CausalLM(arch, rngs=nnx.Rngs(0)), rank=2, targets=("q_proj", "v_proj"))
    >>> adapters = nnx.state(model, nnx.LoRAParam).to_pure_dict()
    >>> {k: v["lora_a"].shape for k, v in adapters["blocks"]["attn"].items()}
    {'q_proj': (3, 16, 2), 'v_proj': (3, 16, 2)}
  """
  unknown = set(targets) - set(ALL_TARGETS)
  if unknown:
    raise ValueError(f"unknown LoRA targets {sorted(unknown)}; choose from {ALL_TARGETS}")
  if rank < 1:
    raise ValueError(f"LoRA rank must be >= 1, got {rank}")
  rngs = rngs or nnx.Rngs(0)
  dtype = jnp.dtype(dtype or model.dtype)
  for name, base in list(projections(model)):
    if name not in targets:
      continue
    if base.lora_a is not None:
      raise ValueError(f"{name} already has a LoRA adapter")
    ax_in, ax_out = base.flat_axes
    stack = base.stack
    layers = ("layers",) * len(stack)
    # nnx.LoRA's initialisers: A He-uniform over its (in, rank) fan, B zero.
    shape = (base.in_features, rank)
    keys = jax.random.split(rngs.params(), stack or (1,))
    a = jax.vmap(lambda k, shape=shape: nnx.initializers.he_uniform()(k, shape, dtype))(keys)
    a = a.reshape(*stack, *shape)
    b = jnp.zeros((*stack, rank, base.out_features), dtype)
    mesh = _mesh_of(base.kernel)
    for attr, value, names in (
      ("lora_a", a, (*layers, ax_in, None)),
      ("lora_b", b, (*layers, None, ax_out)),
    ):
      factor = nnx.LoRAParam(value, out_sharding=names, eager_sharding=False)
      factor.set_value(jax.device_put(value, sharding.variable_sharding(factor, mesh)))
      setattr(base, attr, factor)
  return model


def has_lora(model) -> bool:
  """Whether any projection of ``model`` has an adapter."""
  return any(m.lora_a is not None for _, m in projections(model))


def merge_lora(model):
  """A copy of ``model`` with every adapter folded into its base kernel and removed.

  ``kernel += (A @ B)`` reshaped to the kernel's head axes, computed in float32 and cast to the
  kernel's dtype; the kernel keeps its sharding. ``model`` itself is unchanged.
  """
  model = nnx.clone(model)
  for _, base in list(projections(model)):
    if base.lora_a is None:
      continue
    kernel = base.kernel.get_value()
    a, b = (f.get_value().astype(jnp.float32) for f in (base.lora_a, base.lora_b))
    delta = a @ b
    merged = (kernel.astype(jnp.float32) + delta.reshape(kernel.shape)).astype(kernel.dtype)
    base.kernel.set_value(jax.device_put(merged, kernel.sharding))
    base.lora_a = base.lora_b = nnx.data(None)
  return model
