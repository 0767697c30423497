"""HF checkpoint folders: export round trips, config layouts, storage dtypes, broken checkpoints."""

import dataclasses
import json
import pathlib
import shutil

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy
from flax import nnx

from experiments import hf
from experiments.models.hf.config import arch_from_dict, read_config
from experiments.models.hf.layers import inv_frequencies

HF_TINY = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data" / "hf_tiny"
FAMILIES = ("llama", "qwen2", "qwen3", "phi", "gemma")
pytestmark = pytest.mark.skipif(
  not HF_TINY.is_dir(), reason=f"{HF_TINY} (tiny HF checkpoints with reference outputs) is absent"
)


def copy_case(family, tmp_path) -> pathlib.Path:
  # copyfile: the shared files are read-only and the copies get rewritten.
  copied = shutil.copytree(HF_TINY / family, tmp_path / family, copy_function=shutil.copyfile)
  return pathlib.Path(copied)


def tensors_of(folder) -> dict[str, np.ndarray]:
  out = {}
  for file in sorted(pathlib.Path(folder).glob("*.safetensors")):
    out.update(safetensors.numpy.load_file(str(file)))
  return out


def rewrite(folder, tensors) -> None:
  for file in folder.glob("model*.safetensors*"):
    file.unlink()
  safetensors.numpy.save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})


