"""Membership-inference scores, AUC, PrivLeak, the PPO surrogate and Tug-of-War."""

import fractions
import math

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dualoptim_jax import unlearning as ul

SETTINGS = settings(max_examples=20, deadline=None)


def _np_log_softmax(z):
  z = np.asarray(z, np.float64)
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _np_lowest_mean(values, mask, k):
  out = []
  for v, m in zip(values, mask, strict=True):
    kept = np.sort(v[m > 0])
    if kept.size == 0:
      out.append(np.nan)
      continue
    count = max(1, math.floor(fractions.Fraction(str(k)) * kept.size))  # k as a decimal
    out.append(kept[:count].mean())
  return np.array(out)


def _inputs(seed, b=4, t=9, v=11):
  rng = np.random.default_rng(seed)
  logits = (rng.normal(size=(b, t, v)) * 3).astype(np.float32)
  targets = rng.integers(0, v, (b, t)).astype(np.int32)
  mask = (rng.random((b, t)) < 0.7).astype(np.float32)
  mask[:, 0] = 1.0
  return logits, targets, mask


# ---- Min-K% and Min-K%++ ---------------------------------------------------------------


def test_min_k_hand():
  logits = jnp.log(jnp.array([[[0.5, 0.5], [0.1, 0.9], [0.2, 0.8], [0.3, 0.7], [0.6, 0.4]]]))
  targets, mask = jnp.array([[0, 0, 0, 0, 0]]), jnp.array([[1, 1, 1, 1, 0]])
  # n = 4 -> floor(0.5 * 4) = 2 lowest of {.5, .1, .2, .3}: mean(log .1, log .2).
  got = float(ul.min_k_scores(logits, targets, mask, k=0.5)[0])
  assert got == pytest.approx((math.log(0.1) + math.log(0.2)) / 2, rel=1e-6)
  # k = 0.1 -> max(1, 0) = the single lowest.
  assert float(ul.min_k_scores(logits, targets, mask, k=0.1)[0]) == pytest.approx(math.log(0.1))


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), k=st.sampled_from([0.1, 0.2, 0.29, 0.4, 0.6, 1.0]))
def test_min_k_matches_numpy(seed, k):
  logits, targets, mask = _inputs(seed)
  tl = np.take_along_axis(_np_log_softmax(logits), targets[..., None], -1)[..., 0]
  want = _np_lowest_mean(tl, mask, k)
  got = ul.min_k_scores(logits, targets, mask, k=k)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_min_k_with_k_one_is_the_loss_score_and_empty_rows_are_nan():
  logits, targets, mask = _inputs(1)
  mask[2] = 0.0
  loss_score = ul.sequence_log_probs(logits, targets, mask) / np.maximum(mask.sum(-1), 1)
  got = np.asarray(ul.min_k_scores(logits, targets, mask, k=1.0))
  np.testing.assert_allclose(got[[0, 1, 3]], np.asarray(loss_score)[[0, 1, 3]], rtol=1e-5)
  assert np.isnan(got[2])


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), k=st.sampled_from([0.2, 0.4, 1.0]))
def test_min_k_plus_plus_matches_numpy(seed, k):
  logits, targets, mask = _inputs(seed)
  ls = _np_log_softmax(logits)
  p = np.exp(ls)
  mu = (p * ls).sum(-1)
  sigma = np.sqrt((p * ls**2).sum(-1) - mu**2)  # the form, in float64
  tl = np.take_along_axis(ls, targets[..., None], -1)[..., 0]
  want = _np_lowest_mean((tl - mu) / sigma, mask, k)
  got = ul.min_k_plus_plus_scores(logits, targets, mask, k=k)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_scores_jit_vmap_bf16_and_errors():
  logits, targets, mask = _inputs(2)
  for fn in (ul.min_k_scores, ul.min_k_plus_plus_scores):
    eager = fn(logits, targets, mask)
    np.testing.assert_allclose(jax.jit(fn)(logits, targets, mask), eager, rtol=1e-6)
    both = jax.vmap(fn, in_axes=(0, None, None))(np.stack([logits, logits]), targets, mask)
    np.testing.assert_allclose(both, np.stack([eager, eager]), rtol=1e-6)
    low = fn(jnp.asarray(logits, jnp.bfloat16), targets, mask)
    assert low.dtype == jnp.float32
    with pytest.raises(ValueError, match=r"mask has shape \(4, 8\)"):
      fn(logits, targets, mask[:, :8])
    with pytest.raises(ValueError, match="k must be a Python float in"):
      fn(logits, targets, mask, k=0.0)


# ---- AUC and PrivLeak ------------------------------------------------------------------


def _brute_auc(pos, neg):
  pos, neg = np.asarray(pos, np.float64)[:, None], np.asarray(neg, np.float64)[None, :]
  return float(np.mean((pos > neg) + 0.5 * (pos == neg)))


@SETTINGS
@given(
  pos=hnp.arrays(np.int64, st.integers(1, 12), elements=st.integers(-3, 3)),
  neg=hnp.arrays(np.int64, st.integers(1, 12), elements=st.integers(-3, 3)),
)
def test_auc_matches_pairwise_count_with_ties(pos, neg):
  auc = ul.mia_auc(pos.astype(float), neg.astype(float))
  assert auc == pytest.approx(_brute_auc(pos, neg), abs=1e-12)
  assert auc + ul.mia_auc(neg.astype(float), pos.astype(float)) == pytest.approx(1.0)


