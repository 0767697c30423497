"""Each unlearning loss on a tiny model: finite, and a small step moves it the right way."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from experiments.data.batching import Batch
from experiments.loops import losses
from experiments.models import make_apply
from experiments.models.decoder import DecoderLM, config_for

VOCAB, SEQ, B = 40, 12, 3


def _batch(seed: int) -> Batch:
  rng = np.random.default_rng(seed)
  ids = rng.integers(3, VOCAB, (B, SEQ)).astype(np.int32)
  mask = np.ones((B, SEQ), np.int32)
  mask[0, -3:] = 0  # some padding
  targets = np.zeros((B, SEQ), np.float32)
  targets[:, 5:] = 1.0
  targets *= mask
  return Batch(ids, mask, targets)


@pytest.fixture(scope="module")
def setup():
  model = DecoderLM(config_for("tiny", VOCAB, SEQ), nnx.Rngs(0))
  graphdef, params = nnx.split(model)
  apply = make_apply(graphdef)
  batches = {
    "forget": _batch(1),
    "forget_idk": _batch(2),
    "retain": _batch(3),
    "retain_idk": _batch(4),
  }
  # A reference that differs from the trained params (as after unlearning began).
  ref = jax.tree.map(lambda p: p * jnp.float32(1.01), params)
  return apply, params, ref, batches


def _nll(apply, params, batch):
  return float(jnp.sum(losses.sequence_nll(apply, params, batch)[0]))


def _step(loss_fn, apply, params, ref, batches, lr=1e-2):
  fn = jax.jit(jax.value_and_grad(lambda p: loss_fn(apply, p, ref, batches)))
  value, grads = fn(params)
  assert np.isfinite(float(value))
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
  assert float(optax_norm(grads)) > 0.0
  return jax.tree.map(lambda p, g: p - jnp.float32(lr) * g, params, grads)


def optax_norm(tree):
  return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


@pytest.mark.parametrize("name", ["GA", "NPO", "SimNPO"])
def test_forget_losses_raise_forget_nll(setup, name):
  apply, params, ref, b = setup
  new = _step(losses.FORGET_LOSSES[name], apply, params, ref, b)
  assert _nll(apply, new, b["forget"]) > _nll(apply, params, b["forget"])


def test_me_moves_towards_uniform(setup):
  apply, params, ref, b = setup
  new = _step(losses.me, apply, params, ref, b, lr=1e-1)
  assert float(losses.me(apply, new, ref, b)) < float(losses.me(apply, params, ref, b))


def test_idk_lowers_refusal_nll(setup):
  apply, params, ref, b = setup
  new = _step(losses.idk, apply, params, ref, b)
  assert _nll(apply, new, b["forget_idk"]) < _nll(apply, params, b["forget_idk"])


def test_dpo_prefers_refusal(setup):
  apply, params, ref, b = setup
  margin = lambda p: _nll(apply, p, b["forget"]) - _nll(apply, p, b["forget_idk"])
  new = _step(losses.dpo, apply, params, ref, b)
  assert margin(new) > margin(params)


def test_gd_lowers_retain_nll(setup):
  apply, params, ref, b = setup
  new = _step(losses.gd, apply, params, ref, b)
  assert _nll(apply, new, b["retain"]) < _nll(apply, params, b["retain"])


def test_kl_is_zero_at_reference_and_decreases(setup):
  apply, params, ref, b = setup
  assert abs(float(losses.kl(apply, params, params, b))) < 1e-6
  new = _step(losses.kl, apply, params, ref, b)
  assert float(losses.kl(apply, new, ref, b)) < float(losses.kl(apply, params, ref, b))


def test_ap_separates_answer_from_refusal(setup):
  apply, params, ref, b = setup
  margin = lambda p: _nll(apply, p, b["retain_idk"]) - _nll(apply, p, b["retain"])
  new = _step(losses.ap, apply, params, ref, b)
  assert margin(new) > margin(params)


def test_me_at_uniform_is_zero():
  logits = jnp.zeros((1, 4, 7), jnp.float32)
  apply = lambda p, ids, mask: logits
  b = {
    "forget": Batch(
      np.ones((1, 4), np.int32), np.ones((1, 4), np.int32), np.ones((1, 4), np.float32)
    )
  }
  assert abs(float(losses.me(apply, None, None, b))) < 1e-5


def test_ce_mean_matches_hand_computation():
  # Two tokens predicted with probabilities 1/2 and 1/4 -> mean CE = (ln 2 + ln 4) / 2.
  logits = jnp.log(
    jnp.array(
      [
        [[0.5, 0.5, 0.0 + 1e-30, 0.0 + 1e-30], [0.25, 0.25, 0.25, 0.25], [1.0, 1e-30, 1e-30, 1e-30]]
      ],
      jnp.float32,
    )
  )
  apply = lambda p, ids, mask: logits
  batch = Batch(
    np.array([[0, 1, 3]], np.int32),
    np.ones((1, 3), np.int32),
    np.array([[0.0, 1.0, 1.0]], np.float32),
  )
  expected = (np.log(2.0) + np.log(4.0)) / 2
  assert float(losses.ce_mean(apply, None, batch)) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize(
  "text,expected",
  [("NPO+GD", ("NPO", "GD")), ("simnpo+kl", ("SimNPO", "KL")), (" IDK + AP ", ("IDK", "AP"))],
)
def test_parse_loss(text, expected):
  assert losses.parse_loss(text) == expected


@pytest.mark.parametrize("text", ["NPO", "FOO+GD", "NPO+BAR", "GA+GD+KL"])
def test_parse_loss_rejects(text):
  with pytest.raises(ValueError):
    losses.parse_loss(text)
