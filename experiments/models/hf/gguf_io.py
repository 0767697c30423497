"""GGUF files (llama.cpp's format) read as HF checkpoints: tensors, ``config.json``, tokenizer.

:class:`GGUFFile` has the interface of :class:`~.safetensors_io.SafetensorsFolder` (``keys``,
``read``) with HF keys and HF layouts, so loading needs no GGUF case of its own. It reads with the
``gguf`` package (llama.cpp's own Python reader; the file is memory-mapped) and dequantizes one
tensor at a time to float32. Three things differ from an HF folder:

- names: :data:`TENSOR_NAMES`, a table GGUF name <-> HF key (``{i}``: the block);
- llama's ``attn_q``/``attn_k`` rows: llama.cpp's converter interleaves each head's two rotary
  halves (its RoPE rotates adjacent pairs, HF's the two halves); :func:`unpermute_qk` undoes it;
- the config is metadata (``{arch}.block_count``, ...), turned into a transformers-5
  ``config.json`` dict by :meth:`GGUFFile.config` (Llama-3 RoPE scaling: a ``rope_freqs`` tensor).
"""

from __future__ import annotations

import collections
import math
import pathlib
import re
from typing import Any

import gguf
import numpy as np
from tokenizers import Tokenizer

from experiments.models.hf.config import CheckpointError
from experiments.models.hf.gguf_tokenizer import special_from_metadata, tokenizer_from_metadata
from experiments.models.hf.tokenizer_files import SpecialTokens

SUPPORTED_ARCHITECTURES = ("llama", "qwen2", "qwen3")
_T = gguf.GGMLQuantizationType
TENSOR_TYPES = (_T.F32, _T.F16, _T.BF16, _T.Q8_0, _T.Q4_0, _T.Q4_1, _T.Q4_K, _T.Q5_K, _T.Q6_K)
# Architectures whose converter permutes q/k rows (qwen2/qwen3 are converted unpermuted).
PERMUTED_QK = ("llama",)
ROPE_FREQS = "rope_freqs.weight"  # Llama-3 RoPE scaling factors, not a parameter
_MAGIC = b"GGUF"

_PROJ = (("attn_q", "self_attn.q_proj"), ("attn_k", "self_attn.k_proj"))
_PROJ += (("attn_v", "self_attn.v_proj"), ("attn_output", "self_attn.o_proj"))
_PROJ += (("ffn_gate", "mlp.gate_proj"), ("ffn_up", "mlp.up_proj"), ("ffn_down", "mlp.down_proj"))
# (GGUF name, HF key): the names llama.cpp's converter gives llama/qwen2/qwen3 tensors.
TENSOR_NAMES: tuple[tuple[str, str], ...] = (
  ("token_embd.weight", "model.embed_tokens.weight"),
  ("output_norm.weight", "model.norm.weight"),
  ("output.weight", "lm_head.weight"),
  ("blk.{i}.attn_norm.weight", "model.layers.{i}.input_layernorm.weight"),
  ("blk.{i}.ffn_norm.weight", "model.layers.{i}.post_attention_layernorm.weight"),
  ("blk.{i}.attn_q_norm.weight", "model.layers.{i}.self_attn.q_norm.weight"),
  ("blk.{i}.attn_k_norm.weight", "model.layers.{i}.self_attn.k_norm.weight"),
  *(
    (f"blk.{{i}}.{g}.{kind}", f"model.layers.{{i}}.{h}.{kind}")
    for g, h in _PROJ
    for kind in ("weight", "bias")
  ),
)


def _matcher(template: str) -> re.Pattern:
  return re.compile(re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)") + "$")


_TO_HF = [(_matcher(g), h) for g, h in TENSOR_NAMES]
_TO_GGUF = [(_matcher(h), g) for g, h in TENSOR_NAMES]


def _rename(name: str, table: list[tuple[re.Pattern, str]]) -> str | None:
  for pattern, target in table:
    if m := pattern.match(name):
      return target.format(i=m.groupdict().get("i"))
  return None


