"""The checkpoint-key table: HF key <-> module path, with the layout change between them.

The table is data: one row per parameter kind, ``{i}`` standing for a layer index, and a small
override table per family that names things differently (phi). Layouts:

- ``linear``: HF ``nn.Linear`` stores ``(out, in)``; our kernel is ``(*in, *out)`` (head axes
  kept), so loading transposes and reshapes, saving reshapes and transposes back.
- ``vector``: norms and biases; HF keeps them flat, ours may have head axes (``(heads,
  head_dim)`` for q/k/v biases): a reshape.
- ``table``: the embedding, identical.

Block parameters are stacked (``blocks.*``, leading ``layers`` axis): one :class:`Entry` per
parameter kind stands for ``num_layers`` checkpoint keys, ``{i}`` filled per layer.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
from flax import nnx

_ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
_MLP = ("gate_proj", "up_proj", "down_proj", "fc1", "fc2")

# (module path, checkpoint key, layout) shared by the families.
KEY_TABLE: tuple[tuple[str, str, str], ...] = (
  ("embed.embedding", "model.embed_tokens.weight", "table"),
  ("final_norm.scale", "model.norm.weight", "vector"),
  ("lm_head.kernel", "lm_head.weight", "linear"),
  ("lm_head.bias", "lm_head.bias", "vector"),
  ("blocks.attn_norm.scale", "model.layers.{i}.input_layernorm.weight", "vector"),
  ("blocks.attn_norm.bias", "model.layers.{i}.input_layernorm.bias", "vector"),
  ("blocks.mlp_norm.scale", "model.layers.{i}.post_attention_layernorm.weight", "vector"),
  ("blocks.attn.q_norm.scale", "model.layers.{i}.self_attn.q_norm.weight", "vector"),
  ("blocks.attn.k_norm.scale", "model.layers.{i}.self_attn.k_norm.weight", "vector"),
  *(
    (f"blocks.attn.{p}.{ours}", f"model.layers.{{i}}.self_attn.{p}.{hf}", layout)
    for p in _ATTN
    for ours, hf, layout in (("kernel", "weight", "linear"), ("bias", "bias", "vector"))
  ),
  *(
    (f"blocks.mlp.{p}.{ours}", f"model.layers.{{i}}.mlp.{p}.{hf}", layout)
    for p in _MLP
    for ours, hf, layout in (("kernel", "weight", "linear"), ("bias", "bias", "vector"))
  ),
)

# Per family: module path -> the checkpoint key it has there instead.
FAMILY_KEYS: dict[str, dict[str, str]] = {
  "phi": {
    "final_norm.scale": "model.final_layernorm.weight",
    "final_norm.bias": "model.final_layernorm.bias",
    "blocks.attn.o_proj.kernel": "model.layers.{i}.self_attn.dense.weight",
    "blocks.attn.o_proj.bias": "model.layers.{i}.self_attn.dense.bias",
    "blocks.attn.q_norm.scale": "model.layers.{i}.self_attn.q_layernorm.weight",
    "blocks.attn.q_norm.bias": "model.layers.{i}.self_attn.q_layernorm.bias",
    "blocks.attn.k_norm.scale": "model.layers.{i}.self_attn.k_layernorm.weight",
    "blocks.attn.k_norm.bias": "model.layers.{i}.self_attn.k_layernorm.bias",
  },
}

# Checkpoint keys that carry nothing the model needs: old rotary buffers.
IGNORED_KEYS = re.compile(r".*\.rotary_emb\.inv_freq$")


@dataclasses.dataclass(frozen=True)
class Entry:
  """One parameter (or one stacked parameter kind): checkpoint key(s), path, shapes, layout.

  ``shape`` and ``hf_shape`` are one layer's; ``num_layers`` is None for an unstacked
  parameter, else the size of its leading ``layers`` axis and ``key`` holds ``{i}``.
  """

  key: str
  path: tuple[str | int, ...]
  shape: tuple[int, ...]  # ours, one layer
  hf_shape: tuple[int, ...]
  layout: str
  num_layers: int | None = None

  @property
  def keys(self) -> list[str]:
    """The checkpoint keys, in layer order."""
    if self.num_layers is None:
      return [self.key]
    return [self.key.format(i=i) for i in range(self.num_layers)]

  @property
  def stacked_shape(self) -> tuple[int, ...]:
    """The parameter's full shape (with the ``layers`` axis when stacked)."""
    return self.shape if self.num_layers is None else (self.num_layers, *self.shape)

  def to_param(self, tensor: np.ndarray) -> np.ndarray:
    """One checkpoint tensor in our layout (shape already checked against ``hf_shape``)."""
    if self.layout == "linear":
      tensor = tensor.T
    return np.ascontiguousarray(tensor.reshape(self.shape))

  def to_hf(self, value: np.ndarray) -> np.ndarray:
    """One layer's value (or the unstacked value) in the checkpoint's layout."""
    if self.layout == "linear":
      out, inp = self.hf_shape
      return np.ascontiguousarray(value.reshape(inp, out).T)
    return value.reshape(self.hf_shape)


def _rows(model_type: str) -> dict[str, tuple[str, str]]:
  rows = {path: (key, layout) for path, key, layout in KEY_TABLE}
  for path, key in FAMILY_KEYS.get(model_type, {}).items():
    rows[path] = (key, rows[path][1] if path in rows else "vector")
  return rows


def key_table(model: nnx.Module) -> list[Entry]:
  """One :class:`Entry` per parameter of ``model`` (a ``CausalLM``, abstract or not).

  Example:
    >>> from flax import nnx
    >>> from experiments.models.hf.config import arch_from_dict
    >>> from experiments.models.hf.model import CausalLM
    >>> arch = arch_from_dict({"model_type": "phi", "vocab_size": 8, "hidden_size": 4,
    ...   "intermediate_size": 8, "num_hidden_layers": 2, "num_attention_heads": 2})
    >>> table = key_table(CausalLM(arch, rngs=nnx.Rngs(0)))
    >>> [(e.keys[1], e.shape, e.hf_shape) for e in table if e.path[-2:] == ("o_proj", "kernel")]
    [('model.layers.1.self_attn.dense.weight', (2, 2, 4), (4, 4))]
  """
  rows = _rows(model.arch.model_type)
  entries = []
  for path, param in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    template = ".".join(map(str, path))
    if template not in rows:
      raise KeyError(f"no checkpoint key for parameter {template}")
    key, layout = rows[template]
    stacked = path[0] == "blocks"
    shape = tuple(param.shape)[1:] if stacked else tuple(param.shape)
    if layout == "linear":
      module = model
      for p in path[:-1]:
        module = getattr(module, p)
      hf_shape = (module.out_features, module.in_features)
    elif layout == "vector":
      hf_shape = (int(np.prod(shape)),)
    else:
      hf_shape = shape
    layers = model.arch.num_layers if stacked else None
    entries.append(Entry(key, path, shape, hf_shape, layout, layers))
  return entries
