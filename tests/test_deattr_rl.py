"""De-attribution's RL side: rewards, advantages, options, sampling and one RL step."""

import dataclasses

import jax
import numpy as np
import optax
import pytest
from flax import nnx

import dualoptim_jax
from experiments.data import owners as ownlib
from experiments.data import synthetic
from experiments.data.batching import Encoder
from experiments.data.tokenizer import train_tokenizer
from experiments.loops import losses, rollout
from experiments.models import make_apply
from experiments.models.decoder import DecoderLM, config_for

# --- rewards and advantages ----------------------------------------------------------------


def test_reward_sign_and_range():
  a = np.array([0.0, 0.3, 1.0])
  r = rollout.rewards(a)
  assert np.all(r <= 0) and np.all(r >= -1) and r.tolist() == [0.0, -0.3, -1.0]
  assert rollout.rewards(a, floor=0.3).tolist() == [0.0, 0.0, -0.7]
  assert np.all(np.diff(rollout.rewards(np.linspace(0, 1, 11))) < 0)  # more attribution, less


def test_group_advantages_sum_to_zero_and_need_two():
  r = np.array([[-1.0, -1.0, -0.2, -0.6]])
  adv = rollout.group_advantages(r)
  assert abs(adv.sum()) < 1e-12 and adv.argmax() == 2
  with pytest.raises(ValueError, match="samples"):
    rollout.group_advantages(r[:, :1])


def test_options_ride_on_the_loss_name():
  name, _ = losses.parse_loss("deattr:samples=8:critic=1:kl=0.05+KL")
  assert name == "DeAttr:samples=8:critic=1:kl=0.05"
  assert rollout.RolloutOptions.of(name) == rollout.RolloutOptions(samples=8, critic=1)
  assert rollout.RolloutOptions.of("DeAttr") == rollout.RolloutOptions()
  with pytest.raises(ValueError, match="own"):
    losses.parse_loss("DeAttr:own=2+KL")


# --- sampling and one RL step --------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LetterShare:
  """A stand-in classifier: attribution = share of ASCII letters among the answer's characters."""

  owners: ownlib.Owners

  def forget_mass(self, texts, own=None):
    del own
    return np.array(
      [np.mean([c.isascii() and c.isalpha() for c in t]) if t else 0.0 for t in texts]
    )


@pytest.fixture(scope="module")
def tiny():
  corpus = synthetic.generate("forget05", n_authors=2)
  tok = train_tokenizer(corpus.texts(), 300)
  enc = Encoder(tok, 64)
  graphdef, params = nnx.split(DecoderLM(config_for("tiny", 300, 64), nnx.Rngs(0)))
  sampler = rollout.Sampler(graphdef, enc, [q.question for q in corpus.forget], 16)
  return corpus, enc, graphdef, params, sampler


def test_sampling_is_reproducible_per_key(tiny):
  _, _, _, params, sampler = tiny
  rows = np.arange(4)
  a = sampler(params, rows, 2, jax.random.key(3))
  b = sampler(params, rows, 2, jax.random.key(3))
  c = sampler(params, rows, 2, jax.random.key(4))
  assert all(np.array_equal(x, y) for x, y in zip(a[:5], b[:5], strict=True)) and a[5] == b[5]
  assert not np.array_equal(a[0], c[0])
  seq, mask, targets, old_logp, _, _ = a
  p = sampler.prompt_ids.shape[1]
  assert seq.shape == old_logp.shape == (8, p + 16)  # full-length: entry t scores seq[:, t + 1]
  assert np.all(targets[:, :p] == 0) and np.all(targets[:, p:] == mask[:, p:])
  assert np.all(old_logp <= 0)


def test_answer_mask_stops_after_eos(tiny):
  corpus, enc, graphdef, params, _ = tiny
  sampler = rollout.Sampler(graphdef, enc, [q.question for q in corpus.forget], 64)
  seq, mask, targets, _, _, texts = sampler(params, np.arange(16), 4, jax.random.key(0))
  p = sampler.prompt_ids.shape[1]
  answers, eos, pad = seq[:, p:], enc.specials.eos[0], enc.specials.pad
  stopped = 0
  for row, m, t, text in zip(answers, mask[:, p:], targets[:, p:], texts, strict=True):
    ends = np.flatnonzero(row == eos)
    n = ends[0] + 1 if len(ends) else len(row)  # up to and including the first EOS
    assert m.tolist() == [1] * n + [0] * (len(row) - n) and np.array_equal(t, m)
    assert np.all(row[n:] == pad) and text == enc.decode(row)
    stopped += len(ends) > 0
  assert 0 < stopped < len(answers)  # both kinds of rows occur with this key


def test_one_rl_step_raises_the_reward_of_fresh_samples(tiny):
  corpus, enc, graphdef, params, sampler = tiny
  owners = ownlib.owners_of(corpus)
  stand_in = LetterShare(owners)
  apply = make_apply(graphdef)
  opts = rollout.RolloutOptions(samples=8)
  batches = rollout.RolloutBatches(
    corpus, enc, ("forget", "retain"), 8, 0, sampler=sampler, classifier=stand_in, options=opts
  )

  def fresh_reward(p, n=4):  # 4 x 64 fresh answers with keys the step never saw
    rs = []
    for i in range(n):
      texts = sampler(p, np.arange(8), 8, jax.random.key(1000 + i))[5]
      rs.append(rollout.rewards(stand_in.forget_mass(texts)).mean())
    return float(np.mean(rs))

  b = batches.next(dualoptim_jax.FORGET, params)
  assert batches.history[0]["reward"] <= 0.0
  tx = optax.adam(3e-2)
  loss_fn = losses.FORGET_LOSSES["DeAttr"]
  grads = jax.grad(lambda p: loss_fn(apply, p, params, b))(params)
  with jax.numpy_dtype_promotion("standard"):  # optax's bias correction: float ** int32
    updates, _ = tx.update(grads, tx.init(params), params)
  new = optax.apply_updates(params, updates)
  before, after = fresh_reward(params), fresh_reward(new)
  assert after > before + 0.02, (before, after)


def test_value_baseline_runs_and_reuse_keeps_the_rollout(tiny):
  corpus, enc, _, params, sampler = tiny
  stand_in = LetterShare(ownlib.owners_of(corpus))
  opts = rollout.RolloutOptions(samples=1, critic=1, reuse=2)
  batches = rollout.RolloutBatches(
    corpus, enc, ("forget", "retain"), 4, 0, sampler=sampler, classifier=stand_in, options=opts
  )
  first = batches.next(dualoptim_jax.FORGET, params)["rollout"]
  retain = batches.next(dualoptim_jax.RETAIN, params)["rollout"]
  second = batches.next(dualoptim_jax.FORGET, params)["rollout"]
  third = batches.next(dualoptim_jax.FORGET, params)["rollout"]
  assert retain is first and second is first and third is not first
  assert len(batches.history) == 2 and first.advantages.shape == (4, 1)