def hf_key(gguf_name: str) -> str | None:
  """The HF key of a GGUF tensor name (None: not in :data:`TENSOR_NAMES`).

  Example:
    >>> hf_key("blk.3.attn_output.weight")
    'model.layers.3.self_attn.o_proj.weight'
  """
  return _rename(gguf_name, _TO_HF)


def gguf_name(key: str) -> str | None:
  """The GGUF tensor name of an HF key (None: not in :data:`TENSOR_NAMES`).

  Example:
    >>> gguf_name("model.layers.0.mlp.down_proj.weight")
    'blk.0.ffn_down.weight'
  """
  return _rename(key, _TO_GGUF)


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
  """HF q/k rows -> llama.cpp's order: per head, the two rotary halves interleaved.

  Example:
    >>> permute_qk(np.arange(4), 1).tolist()
    [0, 2, 1, 3]
  """
  split = w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
  return split.swapaxes(1, 2).reshape(w.shape)


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
  """Inverse of :func:`permute_qk` (llama.cpp's q/k rows -> HF's).

  Example:
    >>> unpermute_qk(permute_qk(np.arange(8), 2), 2).tolist()
    [0, 1, 2, 3, 4, 5, 6, 7]
  """
  split = w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:])
  return split.swapaxes(1, 2).reshape(w.shape)


def llama3_rope_factors(theta: float, dim: int, rope: dict[str, Any]) -> np.ndarray:
  """llama.cpp's ``rope_freqs`` for Llama-3 RoPE scaling: per frequency, the divisor applied.

  Example:
    >>> rope = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
    ...         "original_max_position_embeddings": 64}
    >>> [round(float(f), 3) for f in llama3_rope_factors(10_000.0, 8, rope)]
    [1.0, 7.667, 8.0, 8.0]
  """
  factor, low, high = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
  old = rope["original_max_position_embeddings"]
  wavelen = 2 * math.pi * theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
  smooth = (old / wavelen - low) / (high - low)
  ramp = 1 / ((1 - smooth) / factor + smooth)
  out = np.where(wavelen < old / high, 1.0, np.where(wavelen > old / low, factor, ramp))
  return out.astype(np.float32)


def find_gguf(path: str | pathlib.Path) -> pathlib.Path | None:
  """The GGUF file ``path`` names: itself if a file, the one ``*.gguf`` in a folder without
  ``config.json``; None for anything else (an HF folder, or nothing there).

  Raises:
    CheckpointError: a folder without ``config.json`` holding several ``.gguf`` files.

  Example:
    >>> import tempfile
    >>> find_gguf(tempfile.mkdtemp()) is None
    True
  """
  path = pathlib.Path(path)
  if path.is_file():
    return path
  if not path.is_dir() or (path / "config.json").exists():
    return None
  found = sorted(path.glob("*.gguf"))
  if len(found) > 1:
    names = ", ".join(f.name for f in found)
    raise CheckpointError(f"{path} holds several GGUF files ({names}); name one")
  return found[0] if found else None


_REQUIRED = object()
# Parsed headers of the files opened last: the gguf package parses a 49k-token vocabulary in
# ~2.5 s, and a job opens its checkpoint three times (model, tokenizer, chat template).
_PARSED: collections.OrderedDict[tuple, gguf.GGUFReader] = collections.OrderedDict()
_KEEP_PARSED = 2


def _parsed(file: pathlib.Path) -> gguf.GGUFReader:
  stat = file.stat()
  key = (str(file.resolve()), stat.st_size, stat.st_mtime_ns)
  if key not in _PARSED:
    _PARSED[key] = gguf.GGUFReader(file)
    while len(_PARSED) > _KEEP_PARSED:
      _PARSED.popitem(last=False)
  _PARSED.move_to_end(key)
  return _PARSED[key]