def test_auc_hand_and_errors():
  assert ul.mia_auc([3.0, 2.0], [1.0, 0.0]) == 1.0
  assert ul.mia_auc([0.0, 1.0], [0.0, 1.0]) == 0.5
  with pytest.raises(ValueError, match="nonmember_scores has 1 non-finite"):
    ul.mia_auc([1.0], [np.nan, 0.0])
  with pytest.raises(ValueError, match=r"member_scores must be a non-empty 1-D array.*\(2, 2\)"):
    ul.mia_auc(np.zeros((2, 2)), [1.0])


def test_privleak_hand():
  assert ul.privleak(0.5, 0.5) == 0.0
  assert ul.privleak(0.25, 0.5) == pytest.approx(-50.0)
  with pytest.raises(ValueError, match="retrained_auc"):
    ul.privleak(0.5, 0.0)


# ---- PPO surrogate -------------------------------------------------------------------


def test_ppo_hand_values():
  lp = np.log(np.array([[0.5, 0.3, 0.2]], np.float32))
  old = np.log(np.array([[0.25, 0.3, 0.4]], np.float32))  # ratios 2, 1, 0.5
  adv = np.array([[1.0, -1.0, -2.0]], np.float32)
  mask = np.array([[1.0, 1.0, 1.0]])
  # min(r A, clip(r) A): 2*1 vs 1.2*1 -> 1.2; -1 vs -1 -> -1; -1 vs 0.8*-2=-1.6 -> -1.6.
  want = -(1.2 - 1.0 - 1.6) / 3
  assert float(ul.ppo_policy_loss(lp, old, adv, mask)) == pytest.approx(want, rel=1e-5)
  assert float(ul.ppo_policy_loss(lp, old, adv, np.array([[0, 1, 0]]))) == pytest.approx(1.0)
  # (B, 1) advantages broadcast over time; a scalar too.
  per_seq = ul.ppo_policy_loss(lp, old, np.array([[1.0]]), mask)
  assert float(per_seq) == pytest.approx(-(1.2 + 1.0 + 0.5) / 3, rel=1e-5)
  assert float(ul.ppo_policy_loss(lp, old, 1.0, mask)) == pytest.approx(float(per_seq))


def test_ppo_gradient_at_old_policy_and_clipping():
  lp = jnp.log(jnp.array([[0.5, 0.3]], jnp.float32))
  adv, mask = jnp.array([[2.0, -1.0]]), jnp.ones((1, 2))
  g = jax.grad(ul.ppo_policy_loss)(lp, lp, adv, mask)
  np.testing.assert_allclose(g, -adv * mask / 2, rtol=1e-6)  # r = 1: the policy gradient
  far = lp + jnp.array([[1.0, -1.0]])  # ratios e and 1/e: clipped on the side A pushes
  g = jax.grad(ul.ppo_policy_loss)(far, lp, adv, mask)
  np.testing.assert_allclose(g, np.zeros((1, 2)), atol=1e-7)
  assert float(jnp.max(jnp.abs(jax.grad(ul.ppo_policy_loss, 1)(far, lp, adv, mask)))) == 0.0


def test_ppo_jit_vmap_dtype_and_errors():
  rng = np.random.default_rng(0)
  lp, old = rng.normal(size=(2, 3, 4)).astype(np.float32) - 2, np.full((3, 4), -2.0, np.float32)
  adv, mask = rng.normal(size=(3, 1)).astype(np.float32), np.ones((3, 4))
  fn = jax.jit(ul.ppo_policy_loss)
  got = jax.vmap(fn, in_axes=(0, None, None, None))(lp, old, adv, mask)
  np.testing.assert_allclose(got, [ul.ppo_policy_loss(x, old, adv, mask) for x in lp], rtol=1e-6)
  assert ul.ppo_policy_loss(jnp.asarray(old, jnp.bfloat16), old, adv, mask).dtype == jnp.float32
  with pytest.raises(ValueError, match=r"advantages must be a scalar or have rank 2.*\(3,\)"):
    ul.ppo_policy_loss(old, old, np.ones(3), mask)
  with pytest.raises(ValueError, match=r"advantages of shape \(2, 1\) do not broadcast"):
    ul.ppo_policy_loss(old, old, np.ones((2, 1)), mask)
  with pytest.raises(ValueError, match=r"old_logp has shape \(3, 3\)"):
    ul.ppo_policy_loss(old, old[:, :3], adv, mask)
  with pytest.raises(ValueError, match=r"mask has shape \(3,\)"):
    ul.ppo_policy_loss(old, old, adv, mask[:, 0])


# ---- Tug-of-War ----------------------------------------------------------------------


def test_tug_of_war_hand_and_properties():
  assert float(ul.tug_of_war(0.4, 0.5, 0.9, 1.0, 0.8, 0.8)) == pytest.approx(0.81, rel=1e-6)
  assert float(ul.tug_of_war(0.3, 0.3, 0.7, 0.7, 0.1, 0.1)) == 1.0
  assert float(ul.tug_of_war(1.0, 0.0, 0.5, 0.5, 0.5, 0.5)) == 0.0
  vals = np.array([0.2, 0.6])
  got = jax.jit(ul.tug_of_war)(vals, vals[::-1], vals, vals, vals, vals)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, [0.6, 0.6], rtol=1e-6)
  with pytest.raises(ValueError, match=r"test_rt has shape \(3,\)"):
    ul.tug_of_war(vals, vals, vals, vals, vals, np.ones(3))
