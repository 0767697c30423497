"""GGUF reading: every tensor type, names and q/k rows, config, tokenizer, and each bad input."""

import json

import gguf
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx
from gguf_tiny import HEADS, KV_HEADS, hf_tensors, write_tiny
from tokenizers import Tokenizer, models, pre_tokenizers

from experiments import hf
from experiments.models.hf.gguf_io import GGUFFile, llama3_rope_factors, permute_qk, unpermute_qk
from experiments.models.hf.safetensors_io import write_folder

T = gguf.GGMLQuantizationType
ROWS, COLS = 4, 256  # one K-quant super-block per row


def write_tensors(path, tensors: dict[str, tuple[np.ndarray, object]]):
  w = gguf.GGUFWriter(path, "llama")
  for name, (data, qtype) in tensors.items():
    w.add_tensor(name, data, raw_dtype=qtype)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  return path


def read(path, name):
  with GGUFFile(path) as f:
    return f.read(name)


# --- tensor types ---------------------------------------------------------------------------


def test_float_types_read_exactly(tmp_path):
  x = np.random.default_rng(0).standard_normal((ROWS, COLS)).astype(np.float32)
  bf16 = gguf.quants.quantize(x, T.BF16)
  file = write_tensors(
    tmp_path / "f.gguf",
    {"a": (x, None), "b": (x.astype(np.float16), None), "c": (bf16, T.BF16)},
  )
  np.testing.assert_array_equal(read(file, "a"), x)
  np.testing.assert_array_equal(read(file, "b"), x.astype(np.float16).astype(np.float32))
  np.testing.assert_array_equal(read(file, "c"), x.astype(ml_dtypes.bfloat16).astype(np.float32))
  assert read(file, "c").dtype == np.float32 and read(file, "c").shape == (ROWS, COLS)


def decode_q8_0(block: bytes) -> np.ndarray:
  (d,) = np.frombuffer(block[:2], np.float16)
  return np.float32(d) * np.frombuffer(block[2:34], np.int8).astype(np.float32)


def decode_q4_0(block: bytes) -> np.ndarray:
  (d,) = np.frombuffer(block[:2], np.float16)
  q = np.frombuffer(block[2:18], np.uint8)
  return np.float32(d) * (np.concatenate([q & 15, q >> 4]).astype(np.float32) - 8)


def decode_q4_1(block: bytes) -> np.ndarray:
  d, m = np.frombuffer(block[:4], np.float16).astype(np.float32)
  q = np.frombuffer(block[4:20], np.uint8)
  return d * np.concatenate([q & 15, q >> 4]).astype(np.float32) + m


@pytest.mark.parametrize(
  "qtype, decode, tol",
  [(T.Q8_0, decode_q8_0, 1 / 127), (T.Q4_0, decode_q4_0, 1 / 7), (T.Q4_1, decode_q4_1, 1 / 15)],
)
def test_block_quants_match_hand_decode_and_the_original(qtype, decode, tol, tmp_path):
  x = np.random.default_rng(1).standard_normal((ROWS, COLS)).astype(np.float32)
  q = gguf.quants.quantize(x, qtype)
  got = read(write_tensors(tmp_path / "q.gguf", {"w": (q, qtype)}), "w")
  np.testing.assert_array_equal(got, gguf.quants.dequantize(q, qtype))
  block_bytes = gguf.GGML_QUANT_SIZES[qtype][1]
  np.testing.assert_allclose(got[0, :32], decode(q[0, :block_bytes].tobytes()), rtol=1e-6)
  # Each element is within one quantization step (block range / levels) of the original.
  blocks = x.reshape(-1, 32)
  step = (blocks.max(1) - blocks.min(1) if qtype == T.Q4_1 else 2 * np.abs(blocks).max(1)) * tol
  assert np.all(np.abs(got.reshape(-1, 32) - blocks) <= step[:, None] * 1.01)


def k_scales(scales: bytes) -> tuple[list[int], list[int]]:
  """ggml's get_scale_min_k4 for the 8 sub-blocks."""
  s = list(scales)
  sc, mn = [], []
  for j in range(8):
    if j < 4:
      sc.append(s[j] & 63)
      mn.append(s[j + 4] & 63)
    else:
      sc.append((s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4))
      mn.append((s[j + 4] >> 4) | ((s[j] >> 6) << 4))
  return sc, mn


