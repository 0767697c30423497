"""LoRA adapters on a loaded model with flax's ``nnx.LoRA`` / ``nnx.LoRAParam``, and merge-back.

:func:`add_lora` wraps chosen projections in place: ``y = base(x) + x @ A @ B`` with ``A``
(in, rank) He-uniform and ``B`` (rank, out) zero, so the wrapped model starts equal to the
base model (flax's ``nnx.LoRA`` has no ``alpha / rank`` factor: fold it into the learning rate).
The adapters are ``nnx.LoRAParam``, a subclass of ``nnx.Param``; so:

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


def _parents(model):
  """(module, attribute) pairs of every wrappable projection, in layer order."""
  for layer in model.layers:
    for parent in (layer.attn, layer.mlp):
      for name in ALL_TARGETS:
        if isinstance(getattr(parent, name, None), Linear | nnx.LoRA):
          yield parent, name


def add_lora(model, rank: int, targets=ALL_TARGETS, *, rngs: nnx.Rngs | None = None, dtype=None):
  """Wraps the ``targets`` projections of every block with rank-``rank`` ``nnx.LoRA`` (in place).

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
    ...   "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2})
    >>> model = add_lora(CausalLM(arch, rngs=nnx.Rngs(0)), rank=2, targets=("q_proj", "v_proj"))
    >>> adapters = nnx.state(model, nnx.LoRAParam).to_pure_dict()
    >>> {k: v["lora_a"].shape for k, v in adapters["layers"][0]["attn"].items()}
    {'q_proj': (16, 2), 'v_proj': (16, 2)}
  """
  unknown = set(targets) - set(ALL_TARGETS)
  if unknown:
    raise ValueError(f"unknown LoRA targets {sorted(unknown)}; choose from {ALL_TARGETS}")
  rngs = rngs or nnx.Rngs(0)
  dtype = jnp.dtype(dtype or model.dtype)
  for parent, name in list(_parents(model)):
    base = getattr(parent, name)
    if name not in targets:
      continue
    if isinstance(base, nnx.LoRA):
      raise ValueError(f"{name} already has a LoRA adapter")
    ax_in, ax_out = base.flat_axes
    lora = nnx.LoRA(
      base.in_features,
      rank,
      base.out_features,
      base_module=base,
      dtype=model.dtype,
      param_dtype=dtype,
      rngs=rngs,
      a_metadata={"out_sharding": (ax_in, None), "eager_sharding": False},
      b_metadata={"out_sharding": (None, ax_out), "eager_sharding": False},
    )
    mesh = _mesh_of(base.kernel)
    for factor in (lora.lora_a, lora.lora_b):
      factor.set_value(jax.device_put(factor.get_value(), sharding.variable_sharding(factor, mesh)))
    setattr(parent, name, lora)
  return model


def has_lora(model) -> bool:
  """Whether any module of ``model`` is an ``nnx.LoRA``."""
  return any(isinstance(m, nnx.LoRA) for _, m in nnx.iter_modules(model))


def merge_lora(model):
  """A copy of ``model`` with every adapter folded into its base kernel and removed.

  ``kernel += (A @ B)`` reshaped to the kernel's head axes, computed in float32 and cast to the
  kernel's dtype; the kernel keeps its sharding. ``model`` itself is unchanged.
  """
  model = nnx.clone(model)
  for parent, name in list(_parents(model)):
    lora = getattr(parent, name)
    if not isinstance(lora, nnx.LoRA):
      continue
    base = lora.base_module
    kernel = base.kernel.get_value()
    a, b = (f.get_value().astype(jnp.float32) for f in (lora.lora_a, lora.lora_b))
    delta = a @ b
    merged = (kernel.astype(jnp.float32) + delta.reshape(kernel.shape)).astype(kernel.dtype)
    base.kernel.set_value(jax.device_put(merged, kernel.sharding))
    setattr(parent, name, base)
  return model