def params_of(model):
  return {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def assert_same_params(a, b):
  pa, pb = params_of(a), params_of(b)
  assert pa.keys() == pb.keys()
  for k in pa:
    assert pa[k].dtype == pb[k].dtype, k
    np.testing.assert_array_equal(pa[k], pb[k], err_msg=str(k))


@pytest.mark.parametrize("family", FAMILIES)
def test_save_writes_hf_keys_and_layouts_and_loads_back_exactly(family, tmp_path):
  model = hf.load_model(HF_TINY / family)
  hf.save_model(model, tmp_path / "out")
  original, saved = tensors_of(HF_TINY / family), tensors_of(tmp_path / "out")
  assert saved.keys() == original.keys()
  for key, value in original.items():
    assert saved[key].dtype == np.float32, key
    np.testing.assert_array_equal(saved[key], value.astype(np.float32), err_msg=key)
  config = json.loads((tmp_path / "out" / "config.json").read_text())
  assert config["model_type"] == family and config["dtype"] == "float32"
  assert_same_params(model, hf.load_model(tmp_path / "out"))


def test_bf16_model_saves_bf16_and_round_trips(tmp_path):
  model = hf.load_model(HF_TINY / "qwen2", dtype=jnp.bfloat16)
  hf.save_model(model, tmp_path / "out")
  saved = tensors_of(tmp_path / "out")
  assert {v.dtype for v in saved.values()} == {np.dtype(ml_dtypes.bfloat16)}
  assert json.loads((tmp_path / "out" / "config.json").read_text())["dtype"] == "bfloat16"
  assert_same_params(model, hf.load_model(tmp_path / "out", dtype=jnp.bfloat16))


def test_sharded_export_writes_an_index_and_round_trips(tmp_path):
  model = hf.load_model(HF_TINY / "llama")
  hf.save_model(model, tmp_path / "out", max_shard_bytes=200_000)
  index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
  assert len(set(index["weight_map"].values())) > 1
  assert not (tmp_path / "out" / "model.safetensors").exists()
  assert_same_params(model, hf.load_model(tmp_path / "out"))


def test_model_built_from_scratch_exports_a_config(tmp_path):
  arch, _ = read_config(HF_TINY / "phi")
  model = hf.CausalLM(arch, rngs=nnx.Rngs(1))
  hf.save_model(model, tmp_path / "out")
  assert read_config(tmp_path / "out")[0] == arch
  assert_same_params(model, hf.load_model(tmp_path / "out"))


def test_legacy_and_transformers5_config_layouts_agree(tmp_path):
  # qwen3 ships the transformers-5 layout: rewrite it the legacy way.
  folder = copy_case("qwen3", tmp_path)
  raw = json.loads((folder / "config.json").read_text())
  rope = raw.pop("rope_parameters")
  raw.update(rope_theta=rope["rope_theta"], rope_scaling=None, torch_dtype=raw.pop("dtype"))
  (folder / "config.json").write_text(json.dumps(raw))
  assert read_config(folder)[0] == read_config(HF_TINY / "qwen3")[0]
  # phi ships the legacy layout (top-level partial_rotary_factor): rewrite it for transformers 5.
  folder = copy_case("phi", tmp_path)
  raw = json.loads((folder / "config.json").read_text())
  raw["rope_parameters"] = {
    "rope_type": "default",
    "rope_theta": raw.pop("rope_theta"),
    "partial_rotary_factor": raw.pop("partial_rotary_factor"),
  }
  raw.pop("rope_scaling")
  raw["dtype"] = raw.pop("torch_dtype")
  (folder / "config.json").write_text(json.dumps(raw))
  arch = read_config(folder)[0]
  assert arch == read_config(HF_TINY / "phi")[0] and arch.rotary_dim == 8


def test_float16_storage_loads_as_the_stored_values(tmp_path):
  folder = copy_case("gemma", tmp_path)
  half = {k: v.astype(np.float16) for k, v in tensors_of(folder).items()}
  rewrite(folder, half)
  model = hf.load_model(folder)
  np.testing.assert_array_equal(
    np.asarray(model.embed.embedding.get_value()),
    half["model.embed_tokens.weight"].astype(np.float32),
  )


def test_rope_scaling_matches_transformers_inverse_frequencies():
  # transformers 5.24 ROPE_INIT_FUNCTIONS for head_dim 16 (one frequency on the llama3 ramp).
  arch, _ = read_config(HF_TINY / "llama")
  llama3 = (("factor", 8.0), ("low_freq_factor", 1.0), ("high_freq_factor", 4.0))
  llama3 += (("original_max_position_embeddings", 64.0),)
  hf_llama3 = [1.0, 0.079403013, 0.0047007538, 9.1158313e-04, 1.7677668e-04, 3.4281024e-05,
               6.6478697e-06, 1.2891732e-06]  # fmt: skip
  scaled = dataclasses.replace(arch, rope_theta=500000.0, rope_scaling=("llama3", llama3))
  np.testing.assert_allclose(inv_frequencies(scaled), hf_llama3, rtol=1e-6)
  linear = dataclasses.replace(arch, rope_scaling=("linear", (("factor", 4.0),)))
  np.testing.assert_allclose(inv_frequencies(linear)[:3], [0.25, 0.079056941, 0.025], rtol=1e-6)


# --- broken checkpoints: each error names the problem -------------------------------------


def test_missing_folder_and_missing_config(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    hf.load_model(tmp_path / "nowhere")
  folder = copy_case("gemma", tmp_path)
  (folder / "config.json").unlink()
  with pytest.raises(FileNotFoundError, match="no config.json"):
    hf.load_model(folder)


def test_unsupported_model_type_names_the_supported_ones(tmp_path):
  folder = copy_case("gemma", tmp_path)
  raw = json.loads((folder / "config.json").read_text())
  (folder / "config.json").write_text(json.dumps({**raw, "model_type": "mistral"}))
  with pytest.raises(hf.CheckpointError, match="'mistral'.*llama, qwen2, qwen3, phi, gemma"):
    hf.load_model(folder)


def test_missing_tensor_is_named(tmp_path):
  folder = copy_case("gemma", tmp_path)
  tensors = tensors_of(folder)
  del tensors["model.layers.1.mlp.up_proj.weight"]
  rewrite(folder, tensors)
  with pytest.raises(hf.CheckpointError, match=r"lacks.*model\.layers\.1\.mlp\.up_proj\.weight"):
    hf.load_model(folder)


def test_unexpected_tensor_is_named(tmp_path):
  folder = copy_case("gemma", tmp_path)
  tensors = tensors_of(folder)
  tensors["model.layers.0.self_attn.q_proj.bias"] = np.zeros(64, np.float32)
  rewrite(folder, tensors)
  with pytest.raises(hf.CheckpointError, match=r"does not use.*self_attn\.q_proj\.bias"):
    hf.load_model(folder)


def test_wrong_shape_is_named(tmp_path):
  folder = copy_case("qwen3", tmp_path)
  tensors = tensors_of(folder)
  tensors["model.layers.0.self_attn.k_proj.weight"] = np.zeros((32, 64), np.float32)
  rewrite(folder, tensors)
  with pytest.raises(hf.CheckpointError, match=r"k_proj\.weight.*\(32, 64\).*\(64, 64\)"):
    hf.load_model(folder)


def test_truncated_and_garbage_safetensors_are_named(tmp_path):
  folder = copy_case("gemma", tmp_path)
  data = (folder / "model.safetensors").read_bytes()
  (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
  with pytest.raises(hf.CheckpointError, match="model.safetensors is unreadable or truncated"):
    hf.load_model(folder)
  (folder / "model.safetensors").write_bytes(b"not a safetensors file")
  with pytest.raises(hf.CheckpointError, match="model.safetensors is unreadable"):
    hf.load_model(folder)


def test_missing_shard_and_missing_weights_are_named(tmp_path):
  folder = copy_case("llama", tmp_path)
  (folder / "model-00002-of-00003.safetensors").unlink()
  with pytest.raises(hf.CheckpointError, match="model-00002-of-00003.safetensors.*does not exist"):
    hf.load_model(folder)
  for file in folder.glob("model*"):
    file.unlink()
  with pytest.raises(hf.CheckpointError, match="neither model.safetensors nor"):
    hf.load_model(folder)


def test_tied_checkpoint_may_carry_a_copy_of_the_embedding(tmp_path):
  # Some tied checkpoints store lm_head.weight anyway; transformers ignores it, so do we.
  folder = copy_case("gemma", tmp_path)
  tensors = tensors_of(folder)
  tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"]
  rewrite(folder, tensors)
  assert_same_params(hf.load_model(folder), hf.load_model(HF_TINY / "gemma"))


def test_mesh_without_data_or_model_axes_or_with_explicit_axes_is_refused():
  mesh = jax.make_mesh((2,), ("x",), axis_types=(jax.sharding.AxisType.Auto,))
  with pytest.raises(ValueError, match="neither 'data' nor 'model'"):
    hf.load_model(HF_TINY / "gemma", mesh=mesh)
  explicit = jax.make_mesh((4, 2), ("data", "model"), devices=jax.devices()[:8])
  with pytest.raises(ValueError, match="not all Auto"):
    hf.load_model(HF_TINY / "gemma", mesh=explicit)


@pytest.mark.parametrize(
  "change, message",
  [
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0}}, "'yarn'"),
    ({"hidden_act": "relu2"}, "activation 'relu2'"),
    ({"use_sliding_window": True}, "sliding-window"),
  ],
)
def test_unsupported_config_features_are_named(change, message, tmp_path):
  folder = copy_case("qwen3", tmp_path)
  raw = json.loads((folder / "config.json").read_text())
  (folder / "config.json").write_text(json.dumps({**raw, **change}))
  with pytest.raises(hf.CheckpointError, match=message):
    hf.load_model(folder)


def test_missing_tokenizer_is_named(tmp_path):
  folder = copy_case("gemma", tmp_path)
  (folder / "tokenizer.json").unlink()
  with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
    hf.load_tokenizer(folder)


def test_omitted_config_keys_take_transformers_defaults():
  sizes = {"vocab_size": 8, "hidden_size": 8, "intermediate_size": 8, "num_hidden_layers": 1}
  sizes["num_attention_heads"] = 2
  phi = arch_from_dict({"model_type": "phi", **sizes})
  assert (phi.partial_rotary_factor, phi.norm_eps, phi.tie_embeddings) == (0.5, 1e-5, False)
  assert phi.act == "gelu_tanh" and phi.num_kv_heads == 2 and phi.head_dim == 4
  gemma = arch_from_dict({"model_type": "gemma", "hidden_act": "gelu", **sizes})
  assert gemma.tie_embeddings and gemma.act == "gelu_tanh"  # hidden_act is not gemma's key
  llama = arch_from_dict({"model_type": "llama", **sizes})
  assert (llama.tie_embeddings, llama.norm_eps, llama.rope_theta) == (False, 1e-6, 10_000.0)