def decode_q4_k(b: bytes) -> np.ndarray:
  d, dmin = np.frombuffer(b[:4], np.float16).astype(np.float64)
  sc, mn = k_scales(b[4:16])
  qs, y = b[16:144], []
  for c in range(4):
    q = qs[32 * c : 32 * c + 32]
    y += [d * sc[2 * c] * (v & 0xF) - dmin * mn[2 * c] for v in q]
    y += [d * sc[2 * c + 1] * (v >> 4) - dmin * mn[2 * c + 1] for v in q]
  return np.array(y)


def decode_q5_k(b: bytes) -> np.ndarray:
  d, dmin = np.frombuffer(b[:4], np.float16).astype(np.float64)
  sc, mn = k_scales(b[4:16])
  qh, qs, y = b[16:48], b[48:176], []
  for c in range(4):
    for sub, shift in ((2 * c, 0), (2 * c + 1, 4)):
      high_bit = 1 << sub  # qh bit `sub` of byte l is the 5th bit of element l of sub-block
      for low, h in zip(qs[32 * c : 32 * c + 32], qh, strict=True):
        q = ((low >> shift) & 0xF) + (16 if h & high_bit else 0)
        y.append(d * sc[sub] * q - dmin * mn[sub])
  return np.array(y)


def decode_q6_k(b: bytes) -> np.ndarray:
  ql, qh = b[:128], b[128:192]
  sc = np.frombuffer(b[192:208], np.int8).astype(np.float64)
  (d,) = np.frombuffer(b[208:210], np.float16).astype(np.float64)
  y = np.zeros(256)
  for half in range(2):
    l_, h_, s_ = ql[64 * half :], qh[32 * half :], sc[8 * half :]
    for i in range(32):
      k = i // 16
      q1 = ((l_[i] & 0xF) | ((h_[i] >> 0 & 3) << 4)) - 32
      q2 = ((l_[i + 32] & 0xF) | ((h_[i] >> 2 & 3) << 4)) - 32
      q3 = ((l_[i] >> 4) | ((h_[i] >> 4 & 3) << 4)) - 32
      q4 = ((l_[i + 32] >> 4) | ((h_[i] >> 6 & 3) << 4)) - 32
      base = 128 * half + i
      y[base], y[base + 32] = d * s_[k] * q1, d * s_[k + 2] * q2
      y[base + 64], y[base + 96] = d * s_[k + 4] * q3, d * s_[k + 6] * q4
  return y


def random_k_blocks(qtype, rng) -> np.ndarray:
  """Valid raw super-blocks (the gguf package cannot quantize K-quants): random payload, sane
  float16 scales where the format has them."""
  size = gguf.GGML_QUANT_SIZES[qtype][1]
  raw = rng.integers(0, 256, (ROWS, size), dtype=np.uint8)
  scale = np.full((ROWS, 1), 0.01, np.float16).view(np.uint8)
  if qtype == T.Q6_K:
    raw[:, 208:210] = scale
  else:
    raw[:, 0:2] = scale
    raw[:, 2:4] = np.full((ROWS, 1), 0.02, np.float16).view(np.uint8)
  return raw


@pytest.mark.parametrize(
  "qtype, decode", [(T.Q4_K, decode_q4_k), (T.Q5_K, decode_q5_k), (T.Q6_K, decode_q6_k)]
)
def test_k_quants_match_gguf_and_hand_decode(qtype, decode, tmp_path):
  raw = random_k_blocks(qtype, np.random.default_rng(2))
  got = read(write_tensors(tmp_path / "k.gguf", {"w": (raw, qtype)}), "w")
  assert got.shape == (ROWS, COLS) and got.dtype == np.float32
  np.testing.assert_array_equal(got, gguf.quants.dequantize(raw, qtype))
  np.testing.assert_allclose(got[1], decode(raw[1].tobytes()), rtol=1e-5, atol=1e-6)


def test_unsupported_tensor_type_names_type_and_tensor(tmp_path):
  x = np.zeros((ROWS, COLS), np.float32)
  file = write_tensors(
    tmp_path / "q5.gguf", {"blk.0.ffn_up.weight": (gguf.quants.quantize(x, T.Q5_0), T.Q5_0)}
  )
  with pytest.raises(hf.CheckpointError, match=r"q5\.gguf.*'blk\.0\.ffn_up\.weight'.*Q5_0"):
    GGUFFile(file)


