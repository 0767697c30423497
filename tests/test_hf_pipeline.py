"""The TOFU pipeline's parts on HF checkpoints: ids, prompt formats, flags, LoRA, cache key."""

import json
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from experiments import hf, tofu
from experiments.data import synthetic
from experiments.data import tokenizer as toklib
from experiments.data.batching import Encoder
from experiments.data.prompts import FORMATS, prompt_format
from experiments.loops import losses, optimizers
from experiments.loops.checkpoint import Checkpoints
from experiments.loops.unlearn import UnlearnBatches, Unlearner
from experiments.model_flags import ModelOptions
from experiments.models import setup as model_setup
from experiments.models.decoder import DecoderLM, config_for
from experiments.models.generate import make_generate

HF_TINY = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data" / "hf_tiny"
pytestmark = pytest.mark.skipif(
  not HF_TINY.is_dir(), reason=f"{HF_TINY} (tiny HF checkpoints with reference outputs) is absent"
)


def copy_case(family, tmp_path) -> pathlib.Path:
  # copyfile: the shared files are read-only and the copies get rewritten.
  return pathlib.Path(
    shutil.copytree(HF_TINY / family, tmp_path / family, copy_function=shutil.copyfile)
  )


def edit_json(file: pathlib.Path, **changes) -> None:
  raw = json.loads(file.read_text())
  raw.update(changes)
  file.write_text(json.dumps(raw))


def test_ids_come_from_the_checkpoint(tmp_path):
  folder = copy_case("phi", tmp_path)
  edit_json(folder / "config.json", eos_token_id=[2, 5], pad_token_id=None)
  edit_json(folder / "generation_config.json", eos_token_id=[2, 7])
  edit_json(folder / "tokenizer.json", post_processor=None)  # as qwen and phi-1.5: no BOS
  tok = hf.load_tokenizer(folder)
  arch = hf.load_model(folder).arch
  ids = toklib.checkpoint_ids(tok, arch.bos_token_id, arch.eos_token_id, arch.pad_token_id, folder)
  assert ids == toklib.SpecialIds(pad=2, bos=1, eos=(2, 5, 7), add_bos=False)
  enc = Encoder(tok, 64, ids)
  seq, n_prompt = enc.pair("Who?", "Ann.")
  assert seq[0] != 1 and seq[-1] == 2 and enc.prompt("Who?") == seq[:n_prompt]
  assert enc.decode([*toklib.encode(tok, "Ann"), 7, *toklib.encode(tok, " more")]) == "Ann"
  # llama's post-processor writes BOS: so does the encoder.
  llama = hf.load_tokenizer(HF_TINY / "llama")
  with_bos = toklib.checkpoint_ids(llama, 1, 2, 0, HF_TINY / "llama")
  assert with_bos.add_bos and Encoder(llama, 64, with_bos).prompt("Who?")[0] == 1


def test_in_house_sequences_are_unchanged():
  tok = toklib.train_tokenizer(["Question: Who wrote it?\nAnswer: Ann Lee wrote it."], 300)
  seq, n_prompt = Encoder(tok, 64).pair("Who wrote it?", "Ann Lee wrote it.")
  prompt = [toklib.BOS, *toklib.encode(tok, "Question: Who wrote it?\nAnswer:")]
  assert seq == prompt + toklib.encode(tok, " Ann Lee wrote it.") + [toklib.EOS]
  assert n_prompt == len(prompt)


def test_prompt_formats():
  assert set(FORMATS) == {"tofu", "llama2", "llama3", "chatml", "gemma"}
  chat = prompt_format("chatml")
  assert chat.prompt("Q?") == "<|im_start|>user\nQ?<|im_end|>\n<|im_start|>assistant\n"
  assert chat.answer("A.") == "A."
  custom = prompt_format("Q: {question}\\nA: {answer}")
  assert (custom.name, custom.prompt("hi"), custom.answer("yo")) == ("custom", "Q: hi\nA:", " yo")
  for bad in ("{question}", "{answer} {question}", "Q: {question} {answer}{answer}"):
    with pytest.raises(ValueError, match="neither a named format"):
      prompt_format(bad)


