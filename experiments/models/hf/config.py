"""What a Hugging Face ``config.json`` says about the network, in one resolved record.

Each supported ``model_type`` is one entry of :data:`FAMILIES`: the few choices in which the
families differ (norm, MLP, block layout, biases, embedding scale). :func:`read_config` merges
that entry with the numbers of a ``config.json`` in either key layout found on the hub:

- legacy (Llama-2, Phi-1.5): top-level ``rope_theta``, ``rope_scaling``,
  ``partial_rotary_factor``, ``torch_dtype``;
- transformers 5: ``rope_parameters`` (holding ``rope_theta``, ``rope_type`` and the scaling and
  partial-rotary fields) and ``dtype``.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, Literal


class CheckpointError(ValueError):
  """A checkpoint folder that cannot be loaded as it is (the message names the problem)."""


@dataclasses.dataclass(frozen=True)
class Family:
  """The architectural choices one ``model_type`` makes.

  Attributes:
    norm: ``rms`` (``w * x / rms(x)``), ``rms_plus_one`` (gemma: ``(1 + w) * ...``) or
      ``layer`` (LayerNorm with bias).
    mlp: ``gated`` (``down(act(gate(x)) * up(x))``) or ``fc`` (``fc2(act(fc1(x)))``).
    parallel_block: attention and MLP read the same normed input and are summed (phi).
    qkv_bias: q/k/v projections have biases regardless of ``attention_bias`` (qwen2, phi).
    o_bias: the output projection has a bias regardless of ``attention_bias`` (phi).
    mlp_bias: the MLP has biases regardless of ``mlp_bias`` (phi).
    lm_head_bias: the untied output projection has a bias (phi).
    qk_norm: per-head norm of queries and keys before rotary (``rms`` for qwen3); phi's
      optional LayerNorm comes from the config's ``qk_layernorm`` instead.
    embed_scale: embeddings are multiplied by ``sqrt(hidden_size)`` in the compute dtype (gemma).
    act_key: the config key naming the activation.
    default_act: the activation when the config names none.
    defaults: values transformers' config class assumes for keys a ``config.json`` omits.
  """

  norm: Literal["rms", "rms_plus_one", "layer"] = "rms"
  mlp: Literal["gated", "fc"] = "gated"
  parallel_block: bool = False
  qkv_bias: bool = False
  o_bias: bool = False
  mlp_bias: bool = False
  lm_head_bias: bool = False
  qk_norm: Literal["rms", "layer"] | None = None
  embed_scale: bool = False
  act_key: str = "hidden_act"
  default_act: str = "silu"
  defaults: tuple[tuple[str, Any], ...] = (("tie_word_embeddings", False), ("rms_norm_eps", 1e-6))


FAMILIES: dict[str, Family] = {
  "llama": Family(),
  "qwen2": Family(qkv_bias=True),
  "qwen3": Family(qk_norm="rms"),
  "phi": Family(
    norm="layer", mlp="fc", parallel_block=True, qkv_bias=True, o_bias=True, mlp_bias=True,
    lm_head_bias=True, default_act="gelu_new",
    defaults=(
      ("tie_word_embeddings", False), ("partial_rotary_factor", 0.5), ("layer_norm_eps", 1e-5),
    ),
  ),
  "gemma": Family(
    norm="rms_plus_one", embed_scale=True, act_key="hidden_activation",
    default_act="gelu_pytorch_tanh",
    defaults=(("tie_word_embeddings", True), ("rms_norm_eps", 1e-6)),
  ),
}  # fmt: skip

SUPPORTED_MODEL_TYPES = tuple(FAMILIES)

# HF activation names -> our names (tanh-approximated GELU under three HF names).
ACTIVATIONS = {
  "silu": "silu",
  "swish": "silu",
  "gelu": "gelu",
  "gelu_new": "gelu_tanh",
  "gelu_pytorch_tanh": "gelu_tanh",
  "gelu_fast": "gelu_tanh",
}

ROPE_TYPES = ("default", "linear", "llama3")


@dataclasses.dataclass(frozen=True)
class Arch:
  """Every number and choice the shared decoder needs (hashable: it is static in ``jit``).

  Example:
    >>> arch = Arch(model_type="llama", family=FAMILIES["llama"], vocab_size=8, hidden_size=4,
    ...             intermediate_size=8, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=2)
    >>> arch.rotary_dim, arch.attention_bias
    (2, False)
  """

  model_type: str
  family: Family
  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  rope_theta: float = 10_000.0
  partial_rotary_factor: float = 1.0
  # (rope_type, ((field, value), ...)) for rope_type != "default", else None.
  rope_scaling: tuple[str, tuple[tuple[str, float | int], ...]] | None = None
  norm_eps: float = 1e-6
  act: str = "silu"
  attention_bias: bool = False
  mlp_bias: bool = False
  qk_layernorm: bool = False
  tie_embeddings: bool = False
  bos_token_id: int | None = None
  eos_token_id: int | tuple[int, ...] | None = None
  pad_token_id: int | None = None

  @property
  def rotary_dim(self) -> int:
    """Leading dims of each head that rotary rotates (phi rotates only a fraction)."""
    return int(self.head_dim * self.partial_rotary_factor)

  @property
  def qk_norm(self) -> str | None:
    """Per-head q/k norm: the family's (qwen3), or a LayerNorm when ``qk_layernorm`` (phi)."""
    return self.family.qk_norm or ("layer" if self.qk_layernorm else None)


