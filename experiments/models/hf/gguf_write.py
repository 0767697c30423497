"""Writing GGUF files llama.cpp and transformers read: :func:`write_gguf` and :func:`save_gguf`.

The input is what an HF export has (a ``config.json`` dict and HF-keyed tensors in HF's layout);
the output has llama.cpp's tensor names (:data:`~.gguf_io.TENSOR_NAMES`), llama's q/k rows
permuted back to llama.cpp's order, its metadata keys, the full tokenizer and the chat template.
Tensors are streamed: the plan (names, shapes, types) is written first, then one tensor at a time
is converted and appended. The file appears under its name only when complete.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Iterable
from typing import Any

import gguf
import jax.numpy as jnp
import numpy as np
from tokenizers import Tokenizer

from experiments.models.hf.config import CheckpointError, arch_from_dict
from experiments.models.hf.gguf_io import (
  PERMUTED_QK,
  ROPE_FREQS,
  SUPPORTED_ARCHITECTURES,
  GGUFFile,
  find_gguf,
  gguf_name,
  llama3_rope_factors,
  permute_qk,
)
from experiments.models.hf.gguf_tokenizer import tokenizer_metadata
from experiments.models.hf.tokenizer_files import SpecialTokens, special_tokens_of

_T = gguf.GGMLQuantizationType
# --dtype -> (type of matrices, llama.cpp's general.file_type). Vectors (norms, biases) are F32.
DTYPES: dict[str, tuple[gguf.GGMLQuantizationType, int]] = {
  "f32": (_T.F32, gguf.LlamaFileType.ALL_F32),
  "f16": (_T.F16, gguf.LlamaFileType.MOSTLY_F16),
  "bf16": (_T.BF16, gguf.LlamaFileType.MOSTLY_BF16),
  "q8_0": (_T.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
}

# general.* keys the writer sets itself (never copied from a source file).
_OWN_GENERAL = ("general.architecture", "general.type", "general.name", "general.file_type")
_OWN_GENERAL += ("general.quantization_version", "general.alignment")


def _tensor_type(shape: tuple[int, ...], dtype: str) -> gguf.GGMLQuantizationType:
  kind = DTYPES[dtype][0]
  if len(shape) == 1:
    return _T.F32
  block = gguf.GGML_QUANT_SIZES[kind][0]
  # Q8_0 packs rows in blocks of 32; a row that does not divide falls back to F16 (llama.cpp too).
  return kind if shape[-1] % block == 0 else _T.F16


def _encode(value: np.ndarray, kind: gguf.GGMLQuantizationType) -> np.ndarray:
  value = np.ascontiguousarray(value, dtype=np.float32)
  if kind == _T.F32:
    return value
  if kind == _T.F16:
    return value.astype(np.float16)
  return gguf.quants.quantize(value, kind)  # BF16, Q8_0: uint8 blocks, (rows, bytes)


def _add(writer: gguf.GGUFWriter, key: str, value: Any) -> None:
  # GGUF's conventional types: counts and ids UINT32, reals FLOAT32, token types INT32.
  if isinstance(value, bool):
    writer.add_bool(key, value)
  elif isinstance(value, int):
    writer.add_uint32(key, value)
  elif isinstance(value, float):
    writer.add_float32(key, value)
  elif isinstance(value, str):
    writer.add_string(key, value)
  else:
    writer.add_array(key, list(value))


def model_metadata(raw: dict[str, Any]) -> dict[str, Any]:
  """``{arch}.*`` metadata for a ``config.json`` dict (llama, qwen2, qwen3).

  Raises:
    CheckpointError: another family, partial rotary, or a RoPE scaling GGUF cannot express.

  Example:
    >>> raw = {"model_type": "qwen3", "vocab_size": 8, "hidden_size": 8,
    ...        "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2}
    >>> model_metadata(raw)["qwen3.attention.key_length"]
    4
  """
  arch = arch_from_dict(raw)
  name = arch.model_type
  if name not in SUPPORTED_ARCHITECTURES:
    raise CheckpointError(
      f"GGUF export supports {', '.join(SUPPORTED_ARCHITECTURES)}; this model is {name!r}"
    )
  if arch.rotary_dim != arch.head_dim:
    raise CheckpointError("GGUF export of a partial-rotary model is not supported")
  meta: dict[str, Any] = {
    "context_length": int(raw.get("max_position_embeddings") or 2048),
    "embedding_length": arch.hidden_size,
    "block_count": arch.num_layers,
    "feed_forward_length": arch.intermediate_size,
    "attention.head_count": arch.num_heads,
    "attention.head_count_kv": arch.num_kv_heads,
    "attention.key_length": arch.head_dim,
    "attention.value_length": arch.head_dim,
    "rope.dimension_count": arch.rotary_dim,
    "rope.freq_base": float(arch.rope_theta),
    "attention.layer_norm_rms_epsilon": float(arch.norm_eps),
    "vocab_size": arch.vocab_size,
  }
  if arch.rope_scaling is not None:
    kind, fields = arch.rope_scaling
    if kind == "linear":
      meta["rope.scaling.type"] = "linear"
      meta["rope.scaling.factor"] = float(dict(fields)["factor"])
    elif kind == "llama3" and name == "llama":
      meta["rope.scaling.original_context_length"] = int(
        dict(fields)["original_max_position_embeddings"]
      )
    else:
      raise CheckpointError(f"GGUF export of {kind!r} RoPE scaling for {name} is not supported")
  return {f"{name}.{k}": v for k, v in meta.items()}


def write_gguf(
  path: str | pathlib.Path,
  raw: dict[str, Any],
  tensors: Iterable[tuple[str, np.ndarray]],
  *,
  tokenizer: Tokenizer,
  special: SpecialTokens | None = None,
  chat_template: str | None = None,
  dtype: str = "f32",
  shapes: list[tuple[str, tuple[int, ...]]] | None = None,
  name: str | None = None,
  general: dict[str, Any] | None = None,
) -> pathlib.Path:
  """Writes a GGUF file from a ``config.json`` dict and HF-keyed tensors.

  Args:
    path: the ``.gguf`` file to write (written as ``path.tmp``, renamed when complete).
    raw: the ``config.json`` dict (llama, qwen2 or qwen3).
    tensors: ``(HF key, array in HF layout)`` pairs, any float dtype; consumed in order.
    tokenizer: the byte-level BPE tokenizer (all its metadata goes into the file).
    special: special ids and BOS/EOS policy (default: ``config.json``'s ids and what
      ``tokenizer`` does, see :func:`~.tokenizer_files.special_tokens_of`).
    chat_template: stored as ``tokenizer.chat_template``.
    dtype: ``f32``, ``f16``, ``bf16`` or ``q8_0`` for matrices; vectors (norms, biases) F32.
    shapes: ``(key, shape)`` in the order of ``tensors``, to stream them (default: all
      tensors are materialised first to learn the shapes).
    name: ``general.name`` (default: the file's stem).
    general: more ``general.*`` metadata to keep (a source GGUF's license, organization...).

  Returns:
    The path written.

  Raises:
    CheckpointError: an unsupported family, tokenizer or dtype; a key without a GGUF name; a
      tensor whose shape differs from ``shapes``.

  Example:
    >>> from experiments import hf  # doctest: +SKIP
    >>> raw, shapes, tensors = hf.hf_tensors(hf.load_model("ckpt"))  # doctest: +SKIP
    >>> write_gguf("m.gguf", raw, tensors, tokenizer=hf.load_tokenizer("ckpt"),
    ...            shapes=shapes, dtype="q8_0")  # doctest: +SKIP
  """
  if dtype not in DTYPES:
    raise CheckpointError(f"GGUF dtype {dtype!r} is not supported; supported: {', '.join(DTYPES)}")
  path = pathlib.Path(path)
  arch = arch_from_dict(raw)
  meta = model_metadata(raw)
  if special is None:
    special = special_tokens_of(tokenizer, raw, {})
  meta |= tokenizer_metadata(tokenizer, special, arch.vocab_size, chat_template)
  if shapes is None:
    tensors = [(k, np.asarray(v)) for k, v in tensors]
    shapes = [(k, tuple(v.shape)) for k, v in tensors]
  plan = []  # (HF key, GGUF name, shape, type)
  for key, shape in shapes:
    if arch.tie_embeddings and key == "lm_head.weight":
      continue  # a tied checkpoint's copy of the embedding: llama.cpp ties by leaving it out
    target = gguf_name(key)
    if target is None:
      raise CheckpointError(f"tensor {key!r} has no GGUF name (see gguf_io.TENSOR_NAMES)")
    plan.append((key, target, tuple(int(n) for n in shape), _tensor_type(shape, dtype)))
  extra = []
  if arch.rope_scaling is not None and arch.rope_scaling[0] == "llama3":
    fields = dict(arch.rope_scaling[1])
    extra.append((ROPE_FREQS, llama3_rope_factors(arch.rope_theta, arch.head_dim, fields)))
  heads = {"q": arch.num_heads, "k": arch.num_kv_heads}

  tmp = path.with_name(path.name + ".tmp")
  writer = gguf.GGUFWriter(tmp, arch.model_type)
  try:
    writer.add_type("model")
    writer.add_name(name or path.stem)
    writer.add_file_type(DTYPES[dtype][1])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for key, value in (general or {}).items():
      if key not in _OWN_GENERAL:
        _add(writer, key, value)
    for key, value in meta.items():
      _add(writer, key, value)
    for _, target, shape, kind in plan:
      nbytes = int(np.prod(gguf.quant_shape_to_byte_shape(shape, kind)))
      writer.add_tensor_info(target, shape, np.dtype(np.float32), nbytes, raw_dtype=kind)
    for target, value in extra:
      writer.add_tensor_info(target, value.shape, value.dtype, value.nbytes)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    it = iter(tensors)
    for key, target, shape, kind in plan:
      got_key, value = next(it)
      if arch.tie_embeddings and got_key == "lm_head.weight":
        got_key, value = next(it)
      value = np.asarray(value, dtype=np.float32)
      if got_key != key or value.shape != shape:
        raise CheckpointError(f"tensor {got_key!r} {value.shape} arrived where the plan has "
                              f"{key!r} {shape}")  # fmt: skip
      part = target.split(".")[-2] if target.startswith("blk.") else ""
      if arch.model_type in PERMUTED_QK and part in ("attn_q", "attn_k"):
        value = permute_qk(value, heads[part[-1]])
      writer.write_tensor_data(_encode(value, kind))
    for _, value in extra:
      writer.write_tensor_data(value)
    writer.close()
    os.replace(tmp, path)
  except BaseException:
    writer.close()
    tmp.unlink(missing_ok=True)
    raise
  return path


def tokenizer_bundle(
  src: str | pathlib.Path,
) -> tuple[Tokenizer, SpecialTokens, str | None, dict[str, Any]]:
  """What a checkpoint says besides its tensors: tokenizer, special ids, chat template, and
  (GGUF only) its ``general.*`` metadata (license, organization, ...) for an export to keep.

  Example:
    >>> bundle = tokenizer_bundle("../shared/data/hf_tiny/llama")  # doctest: +SKIP
    >>> bundle[1].bos_id, bundle[1].add_bos, bundle[3]  # doctest: +SKIP
    (1, True, {})
  """
  from experiments.models.hf.config import read_config
  from experiments.models.hf.loading import load_tokenizer
  from experiments.models.hf.tokenizer_files import read_chat_template, read_tokenizer_config

  file = find_gguf(src)
  if file is not None:
    with GGUFFile(file) as source:
      general = {k: source.value(k) for k in source.metadata_keys() if k.startswith("general.")}
      general = {k: v for k, v in general.items() if k not in _OWN_GENERAL}
      return source.tokenizer(), source.special_tokens(), source.chat_template(), general
  tok = load_tokenizer(src)
  _, raw = read_config(src)
  special = special_tokens_of(tok, raw, read_tokenizer_config(src))
  return tok, special, read_chat_template(src), {}


def check_exportable(src: str | pathlib.Path) -> None:
  """Raises ``CheckpointError`` where :func:`save_gguf` of a model loaded from ``src`` (with
  ``source=src``) cannot apply: a family GGUF export lacks (phi, gemma), partial rotary, a RoPE
  scaling GGUF cannot express, a tokenizer that is not byte-level BPE. Reads no tensor.

  Example:
    >>> check_exportable("../shared/data/hf_tiny/phi")  # doctest: +SKIP
    Traceback (most recent call last):
    ...
    CheckpointError: GGUF export supports llama, qwen2, qwen3; this model is 'phi'
  """
  from experiments.models.hf.loading import open_checkpoint

  arch, raw, source = open_checkpoint(src)
  with source:  # opened for its config only
    model_metadata(raw)
  tok, special, template, _ = tokenizer_bundle(src)
  tokenizer_metadata(tok, special, arch.vocab_size, template)


def save_gguf(
  model,
  path: str | pathlib.Path,
  *,
  source: str | pathlib.Path | None = None,
  tokenizer: Tokenizer | None = None,
  chat_template: str | None = None,
  dtype: str | None = None,
  special: SpecialTokens | None = None,
) -> pathlib.Path:
  """Writes a loaded (or trained) ``CausalLM`` as one GGUF file, for llama.cpp-family tools.

  Args:
    model: a llama, qwen2 or qwen3 ``CausalLM`` (LoRA adapters are merged first).
    path: the ``.gguf`` file (written as ``path.tmp``, renamed when complete).
    source: the checkpoint the model came from (GGUF or HF folder): its tokenizer, special
      ids, chat template and ``general.*`` metadata are the defaults of the next arguments.
    tokenizer: the tokenizer (required without ``source``).
    chat_template: the template to store.
    dtype: ``f32``, ``f16``, ``bf16`` or ``q8_0`` (default: the model's dtype, f32 or bf16).
    special: special ids and BOS/EOS policy (default: the source's, else from the model's
      config and the tokenizer).

  Returns:
    The path written.

  Example:
    >>> from experiments import hf
    >>> src = "SmolLM2-135M-Instruct.Q4_1.gguf"
    >>> hf.save_gguf(hf.load_model(src), "/tmp/smol_q8.gguf", source=src,
    ...              dtype="q8_0")  # doctest: +SKIP
    PosixPath('/tmp/smol_q8.gguf')
  """
  from experiments.models.hf.loading import hf_tensors

  general: dict[str, Any] = {}
  if source is not None:
    tok, src_special, template, general = tokenizer_bundle(source)
    tokenizer = tokenizer or tok
    special = special or src_special
    chat_template = chat_template if chat_template is not None else template
  if tokenizer is None:
    raise ValueError("save_gguf needs tokenizer= or source= (GGUF files carry the tokenizer)")
  raw, shapes, tensors = hf_tensors(model)
  if dtype is None:
    dtype = "bf16" if jnp.dtype(model.dtype) == jnp.bfloat16 else "f32"
  return write_gguf(
    path, raw, tensors, tokenizer=tokenizer, special=special, chat_template=chat_template,
    dtype=dtype, shapes=shapes, general=general,
  )  # fmt: skip
