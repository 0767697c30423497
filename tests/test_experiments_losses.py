"""Each unlearning loss on a tiny model: finite, a step moves it the right way; names, options."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from tiny import random_batch

from experiments.data.batching import Batch
from experiments.loops import losses
from experiments.models import make_apply
from experiments.models.decoder import DecoderLM, config_for

VOCAB, SEQ, B = 40, 12, 3


def _batch(seed: int) -> Batch:
  return random_batch(seed, VOCAB, SEQ, B)


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


def test_dipo_is_log2_at_reference_and_lowers_the_reference_top_token(setup):
  apply, params, ref, b = setup
  assert float(losses.dipo(apply, ref, ref, b)) == pytest.approx(np.log(2.0), abs=1e-6)
  batch = b["forget"]
  ref_logits = apply(ref, batch.ids, batch.mask)[:, :-1]
  top = jnp.argmax(ref_logits, axis=-1)[..., None]
  on = batch.targets[:, 1:] > 0

  def top_prob(p):
    logp = jax.nn.log_softmax(apply(p, batch.ids, batch.mask)[:, :-1], axis=-1)
    return float(jnp.mean(jnp.take_along_axis(logp, top, axis=-1)[..., 0][on]))

  new = _step(losses.FORGET_LOSSES["DiPO:beta=1"], apply, ref, ref, b, lr=1e-1)
  assert top_prob(new) < top_prob(ref)


def test_kl_is_mean_over_answer_positions(setup):
  apply, params, ref, b = setup
  batch = b["retain"]
  p = np.asarray(jax.nn.log_softmax(apply(params, batch.ids, batch.mask)[:, :-1], axis=-1))
  q = np.asarray(jax.nn.log_softmax(apply(ref, batch.ids, batch.mask)[:, :-1], axis=-1))
  per_position = (np.exp(q) * (q - p)).sum(-1)
  t = batch.targets[:, 1:]
  want = (per_position * t).sum() / t.sum()  # question and padding positions do not count
  assert float(losses.kl(apply, params, ref, b)) == pytest.approx(want, rel=1e-4)


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
  [
    ("NPO+GD", ("NPO", "GD")),
    ("simnpo+kl", ("SimNPO", "KL")),
    (" IDK + AP ", ("IDK", "AP")),
    ("DiPO+GD", ("DiPO", "GD")),
    ("dipo:gamma=10:top_k=3+kl", ("DiPO:gamma=10:top_k=3", "KL")),
    ("NPO:beta=0.05+AP:beta=0.2", ("NPO:beta=0.05", "AP:beta=0.2")),
    ("rmu:layer=3:coeff=20+am", ("RMU:layer=3:coeff=20", "AM")),
    ("undial:beta=10+kl", ("UNDIAL:beta=10", "KL")),
    ("CEU+AP", ("CEU", "AP")),
    ("wga:beta=2+GD", ("WGA:beta=2", "GD")),
    ("satimp:beta1=3:beta2=0+GD", ("SatImp:beta1=3:beta2=0", "GD")),
  ],
)
def test_parse_loss(text, expected):
  assert losses.parse_loss(text) == expected


@pytest.mark.parametrize(
  "text,needle",
  [
    ("NPO", "FORGET+RETAIN"),
    ("FOO+GD", "unknown forget loss 'FOO'"),
    ("NPO+BAR", "unknown retain loss 'BAR'"),
    ("GA+GD+KL", "FORGET+RETAIN"),
    ("DiPO:gamma=-1+GD", "gamma='-1' in loss 'DiPO:gamma=-1' must be >= 0"),
    ("DiPO:top_k=1.5+GD", "must be an integer >= 1"),
    ("DiPO:alpha=1+GD", "bad option 'alpha=1'"),
    ("GA:beta=1+GD", "keys none"),
    ("NPO:beta+GD", "use key=value"),
    ("RMU:layer=-1+GD", "option layer='-1' in loss 'RMU:layer=-1' must be an integer >= 0"),
    ("RMU:span=0+AM", "must be an integer >= 1"),
    ("RMU:alpha=3+GD", "bad option 'alpha=3' in loss 'RMU:alpha=3': use key=value with keys"),
    ("UNDIAL:beta=x+GD", "must be >= 0"),
    ("CEU:skip=1.5+GD", "must be an integer >= 0"),
    ("SatImp:beta3=1+GD", "keys beta1, beta2"),
    ("NPO+AM:coeff=2", "keys layer"),
  ],
)
def test_parse_loss_rejects(text, needle):
  with pytest.raises(ValueError) as info:
    losses.parse_loss(text)
  assert needle in str(info.value) and "\n" not in str(info.value)  # one line


def test_options_bind_hyperparameters_and_roles(setup):
  apply, params, ref, b = setup
  fn = losses.FORGET_LOSSES["DiPO:gamma=10:top_k=2"]
  assert fn.keywords == {"gamma": 10.0, "top_k": 2}
  want = losses.dipo(apply, params, ref, b, gamma=10.0, top_k=2)
  assert float(fn(apply, params, ref, b)) == pytest.approx(float(want))
  assert float(want) != pytest.approx(float(losses.dipo(apply, params, ref, b)))
  assert losses.roles_for("DiPO:gamma=10", "AP:beta=0.2") == ("forget", "retain", "retain_idk")
  with pytest.raises(KeyError):
    losses.FORGET_LOSSES["Nope:beta=1"]