def _rope(raw: dict[str, Any]) -> tuple[float, float, Any]:
  """(theta, partial_rotary_factor, scaling) from either key layout."""
  params = raw.get("rope_parameters") or {}
  legacy = raw.get("rope_scaling") or {}
  theta = params.get("rope_theta", raw.get("rope_theta", 10_000.0))
  partial = params.get("partial_rotary_factor", raw.get("partial_rotary_factor", 1.0))
  source = params if params.get("rope_type", "default") != "default" else legacy
  rope_type = source.get("rope_type", source.get("type", "default"))
  if rope_type not in ROPE_TYPES:
    raise CheckpointError(
      f"rope type {rope_type!r} is not supported (supported: {', '.join(ROPE_TYPES)})"
    )
  if rope_type == "default":
    return float(theta), float(partial), None
  fields = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
  # Values as the config has them (HF wants original_max_position_embeddings to stay an int).
  values = tuple((k, source[k]) for k in fields if k in source)
  return float(theta), float(partial), (rope_type, values)


def arch_from_dict(raw: dict[str, Any]) -> Arch:
  """Resolves a parsed ``config.json`` into an :class:`Arch`.

  Raises:
    CheckpointError: unsupported ``model_type``, activation or rope type, or a missing size.

  Example:
    >>> raw = {"model_type": "phi", "vocab_size": 8, "hidden_size": 4, "intermediate_size": 8,
    ...        "num_hidden_layers": 1, "num_attention_heads": 2, "partial_rotary_factor": 0.5}
    >>> arch = arch_from_dict(raw)
    >>> arch.head_dim, arch.rotary_dim, arch.act
    (2, 1, 'gelu_tanh')
  """
  model_type = raw.get("model_type")
  if model_type not in FAMILIES:
    raise CheckpointError(
      f"model_type {model_type!r} is not supported; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
    )
  family = FAMILIES[model_type]
  raw = {**dict(family.defaults), **raw}
  try:
    hidden, heads = int(raw["hidden_size"]), int(raw["num_attention_heads"])
    sizes = dict(
      vocab_size=int(raw["vocab_size"]),
      hidden_size=hidden,
      intermediate_size=int(raw["intermediate_size"]),
      num_layers=int(raw["num_hidden_layers"]),
      num_heads=heads,
    )
  except KeyError as e:
    raise CheckpointError(f"config.json lacks {e.args[0]!r}") from None
  # Gemma reads only hidden_activation (HF ignores its legacy hidden_act "gelu").
  act_name = raw.get(family.act_key) or family.default_act
  if act_name not in ACTIVATIONS:
    raise CheckpointError(
      f"activation {act_name!r} is not supported (supported: {', '.join(ACTIVATIONS)})"
    )
  if raw.get("use_sliding_window"):
    raise CheckpointError("sliding-window attention (use_sliding_window: true) is not supported")
  theta, partial, scaling = _rope(raw)
  eos = raw.get("eos_token_id")
  return Arch(
    model_type=model_type,
    family=family,
    **sizes,
    num_kv_heads=int(raw.get("num_key_value_heads") or heads),
    head_dim=int(raw.get("head_dim") or hidden // heads),
    rope_theta=theta,
    partial_rotary_factor=partial,
    rope_scaling=scaling,
    norm_eps=float(raw["layer_norm_eps" if family.norm == "layer" else "rms_norm_eps"]),
    act=ACTIVATIONS[act_name],
    attention_bias=bool(raw.get("attention_bias", False)),
    mlp_bias=bool(raw.get("mlp_bias", False)),
    qk_layernorm=bool(raw.get("qk_layernorm", False)),
    tie_embeddings=bool(raw["tie_word_embeddings"]),
    bos_token_id=raw.get("bos_token_id"),
    eos_token_id=tuple(eos) if isinstance(eos, list) else eos,
    pad_token_id=raw.get("pad_token_id"),
  )


def storage_dtype(raw: dict[str, Any]) -> str:
  """The dtype the config says the weights are stored in (``float32`` when unstated)."""
  return raw.get("dtype") or raw.get("torch_dtype") or "float32"


def read_config(path: str | pathlib.Path) -> tuple[Arch, dict[str, Any]]:
  """Reads ``path/config.json``: the resolved :class:`Arch` and the raw dict (kept for export).

  Raises:
    FileNotFoundError: the folder or its ``config.json`` does not exist.
    CheckpointError: ``config.json`` is not JSON or describes an unsupported model.

  Example:
    >>> import json, tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "config.json").write_text(json.dumps({"model_type": "bert"}))
    >>> read_config(d)
    Traceback (most recent call last):
    ...
    experiments.models.hf.config.CheckpointError: model_type 'bert' is not supported; ...
  """
  path = pathlib.Path(path)
  if not path.is_dir():
    raise FileNotFoundError(f"checkpoint folder {str(path)!r} does not exist")
  file = path / "config.json"
  if not file.is_file():
    raise FileNotFoundError(f"checkpoint folder {str(path)!r} has no config.json")
  try:
    raw = json.loads(file.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise CheckpointError(f"{file} is not valid JSON: {e}") from None
  return arch_from_dict(raw), raw


def config_dict(arch: Arch, dtype: str) -> dict[str, Any]:
  """A transformers-5 ``config.json`` for ``arch`` (for models not loaded from a folder).

  Example:
    >>> raw = {"model_type": "gemma", "vocab_size": 8, "hidden_size": 4, "intermediate_size": 8,
    ...        "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1}
    >>> arch_from_dict(config_dict(arch_from_dict(raw), "float32")) == arch_from_dict(raw)
    True
  """
  act = {"silu": "silu", "gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh"}[arch.act]
  if arch.model_type == "phi":
    act = {"gelu_tanh": "gelu_new"}.get(arch.act, act)
  rope: dict[str, Any] = {"rope_theta": arch.rope_theta, "rope_type": "default"}
  if arch.rope_scaling is not None:
    rope.update(rope_type=arch.rope_scaling[0], **dict(arch.rope_scaling[1]))
  if arch.partial_rotary_factor != 1.0 or "partial_rotary_factor" in dict(arch.family.defaults):
    rope["partial_rotary_factor"] = arch.partial_rotary_factor
  eos = list(arch.eos_token_id) if isinstance(arch.eos_token_id, tuple) else arch.eos_token_id
  norm_eps = "layer_norm_eps" if arch.family.norm == "layer" else "rms_norm_eps"
  return {
    "model_type": arch.model_type,
    "vocab_size": arch.vocab_size,
    "hidden_size": arch.hidden_size,
    "intermediate_size": arch.intermediate_size,
    "num_hidden_layers": arch.num_layers,
    "num_attention_heads": arch.num_heads,
    "num_key_value_heads": arch.num_kv_heads,
    "head_dim": arch.head_dim,
    "rope_parameters": rope,
    norm_eps: arch.norm_eps,
    arch.family.act_key: act,
    "attention_bias": arch.attention_bias,
    "mlp_bias": arch.mlp_bias,
    "qk_layernorm": arch.qk_layernorm,
    "tie_word_embeddings": arch.tie_embeddings,
    "bos_token_id": arch.bos_token_id,
    "eos_token_id": eos,
    "pad_token_id": arch.pad_token_id,
    "dtype": dtype,
  }
