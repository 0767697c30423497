"""GGUF bad input: each case raises ``CheckpointError`` naming the file and the key."""

import struct

import gguf
import numpy as np
import pytest
from gguf_tiny import hf_tensors, write_tiny

from experiments import hf
from experiments.models.hf.gguf_io import GGUFFile


def test_truncated_and_non_gguf_files(tmp_path):
  file = write_tiny(tmp_path / "m.gguf", hf_tensors())
  data = file.read_bytes()
  for cut in (len(data) - 100, 2000, 10):
    file.write_bytes(data[:cut])
    with pytest.raises(hf.CheckpointError, match=r"m\.gguf is truncated or corrupt"):
      hf.load_model(file)
  file.write_bytes(b"PK\x03\x04 not a gguf at all")
  with pytest.raises(hf.CheckpointError, match=r"m\.gguf is not a GGUF file"):
    hf.load_model(file)
  file.write_bytes(b"")
  with pytest.raises(hf.CheckpointError, match="not a GGUF file"):
    hf.load_tokenizer(file)


def test_unsupported_architecture_names_the_supported_ones(tmp_path):
  file = write_tiny(tmp_path / "g.gguf", hf_tensors(), arch="gemma")
  with pytest.raises(hf.CheckpointError, match=r"g\.gguf.*'gemma'.*llama, qwen2, qwen3"):
    hf.load_model(file)


def test_missing_and_wrong_shaped_tensors(tmp_path):
  tensors = hf_tensors()
  del tensors["model.layers.1.mlp.up_proj.weight"]
  file = write_tiny(tmp_path / "m.gguf", tensors)
  with pytest.raises(hf.CheckpointError, match=r"m\.gguf lacks.*model\.layers\.1\.mlp\.up_proj"):
    hf.load_model(file)
  tensors = hf_tensors()
  tensors["model.layers.0.self_attn.k_proj.weight"] = np.zeros((8, 32), np.float32)
  file = write_tiny(tmp_path / "w.gguf", tensors)
  with pytest.raises(
    hf.CheckpointError, match=r"k_proj\.weight.*w\.gguf:blk\.0\.attn_k.*\(8, 32\)"
  ):
    hf.load_model(file)
  tensors = hf_tensors()
  tensors["model.layers.0.self_attn.v_proj.bias"] = np.zeros(16, np.float32)
  with pytest.raises(hf.CheckpointError, match=r"does not use.*v_proj\.bias"):
    hf.load_model(write_tiny(tmp_path / "u.gguf", tensors))


@pytest.mark.parametrize(
  "drop, call, key",
  [
    ("block_count", hf.load_model, "llama.block_count"),
    ("tokenizer.ggml.tokens", hf.load_tokenizer, "tokenizer.ggml.tokens"),
    ("tokenizer.ggml.merges", hf.load_tokenizer, "tokenizer.ggml.merges"),
    ("tokenizer.ggml.pre", hf.load_tokenizer, "tokenizer.ggml.pre"),
  ],
)
def test_missing_metadata_names_file_and_key(drop, call, key, tmp_path):
  file = write_tiny(tmp_path / "m.gguf", hf_tensors(), drop_kv=(drop,))
  with pytest.raises(hf.CheckpointError, match=rf"m\.gguf lacks metadata key '{key}'"):
    call(file)


def test_unknown_tokenizer_kinds_are_named(tmp_path):
  with pytest.raises(hf.CheckpointError, match="tokenizer.ggml.pre 'mystery'.*supported: gpt-2"):
    hf.load_tokenizer(write_tiny(tmp_path / "p.gguf", hf_tensors(), pre="mystery"))
  w = gguf.GGUFWriter(tmp_path / "spm.gguf", "llama")
  w.add_string("tokenizer.ggml.model", "llama")
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  with pytest.raises(hf.CheckpointError, match=r"spm\.gguf: tokenizer.ggml.model is 'llama'"):
    hf.load_tokenizer(tmp_path / "spm.gguf")


def test_folder_with_two_gguf_files_and_empty_folder(tmp_path):
  write_tiny(tmp_path / "a.gguf", hf_tensors())
  write_tiny(tmp_path / "b.gguf", hf_tensors())
  with pytest.raises(hf.CheckpointError, match=r"several GGUF files \(a\.gguf, b\.gguf\)"):
    hf.load_model(tmp_path)
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="no config.json"):
    hf.load_model(tmp_path / "empty")


def test_header_claiming_more_tensors_than_present(tmp_path):
  # A plausible header whose counts lie: the reader must fail cleanly, not crash.
  file = tmp_path / "lie.gguf"
  file.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 10**6, 0))
  with pytest.raises(hf.CheckpointError, match="truncated or corrupt"):
    GGUFFile(file)
