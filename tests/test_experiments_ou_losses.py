"""open-unlearning's methods as job losses (CEU, WGA, SatImp, UNDIAL, RMU, AM) and the shifting.

The values against the library on hand-built masks, the full-length shifting against the old
slicing for every loss, the models' ``hidden_layer`` against a manual forward pass, and RMU's
mask: after steps with any optimizer only the named layers' MLP output projections moved.
"""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from tiny import random_batch

from dualoptim_jax import unlearning
from experiments.data import synthetic
from experiments.data.batching import Batch
from experiments.data.tokenizer import train_tokenizer
from experiments.loops import losses, optimizers, rmu, scoring
from experiments.loops.unlearn import UnlearnBatches, Unlearner
from experiments.models import make_apply
from experiments.models.decoder import DecoderLM, ModelConfig
from experiments.models.setup import Checkpoint, encoder, from_checkpoint

SEQ, B = 24, 3
HF_LLAMA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "hf_tiny" / "llama"
CORPUS = synthetic.generate("forget05", n_authors=4)
TOK = train_tokenizer(CORPUS.texts(), 300)
VOCAB = TOK.get_vocab_size()
CFG = ModelConfig(vocab_size=VOCAB, d_model=32, n_layers=3, n_heads=2, d_ff=64, max_len=SEQ)


def _batch(seed: int) -> Batch:
  return random_batch(seed, VOCAB, SEQ, B)


@pytest.fixture(scope="module")
def setup():
  graphdef, params = nnx.split(DecoderLM(CFG, nnx.Rngs(0)))
  roles = ("forget", "forget_idk", "retain", "retain_idk")
  batches = {r: _batch(i + 1) for i, r in enumerate(roles)}
  ref = jax.tree.map(lambda p: p * jnp.float32(1.01), params)  # as after unlearning began
  return make_apply(graphdef), params, ref, batches


def _old_shifted(apply, params, batch):
  logits = apply(params, batch.ids, batch.mask)
  return logits[:, :-1], batch.ids[:, 1:], batch.targets[:, 1:]


def _old_ref_logits(apply, ref_params, batch):
  return jax.lax.stop_gradient(apply(ref_params, batch.ids, batch.mask)[:, :-1])


@pytest.mark.parametrize("name", [n for n in losses.LOSSES if n not in ("DeAttr", "RMU", "AM")])
def test_full_length_shifting_equals_slicing(setup, name, monkeypatch):
  apply, params, ref, b = setup
  fn = jax.jit(lambda p, r, bs: losses.LOSSES[name].fn(apply, p, r, bs))
  new = float(fn(params, ref, b))
  new_grads = jax.grad(lambda p: losses.LOSSES[name].fn(apply, p, ref, b))(params)
  for module in (losses, scoring):  # the old glue: slice the logits, score ids[:, 1:]
    monkeypatch.setattr(module, "shifted", _old_shifted)
    monkeypatch.setattr(module, "ref_logits", _old_ref_logits)
  old = float(losses.LOSSES[name].fn(apply, params, ref, b))
  old_grads = jax.grad(lambda p: losses.LOSSES[name].fn(apply, p, ref, b))(params)
  assert new == pytest.approx(old, rel=1e-6, abs=1e-7)
  for g_new, g_old in zip(jax.tree.leaves(new_grads), jax.tree.leaves(old_grads), strict=True):
    np.testing.assert_allclose(g_new, g_old, rtol=1e-5, atol=1e-7)


def test_new_losses_match_the_library_on_sliced_inputs(setup):
  apply, params, ref, b = setup
  z, y, m = _old_shifted(apply, params, b["forget"])
  z_ref = _old_ref_logits(apply, ref, b["forget"])
  first_dropped = m * (np.cumsum(m > 0, axis=1) > 1)
  want = {
    "CEU": unlearning.ceu_loss(z, y, first_dropped),
    "CEU:skip=0": unlearning.ceu_loss(z, y, m),
    "WGA:beta=2": unlearning.wga_loss(z, y, m, beta=2.0),
    "SatImp": unlearning.satimp_loss(z, y, m, beta1=5.0, beta2=1.0),
    "UNDIAL": unlearning.undial_loss(z, z_ref, y, m, beta=10.0),
    "UNDIAL:beta=1": unlearning.undial_loss(z, z_ref, y, m, beta=1.0),
  }
  for name, value in want.items():
    got = losses.FORGET_LOSSES[name](apply, params, ref, b)
    assert float(got) == pytest.approx(float(value), rel=1e-5), name


# SatImp's default weight p**5 (1 - p) vanishes on an untrained model (p ~ 1/V): beta1 = 0.
@pytest.mark.parametrize("name", ["CEU", "WGA", "SatImp:beta1=0", "UNDIAL"])
def test_token_forget_losses_lower_the_forget_likelihood(setup, name):
  apply, params, ref, b = setup
  fn = losses.FORGET_LOSSES[name]
  grads = jax.grad(lambda p: fn(apply, p, params, b))(params)
  new = jax.tree.map(lambda p, g: p - jnp.float32(0.1) * g, params, grads)
  nll = lambda p: float(jnp.sum(losses.sequence_nll(apply, p, b["forget"])[0]))
  assert nll(new) > nll(params)