# --- names, q/k rows, config ------------------------------------------------------------------


def test_permutation_is_llama_cpps_and_inverts():
  w = np.arange(2 * 8 * 3).reshape(16, 3)
  np.testing.assert_array_equal(unpermute_qk(permute_qk(w, 2), 2), w)
  # Head 0 of llama.cpp's layout interleaves HF rows 0..3 (first half) and 4..7 (second half).
  assert permute_qk(w, 2)[:8, 0].tolist() == [0, 12, 3, 15, 6, 18, 9, 21]


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_tiny_gguf_loads_as_the_hf_folder_of_the_same_tensors(arch, tmp_path):
  tensors = hf_tensors(arch, tied=arch != "qwen3")
  file = write_tiny(tmp_path / "m.gguf", tensors, arch=arch)
  with GGUFFile(file) as f:
    assert set(f.keys) == set(tensors)
    for key, value in tensors.items():
      np.testing.assert_array_equal(f.read(key), value, err_msg=key)  # q/k un-permuted
    raw = f.config()
  assert raw["model_type"] == arch and raw["tie_word_embeddings"] == (arch != "qwen3")
  assert (raw["num_attention_heads"], raw["num_key_value_heads"]) == (HEADS, KV_HEADS)
  folder = tmp_path / "hf"
  write_folder(folder, tensors.items())
  (folder / "config.json").write_text(json.dumps(raw))
  a, b = hf.load_model(file), hf.load_model(folder)
  ids = jnp.asarray([[5, 9, 200, 3]], jnp.int32)
  mask = jnp.ones_like(ids)
  np.testing.assert_array_equal(np.asarray(a(ids, mask)), np.asarray(b(ids, mask)))
  assert a.hf_config == b.hf_config


def test_quantized_tiny_model_and_a_folder_holding_it(tmp_path):
  tensors = hf_tensors()
  (tmp_path / "d").mkdir()
  write_tiny(tmp_path / "d" / "m.gguf", tensors, qtype=T.Q8_0)
  model = hf.load_model(tmp_path / "d")  # a folder with one .gguf and no config.json
  loaded = dict(hf.hf_tensors(model)[2])
  key = "model.layers.1.mlp.up_proj.weight"
  assert 0 < np.abs(loaded[key] - tensors[key]).max() < 0.01  # Q8_0 steps of ~0.005
  assert hf.chat_template(tmp_path / "d").startswith("{% for m in messages")
  assert hf.load_tokenizer(tmp_path / "d").token_to_id("<|im_end|>") == 2


def test_llama3_rope_factors_match_transformers():
  # transformers 5.24's llama3 inverse frequencies for theta 5e5, head_dim 16, factor 8,
  # low/high frequency factors 1/4, original context 64 (as in test_hf_checkpoints.py).
  hf_inv = [1.0, 0.079403013, 0.0047007538, 9.1158313e-04, 1.7677668e-04, 3.4281024e-05,
            6.6478697e-06, 1.2891732e-06]  # fmt: skip
  base = 1 / 500000.0 ** (np.arange(0, 16, 2) / 16)
  rope = dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0)
  rope["original_max_position_embeddings"] = 64
  np.testing.assert_allclose(llama3_rope_factors(500000.0, 16, rope), base / hf_inv, rtol=1e-6)


def test_llama3_rope_scaling_is_read_from_rope_freqs_and_written_back(tmp_path):
  rope = dict(factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0)
  rope["original_max_position_embeddings"] = 8192
  factors = llama3_rope_factors(500000.0, 8, rope)
  extra = {"rope_freqs.weight": factors}
  file = write_tiny(tmp_path / "l3.gguf", hf_tensors(), theta=500000.0, extra=extra)
  with GGUFFile(file) as f:
    assert f.config()["rope_parameters"] == {"rope_type": "llama3", "rope_theta": 500000.0, **rope}
    assert "rope_freqs.weight" not in f.keys
  out = hf.save_gguf(hf.load_model(file), tmp_path / "out.gguf", source=file)
  with GGUFFile(out) as f:
    assert f.config()["rope_parameters"]["rope_type"] == "llama3"
  back = {t.name: t for t in gguf.GGUFReader(out).tensors}["rope_freqs.weight"]
  np.testing.assert_array_equal(back.data, factors)
  extra = {"rope_freqs.weight": factors * np.linspace(1, 2, 4, dtype=np.float32)}
  bad = write_tiny(tmp_path / "odd.gguf", hf_tensors(), theta=500000.0, extra=extra)
  with pytest.raises(hf.CheckpointError, match=r"odd\.gguf: rope_freqs\.weight is not Llama-3"):
    hf.load_model(bad)