def test_chat_special_tokens_stay_single_tokens():
  tok = hf.load_tokenizer(HF_TINY / "qwen2")
  tok.add_special_tokens(["<|im_start|>", "<|im_end|>"])  # as Qwen's tokenizer.json has them
  start, end = tok.token_to_id("<|im_start|>"), tok.token_to_id("<|im_end|>")
  enc = Encoder(tok, 64, toklib.checkpoint_ids(tok, 1, 2, 0), prompt_format("chatml"))
  assert enc.prompt("Q?")[:2] == [1, start] and end in enc.prompt("Q?")


def test_generation_stops_at_any_eos_id():
  model = DecoderLM(config_for("tiny", 50, 32), nnx.Rngs(0))
  graphdef, params = nnx.split(model)
  ids, mask = jnp.ones((2, 3), jnp.int32), jnp.ones((2, 3), jnp.int32)
  free = np.asarray(make_generate(graphdef, 6)(params, ids, mask))
  stop = (int(free[0, 1]), 49)
  cut = np.asarray(make_generate(graphdef, 6, eos_id=stop, pad_id=0)(params, ids, mask))
  first = int(np.argmax(np.isin(free[0], stop)))
  assert (cut[0, : first + 1] == free[0, : first + 1]).all() and (cut[0, first + 1 :] == 0).all()


BAD_FLAGS = [
  (["--finetuned", "L"], "--finetuned and --oracle go together"),
  (["--model", "L", "--finetuned", "L", "--oracle", "L"], "not both"),
  (["--lora-rank", "8"], "--lora-rank needs a checkpoint"),
  (["--mesh", "data:2"], "--mesh needs a checkpoint"),
  (["--param-dtype", "bfloat16"], "--param-dtype bfloat16 needs a checkpoint"),
  (["--save-model", "x"], "--save-model needs a checkpoint"),
  (["--model", "/no/such/folder"], "no such folder"),
  (["--model", "L", "--vocab-size", "512"], "--vocab-size is for the in-house model"),
  (["--model", "L", "--prompt-format", "Q: {answer}"], "neither a named format"),
  (["--model", "L", "--mesh", "data:3"], "--batch-size 4 is not a multiple"),
  (["--model", "L", "--mesh", "data:4,model:4"], "needs 16 devices; JAX has 8"),
  (["--model", "L", "--mesh", "rows:2"], "must be data:N,model:M"),
  (["--model", "L", "--lora-rank", "0"], "integer >= 1"),
  (["--model", "L", "--param-dtype", "float16"], "invalid choice"),
]


@pytest.mark.parametrize("argv,message", BAD_FLAGS, ids=[" ".join(a) for a, _ in BAD_FLAGS])
def test_bad_paths_and_combinations_are_one_line(argv, message, capsys, tmp_path):
  argv = [str(HF_TINY / "llama") if a == "L" else a for a in argv]
  assert tofu.main([*argv, "--out", str(tmp_path)]) == 2
  err = capsys.readouterr().err.strip()
  assert message in err and "\n" not in err and "Traceback" not in err


def test_folder_without_tokenizer_is_one_line(tmp_path, capsys):
  folder = copy_case("gemma", tmp_path)
  (folder / "tokenizer.json").unlink()
  assert tofu.main(["--model", str(folder), "--out", str(tmp_path / "out")]) == 2
  assert "has no tokenizer.json" in capsys.readouterr().err


def test_checkpoint_defaults_follow_the_reference():
  args = tofu.parser().parse_args(["--model", str(HF_TINY / "qwen3")])
  s = tofu.settings_from(args, real=True)
  assert (s.lrs, s.finetune.lr, s.finetune.epochs) == ((1e-5,), 1e-5, 5)
  s = tofu.settings_from(tofu.parser().parse_args([]), real=True)
  assert (s.lrs, s.finetune.lr, s.finetune.epochs) == ((1e-3,), 3e-3, 30)