def test_hidden_layer_equals_a_manual_forward_pass(setup):
  _, params, _, b = setup
  model = nnx.merge(nnx.graphdef(DecoderLM(CFG, nnx.Rngs(0))), params)
  ids, mask = jnp.asarray(b["forget"].ids), jnp.asarray(b["forget"].mask)
  positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
  x = model.embed[...][ids]
  for layer, block in enumerate(model.blocks):
    x = block(x, positions, mask)
    logits, hidden = model(ids, mask, hidden_layer=layer)
    np.testing.assert_array_equal(hidden, x)
    np.testing.assert_array_equal(logits, model(ids, mask))
  with pytest.raises(ValueError, match=r"hidden_layer must be in \[0, 3\)"):
    model(ids, mask, hidden_layer=3)


def test_rmu_pulls_forget_activations_to_the_control_vector_and_am_holds_retain(setup):
  apply, params, ref, b = setup
  assert rmu.default_layer(3) == 1
  rmu_fn = losses.FORGET_LOSSES["RMU:coeff=5"]
  grads = jax.grad(lambda p: rmu_fn(apply, p, ref, b))(params)
  new = jax.tree.map(lambda p, g: p - jnp.float32(0.05) * g, params, grads)
  assert float(rmu_fn(apply, new, ref, b)) < float(rmu_fn(apply, params, ref, b))
  seeded = {**b, "seed": jnp.int32(1)}  # another run's control vector
  assert float(rmu_fn(apply, params, ref, seeded)) != float(rmu_fn(apply, params, ref, b))
  am = losses.RETAIN_LOSSES["AM"]
  assert float(am(apply, params, params, b)) == 0.0
  assert float(am(apply, params, ref, b)) > 0.0


def test_am_inherits_the_rmu_layer(setup):
  apply, params, ref, b = setup
  _, r_fn = losses.pair("RMU:layer=2:coeff=5", "AM")
  assert r_fn.keywords == {"layer": 2}
  _, own = losses.pair("RMU:layer=2", "AM:layer=0")
  assert own.keywords == {"layer": 0}
  _, plain = losses.pair("RMU", "GD")
  assert plain is losses.RETAIN_LOSSES["GD"]
  at2 = float(losses.RETAIN_LOSSES["AM:layer=2"](apply, params, ref, b))
  assert float(r_fn(apply, params, ref, b)) == at2


def test_layer_beyond_the_model_is_refused(setup):
  _, params, _, _ = setup
  with pytest.raises(rmu.ModelMismatch, match=r"layer=3 is not a block of this model \(0..2\)"):
    losses.check_for_model("RMU:layer=3", "GD", params)
  with pytest.raises(rmu.ModelMismatch, match="layer=5"):
    losses.check_for_model("NPO", "AM:layer=5", params)
  losses.check_for_model("RMU:layer=2", "AM", params)


def _changed(before, after) -> dict[str, np.ndarray]:
  """Per leaf path: which entries of the leading axis changed (all-axes for 0-d/1-d leaves)."""
  out = {}
  flat_b = jax.tree_util.tree_leaves_with_path(before)
  for (path, a), c in zip(flat_b, jax.tree.leaves(after), strict=True):
    diff = np.asarray(a) != np.asarray(c)
    out[jax.tree_util.keystr(path)] = diff.reshape(diff.shape[0], -1).any(1) if diff.ndim else diff
  return out


OPTIMIZERS = optimizers.DEFAULT_OPTIMIZERS + ("dualoptim_plus_muon",)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_rmu_trains_only_the_named_down_projections(setup, optimizer):
  apply, params, _, _ = setup
  enc = encoder(TOK, SEQ, "tofu")
  batches = UnlearnBatches(CORPUS, enc, losses.roles_for("RMU", "GD"), 2, 0)
  res = Unlearner(apply, optimizers.Recipe(retain_steps=2), 3, 1).run(
    params, params, batches, optimizer, "RMU:layer=2:span=2:coeff=5", "GD", 1e-2, seed=1
  )
  assert [e["objective"] for e in res.log] == ["forget", "retain", "retain"]
  changed = {k: v for k, v in _changed(params, res.params).items() if v.any()}
  assert set(changed) == {
    "['blocks'][1]['mlp']['down'].value",
    "['blocks'][2]['mlp']['down'].value",
  }


@pytest.mark.skipif(
  not HF_LLAMA.is_dir(), reason=f"{HF_LLAMA} (the shared hf_tiny llama) is absent"
)
def test_rmu_on_stacked_layers_trains_only_their_slice():
  m = from_checkpoint(Checkpoint(HF_LLAMA), 48)
  corpus = synthetic.generate("forget05", n_authors=4)
  batches = UnlearnBatches(corpus, m.encoder, losses.roles_for("RMU", "AM"), 2, 0)
  res = Unlearner(m.apply, optimizers.Recipe(retain_steps=1), 2, 1).run(
    m.params, m.params, batches, "dualoptim_plus", "RMU:layer=1:span=1", "AM", 1e-2
  )
  changed = {k: v for k, v in _changed(m.params, res.params).items() if v.any()}
  # Only the down_proj kernel, and of its (layers, ...) stack only layer 1.
  assert list(changed) == ["['blocks']['mlp']['down_proj']['kernel'].value"]
  assert changed["['blocks']['mlp']['down_proj']['kernel'].value"].tolist() == [False, True]
  mask = rmu.trainable_mask(m.params)  # default: layer round(2 * 2 / 3) - 1 = 0, span 3
  assert mask["blocks"]["mlp"]["down_proj"]["kernel"][...].reshape(-1).tolist() == [1.0, 0.0]
