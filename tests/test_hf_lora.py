"""LoRA on loaded HF checkpoints: adapters only in the optimizer, merge-back, placement."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

import dualoptim_jax as do
from experiments import hf

HF_TINY = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data" / "hf_tiny"
pytestmark = pytest.mark.skipif(
  not HF_TINY.is_dir(), reason=f"{HF_TINY} (tiny HF checkpoints with reference outputs) is absent"
)


def batch(family):
  ref = np.load(HF_TINY / family / "reference.npz")
  return jnp.asarray(ref["ids"]), jnp.asarray(ref["mask"])


def loss_fn(model, ids, mask):
  logp = jax.nn.log_softmax(model(ids, mask)[:, :-1])
  picked = jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1)[..., 0]
  weight = mask[:, 1:].astype(jnp.float32)
  return -jnp.sum(picked * weight) / jnp.sum(weight)


def state_bytes(tree) -> int:
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def randomise_adapters(model, seed=0):
  rng = np.random.default_rng(seed)
  for _, var in nnx.to_flat_state(nnx.state(model, nnx.LoRAParam)):
    var.set_value(jnp.asarray(rng.normal(0, 0.05, var.shape), var.get_value().dtype))


def test_adapters_start_neutral_and_are_the_lora_state():
  ids, mask = batch("phi")
  base = hf.load_model(HF_TINY / "phi")
  model = hf.add_lora(hf.load_model(HF_TINY / "phi"), rank=4)
  np.testing.assert_array_equal(np.asarray(model(ids, mask)), np.asarray(base(ids, mask)))
  lora = nnx.to_flat_state(nnx.state(model, nnx.LoRAParam))
  # phi: q, k, v, o (dense), fc1, fc2, two factors each, stacked over its 2 layers.
  assert len(lora) == 6 * 2
  assert {path[-1] for path, _ in lora} == {"lora_a", "lora_b"}
  assert all(var.shape[0] == 2 for _, var in lora)
  base_leaves = len(jax.tree.leaves(nnx.state(model, hf.BASE)))
  assert base_leaves == len(jax.tree.leaves(nnx.state(base, nnx.Param)))


def test_training_step_changes_only_adapters():
  ids, mask = batch("qwen3")
  model = hf.add_lora(hf.load_model(HF_TINY / "qwen3"), rank=8, targets=hf.ATTENTION_TARGETS)
  frozen = jax.tree.map(np.asarray, nnx.state(model, hf.BASE))
  optimizer = nnx.Optimizer(model, do.dualoptim_plus(1e-2), wrt=nnx.LoRAParam)
  adapters = jax.tree.map(np.asarray, nnx.state(model, nnx.LoRAParam))

  @nnx.jit
  def step(model, optimizer):
    grads = nnx.grad(loss_fn, argnums=nnx.DiffState(0, nnx.LoRAParam))(model, ids, mask)
    with jax.numpy_dtype_promotion("standard"):
      optimizer.update(model, grads, objective=do.RETAIN)

  step(model, optimizer)
  after = jax.tree.map(np.asarray, nnx.state(model, hf.BASE))
  jax.tree.map(np.testing.assert_array_equal, frozen, after)
  moved = jax.tree.map(
    lambda a, b: not np.array_equal(a, b), adapters, nnx.state(model, nnx.LoRAParam)
  )
  # B starts at zero, so only B has a gradient at the first step (dL/dA = x^T g B^T = 0).
  flags = [(path[-1], v.get_value()) for path, v in nnx.to_flat_state(moved)]
  assert all(flag for name, flag in flags if name == "lora_b") and len(flags) == 4 * 2
  # The optimizer state exists for the adapters only: 6 float32 moments each, plus counters.
  n_lora = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.LoRAParam)))
  assert 0 <= state_bytes(optimizer.opt_state) - 24 * n_lora < 64


def test_optimizer_state_bytes_full_vs_lora_rank8():
  model = hf.load_model(HF_TINY / "phi")
  tx = do.dualoptim_plus(1e-5)
  full = state_bytes(jax.eval_shape(tx.init, nnx.state(model, nnx.Param)))
  hf.add_lora(model, rank=8)
  lora = state_bytes(jax.eval_shape(tx.init, nnx.state(model, nnx.LoRAParam)))
  n_base = sum(x.size for x in jax.tree.leaves(nnx.state(model, hf.BASE)))
  n_lora = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.LoRAParam)))
  # DualOptim+ keeps 6 float32 moments per parameter (base m, v; two objectives' deltas).
  assert abs(full - 24 * n_base) < 64 and abs(lora - 24 * n_lora) < 64
  print(f"phi tiny: full {full} B ({n_base} params), LoRA r8 {lora} B ({n_lora} adapter params)")


def test_merge_folds_adapters_and_export_reads_back(tmp_path):
  ids, mask = batch("gemma")
  model = hf.add_lora(hf.load_model(HF_TINY / "gemma"), rank=4)
  randomise_adapters(model)
  with_adapters = np.asarray(model(ids, mask))
  merged = hf.merge_lora(model)
  assert not hf.has_lora(merged) and hf.has_lora(model)
  real = np.asarray(mask) > 0
  np.testing.assert_allclose(np.asarray(merged(ids, mask))[real], with_adapters[real], atol=2e-5)
  hf.save_model(model, tmp_path / "out")  # merges a copy itself
  reloaded = np.asarray(hf.load_model(tmp_path / "out")(ids, mask))
  np.testing.assert_allclose(reloaded[real], with_adapters[real], atol=2e-5)


def test_adapters_follow_the_mesh_and_bf16():
  mesh = hf.make_mesh(4, 2, devices=jax.devices()[:8])
  model = hf.add_lora(hf.load_model(HF_TINY / "llama", mesh=mesh, dtype=jnp.bfloat16), rank=8)
  q = model.blocks.attn.q_proj
  assert q.lora_a.get_value().sharding.spec == P(None, "data", None)
  assert q.lora_b.get_value().sharding.spec == P(None, None, "model")
  assert model.blocks.mlp.down_proj.lora_a.get_value().sharding.spec == P(None, "model", None)
  assert q.lora_a.get_value().dtype == jnp.bfloat16
  ids, mask = batch("llama")
  assert np.isfinite(float(nnx.jit(loss_fn)(model, ids, mask)))