def test_cache_key_names_the_checkpoint_dtype_and_rank(tmp_path):
  assert ModelOptions().key_parts() == []  # in-house keys are unchanged
  llama = str(HF_TINY / "llama")
  keys = [
    json.dumps(ModelOptions(model=p, param_dtype=d, lora_rank=r).key_parts())
    for p, d, r in [(llama, "float32", 0), (llama, "bfloat16", 0), (llama, "float32", 8)]
  ]
  copy = copy_case("llama", tmp_path)
  keys.append(json.dumps(ModelOptions(model=str(copy)).key_parts()))
  assert len(set(keys)) == 4


def test_lora_unlearning_changes_only_adapters():
  m = model_setup.from_checkpoint(model_setup.Checkpoint(HF_TINY / "qwen2", lora_rank=8), 96)
  assert m.frozen is not None and {p[-1] for p, _ in nnx.to_flat_state(m.params)} == {
    "lora_a",
    "lora_b",
  }
  base_before = jax.tree.map(np.asarray, m.frozen)
  corpus = synthetic.generate("forget05", n_authors=4)
  batches = UnlearnBatches(corpus, m.encoder, losses.roles_for("NPO", "GD"), 4, 0)
  res = Unlearner(m.apply, optimizers.Recipe(), 3, 1).run(
    m.params, m.params, batches, "dualoptim_plus", "NPO", "GD", 1e-2, frozen=m.frozen
  )
  after = nnx.state(nnx.merge(m.graphdef, m.full(res.params)), hf.BASE)
  jax.tree.map(np.testing.assert_array_equal, base_before, jax.tree.map(np.asarray, after))
  pairs = zip(jax.tree.leaves(m.params), jax.tree.leaves(res.params), strict=True)
  assert any(not np.array_equal(a, b) for a, b in pairs)
  # The state exists for the adapters only: 6 float32 moments each (plus counters).
  n_lora = sum(x.size for x in jax.tree.leaves(m.params))
  assert 0 <= res.state_bytes - 24 * n_lora < 64
  planned = model_setup.state_bytes(m, ["dualoptim_plus"], optimizers.Recipe())["dualoptim_plus"]
  assert planned["trained"] == res.state_bytes and planned["full"] > 5 * planned["trained"]


def test_bf16_params_get_float32_moments():
  params = nnx.state(hf.load_model(HF_TINY / "gemma", dtype=jnp.bfloat16), nnx.Param)
  for name in ("adamw", "dualoptim", "dualoptim_plus", "dualoptim_plus_8bit"):
    tx = optimizers.build(name, optimizers.lr_shape(1, 4), optimizers.Recipe(), params)
    floats = {
      x.dtype for x in jax.tree.leaves(tx.init(params)) if jnp.issubdtype(x.dtype, jnp.floating)
    }
    assert floats == {jnp.dtype("float32")}, name


def test_weight_decay_skips_biases_and_norms():
  params = nnx.state(hf.load_model(HF_TINY / "qwen2"), nnx.Param)
  flags = {
    tuple(str(getattr(k, "key", "")) for k in path[:-1]): v
    for path, v in jax.tree_util.tree_flatten_with_path(optimizers.decay_mask(params))[0]
  }
  q = ("blocks", "attn", "q_proj")  # stacked: (layers, ...) arrays, norms (layers, hidden)
  assert flags[(*q, "kernel")] and not flags[(*q, "bias")]
  assert not flags[("blocks", "attn_norm", "scale")] and flags[("embed", "embedding")]


def test_checkpoint_cache_restores_onto_the_mesh(tmp_path):
  mesh = hf.make_mesh(4, 2, devices=jax.devices()[:8])
  params = nnx.state(hf.load_model(HF_TINY / "llama", mesh=mesh, dtype=jnp.bfloat16), nnx.Param)
  tx = optimizers.for_params(optax.adam(1e-3), params)
  ckpt = Checkpoints(tmp_path)
  ckpt.save(1, params, tx.init(params))
  got, state, step = ckpt.restore_latest(params, tx.init(params))
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(got), strict=True):
    assert b.dtype == jnp.bfloat16 and b.sharding.is_equivalent_to(a.sharding, a.ndim)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert {x.dtype for x in jax.tree.leaves(state)} == {jnp.dtype("int32"), jnp.dtype("float32")}