class GGUFFile:
  """One GGUF file as HF-keyed tensors (``keys``, ``read``) plus config, tokenizer and template.

  Use as a context manager. ``keys`` maps each HF key to where the tensor lives
  (``file.gguf:gguf_name``); tensors not in :data:`TENSOR_NAMES` keep their GGUF name as key,
  so strict loading reports them.

  Example:
    >>> with GGUFFile("SmolLM2-135M-Instruct.Q4_1.gguf") as f:  # doctest: +SKIP
    ...   f.config()["num_hidden_layers"], f.read("model.norm.weight").shape
    (30, (576,))
  """

  def __init__(self, file: str | pathlib.Path):
    self.file = pathlib.Path(file)
    if not self.file.is_file():
      raise FileNotFoundError(f"GGUF file {str(self.file)!r} does not exist")
    with open(self.file, "rb") as f:
      if f.read(4) != _MAGIC:
        raise CheckpointError(f"{self.file} is not a GGUF file (no GGUF magic at its start)")
    try:
      self._reader = _parsed(self.file)
    except Exception as e:  # the reader raises ValueError, IndexError, ... on damaged files
      message = f"{self.file} is truncated or corrupt: {type(e).__name__}: {e}"
      raise CheckpointError(message) from None
    self._fields = self._reader.fields
    self.architecture = self.value("general.architecture")
    if self.architecture not in SUPPORTED_ARCHITECTURES:
      raise CheckpointError(
        f"{self.file}: architecture {self.architecture!r} is not supported; supported: "
        f"{', '.join(SUPPORTED_ARCHITECTURES)}"
      )
    self._tensors = {t.name: t for t in self._reader.tensors}
    for t in self._tensors.values():
      if t.tensor_type not in TENSOR_TYPES:
        raise CheckpointError(
          f"{self.file}: tensor {t.name!r} has type {t.tensor_type.name}; supported: "
          f"{', '.join(q.name for q in TENSOR_TYPES)}"
        )
    self.keys: dict[str, str] = {}
    for name in self._tensors:
      if name != ROPE_FREQS:
        self.keys[hf_key(name) or name] = f"{self.file.name}:{name}"

  def value(self, key: str, default: Any = _REQUIRED) -> Any:
    """A metadata value; without ``default`` a missing key is a ``CheckpointError``."""
    field = self._fields.get(key)
    if field is None:
      if default is _REQUIRED:
        raise CheckpointError(f"{self.file} lacks metadata key {key!r}")
      return default
    return field.contents()

  def metadata_keys(self) -> list[str]:
    """Every metadata key of the file (``GGUF.*`` header entries left out)."""
    return [k for k in self._fields if not k.startswith("GGUF.")]

  def _arch_value(self, name: str, default: Any = _REQUIRED) -> Any:
    value = self.value(f"{self.architecture}.{name}", default)
    if isinstance(value, list):  # per-layer values (some hybrid models): not a dense decoder
      raise CheckpointError(f"{self.file}: {self.architecture}.{name} varies per layer: {value}")
    return value

  def read(self, key: str) -> np.ndarray:
    """The tensor ``key`` (an HF key) dequantized to float32, in HF's layout and row order."""
    name = self.keys[key].split(":", 1)[1]
    t = self._tensors[name]
    try:
      value = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32, copy=False)
      value = value.reshape(tuple(int(n) for n in reversed(t.shape)))
    except Exception as e:
      raise CheckpointError(f"cannot read tensor {name!r} from {self.file}: {e}") from None
    if self.architecture in PERMUTED_QK and re.search(r"\.attn_[qk]\.", name):
      heads = self._arch_value("attention.head_count")
      n = heads if ".attn_q." in name else self._arch_value("attention.head_count_kv", heads)
      if value.shape[0] % (2 * n) == 0:  # else the wrong shape is reported by the caller
        value = unpermute_qk(value, n)
    return np.ascontiguousarray(value)

  def config(self) -> dict[str, Any]:
    """A transformers-5 ``config.json`` dict for the model the metadata describes.

    Raises:
      CheckpointError: a required metadata key is missing, or RoPE settings we cannot express.
    """
    get = self._arch_value
    hidden, heads = get("embedding_length"), get("attention.head_count")
    head_dim = get("attention.key_length", None) or get("rope.dimension_count", None)
    head_dim = head_dim or hidden // heads
    if get("rope.dimension_count", head_dim) != head_dim:
      raise CheckpointError(
        f"{self.file}: partial rotary ({self.architecture}.rope.dimension_count "
        f"{get('rope.dimension_count')} of head dim {head_dim}) is not supported"
      )
    embed = self._tensors.get("token_embd.weight")
    vocab = int(embed.shape[1]) if embed is not None else len(self.value("tokenizer.ggml.tokens"))
    special = self.special_tokens()
    tied = "output.weight" not in self._tensors
    return {
      "architectures": [{"llama": "Llama", "qwen2": "Qwen2", "qwen3": "Qwen3"}[self.architecture]
                        + "ForCausalLM"],
      "model_type": self.architecture,
      "vocab_size": vocab,
      "hidden_size": hidden,
      "intermediate_size": get("feed_forward_length"),
      "num_hidden_layers": get("block_count"),
      "num_attention_heads": heads,
      "num_key_value_heads": get("attention.head_count_kv", heads),
      "head_dim": head_dim,
      "max_position_embeddings": get("context_length", 2048),
      "rms_norm_eps": get("attention.layer_norm_rms_epsilon"),
      "rope_parameters": self._rope(head_dim),
      "hidden_act": "silu",
      "attention_bias": self._attention_bias(),
      "mlp_bias": "blk.0.ffn_up.bias" in self._tensors,
      "tie_word_embeddings": tied,
      "bos_token_id": special.bos_id,
      "eos_token_id": special.eos_id,
      "pad_token_id": special.pad_id,
      "dtype": "float32",
    }  # fmt: skip

  def _attention_bias(self) -> bool:
    # HF's attention_bias puts biases on q, k, v and o; qwen2 has q/k/v biases regardless.
    if "blk.0.attn_output.bias" in self._tensors:
      return True
    return self.architecture != "qwen2" and "blk.0.attn_q.bias" in self._tensors

  def _rope(self, head_dim: int) -> dict[str, Any]:
    theta = float(self._arch_value("rope.freq_base", 10_000.0))
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": theta}
    kind = self._arch_value("rope.scaling.type", "none")
    if kind == "linear":
      rope.update(rope_type="linear", factor=float(self._arch_value("rope.scaling.factor")))
    elif kind != "none":
      raise CheckpointError(f"{self.file}: RoPE scaling {kind!r} is not supported")
    if ROPE_FREQS in self._tensors:
      # llama.cpp stores Llama-3 scaling as the factors themselves; we recover Meta's
      # parameters (the ones every Llama 3.x uses) and check they reproduce the tensor.
      factors = gguf.quants.dequantize(self._tensors[ROPE_FREQS].data, _T.F32).ravel()
      old = self._arch_value("rope.scaling.original_context_length", 8192)
      fields = dict(factor=float(factors[-1]), low_freq_factor=1.0, high_freq_factor=4.0)
      rope.update(rope_type="llama3", original_max_position_embeddings=int(old), **fields)
      if not np.allclose(llama3_rope_factors(theta, head_dim, rope), factors, rtol=1e-5):
        raise CheckpointError(
          f"{self.file}: {ROPE_FREQS} is not Llama-3 RoPE scaling with low/high frequency "
          f"factors 1 and 4 and original context {old}: not supported"
        )
    return rope

  def special_tokens(self) -> SpecialTokens:
    """Special ids and the BOS/EOS policy from ``tokenizer.ggml.*``."""
    return special_from_metadata(self.value)

  def tokenizer(self) -> Tokenizer:
    """The tokenizer the metadata describes (see :mod:`.gguf_tokenizer`)."""
    return tokenizer_from_metadata(self.value, str(self.file))

  def chat_template(self) -> str | None:
    """``tokenizer.chat_template``, or None."""
    return self.value("tokenizer.chat_template", None)

  def close(self) -> None:
    # The parsed header (and its memory map) stays in the small cache above.
    self._tensors, self._fields = {}, {}
    self._reader = None

  def __enter__(self) -> GGUFFile:
    return self

  def __exit__(self, *exc) -> None:
    self.close()