# --- tokenizer ------------------------------------------------------------------------------


@pytest.mark.parametrize(
  "pre, pieces",
  [
    ("smollm", ["Ġ", "1", "2", "3", "4"]),  # each digit alone
    ("gpt-2", ["Ġ1", "2", "3", "4"]),  # " 1234" one piece
    ("llama-bpe", ["Ġ", "123", "4"]),  # digits in threes, space apart
    ("qwen2", ["Ġ", "1", "2", "3", "4"]),
  ],
)
def test_pre_tokenizer_name_decides_the_split(pre, pieces, tmp_path):
  file = write_tiny(tmp_path / "m.gguf", hf_tensors(), pre=pre)
  tok = hf.load_tokenizer(file)
  assert tok.encode(" 1234").tokens == pieces
  assert tok.decode(tok.encode("héllo the 1234\n\t!").ids) == "héllo the 1234\n\t!"


def test_special_tokens_bos_and_user_defined(tmp_path):
  tok = hf.load_tokenizer(write_tiny(tmp_path / "a.gguf", hf_tensors(), add_bos=True))
  assert tok.encode("<|im_start|>the<think>").tokens == [
    "<|im_start|>", "<|im_start|>", "t", "he", "<think>"
  ]  # fmt: skip
  assert tok.encode("the", add_special_tokens=False).ids == [tok.token_to_id("t"), 260]
  tok = hf.load_tokenizer(write_tiny(tmp_path / "b.gguf", hf_tensors()))
  assert tok.encode(" the<|im_end|>").tokens == ["Ġthe", "<|im_end|>"]
  assert tok.decode(tok.encode("x<|im_end|>").ids, skip_special_tokens=True) == "x"


def test_tokenizer_metadata_round_trip_through_our_writer(tmp_path):
  from experiments.models.hf.gguf_tokenizer import tokenizer_metadata
  from experiments.models.hf.tokenizer_files import SpecialTokens

  src = hf.load_tokenizer(write_tiny(tmp_path / "a.gguf", hf_tensors(), add_bos=True))
  meta = tokenizer_metadata(src, SpecialTokens(1, 2, 0, None, True, False), 270)
  assert meta["tokenizer.ggml.pre"] == "smollm" and meta["tokenizer.ggml.tokens"][-1] == "[PAD269]"
  assert meta["tokenizer.ggml.token_type"][:4] == [3, 3, 3, 1]
  w = gguf.GGUFWriter(tmp_path / "t.gguf", "llama")
  for key, value in meta.items():
    kind = {bool: "bool", int: "uint32", str: "string", list: "array"}[type(value)]
    getattr(w, f"add_{kind}")(key, value)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  back = hf.load_tokenizer(tmp_path / "t.gguf")
  for text in ["<|im_start|>user 123 the<think>", "  tabs\tand\nnewlines ü"]:
    assert back.encode(text).ids == src.encode(text).ids


def test_writer_names_unsupported_pre_tokenizers():
  from experiments.models.hf.gguf_tokenizer import pre_tokenizer_name

  tok = Tokenizer(models.BPE({}, []))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  with pytest.raises(hf.CheckpointError, match="match no GGUF pre-tokenizer name.*smollm"):
    pre_tokenizer_name(tok)


def test_gguf_loads_onto_a_mesh(tmp_path):
  file = write_tiny(tmp_path / "m.gguf", hf_tensors(tied=False))
  mesh = hf.make_mesh(4, 2, devices=jax.devices()[:8])
  sharded = jax.tree.leaves(nnx.state(hf.load_model(file, mesh=mesh), nnx.Param))
  plain = jax.tree.leaves(nnx.state(hf.load_model(file), nnx.Param))
  # Placed by the logical axis rules (some leaves split over the 8 devices), values unchanged.
  assert any(
    len(v.sharding.device_set) == 8 and not v.sharding.is_fully_replicated for v in sharded
  )
  for a, b in zip(sharded, plain, strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
