"""open-unlearning's audits: exact memorization, extraction strength, ZLib, Reference, GradNorm."""

import math
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dualoptim_jax import unlearning as ul


def _logits_predicting(preds, v=5):
  """Logits whose argmax at each position is ``preds`` (one-hot times 4, plus small noise)."""
  preds = np.asarray(preds)
  noise = np.random.default_rng(0).uniform(-1.0, 1.0, preds.shape + (v,))
  return (4.0 * np.eye(v)[preds] + noise).astype(np.float32)


def _np_es(correct, kept):
  """Our definition: 1 - k / n, k the smallest index (0..n) whose masked suffix is all correct."""
  c = correct[kept > 0]
  n = c.size
  if n == 0:
    return np.nan
  k = next(k for k in range(n + 1) if c[k:].all())
  return 1.0 - k / n


def _open_unlearning_es(correct, kept):
  """open-unlearning's loop as documented: k runs over 0..n-1 only, so it never reaches n."""
  c = correct[kept > 0]
  n = c.size
  for k in range(n):  # k is read after the loop, as there
    if c[k:].all():
      break
  return 1.0 - k / n


def _inputs(seed, b=6, t=7, v=5):
  rng = np.random.default_rng(seed)
  targets = rng.integers(0, v, (b, t)).astype(np.int32)
  # Mostly-correct predictions, so every ES value from 0 to 1 shows up.
  preds = np.where(rng.random((b, t)) < 0.75, targets, rng.integers(0, v, (b, t)))
  mask = (rng.random((b, t)) < 0.7).astype(np.float32)
  mask[:, 0] = 1.0
  return _logits_predicting(preds, v), targets, mask, preds == targets


# ---- exact memorization and extraction strength -------------------------------------------


def test_exact_memorization_hand():
  logits = _logits_predicting([[0, 1, 2, 3], [1, 1, 1, 1]])
  targets = np.array([[0, 1, 0, 0], [1, 0, 1, 2]])
  mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0]])
  np.testing.assert_allclose(ul.exact_memorization(logits, targets, mask), [2 / 3, 1 / 2])
  got = ul.exact_memorization(logits, targets, np.array([[0, 0, 0, 0], [0.5, 0, 0, 0]]))
  assert np.isnan(got[0]) and float(got[1]) == 1.0  # empty row NaN; a nonzero weight counts


@pytest.mark.parametrize(
  "correct, want",
  [
    ([1, 1, 1, 1], 1.0),  # fully extractable
    ([1, 1, 1, 0], 0.0),  # not even the last token (open-unlearning: 1/4)
    ([0, 1, 1, 1], 0.75),
    ([1, 0, 1, 1], 0.5),
    ([1, 1, 0, 1], 0.25),
    ([0, 0, 0, 0], 0.0),
    ([0, 1, 0, 1], 0.25),
  ],
)
def test_extraction_strength_edge_cases(correct, want):
  targets = np.array([[2, 3, 1, 4]])
  preds = np.where(np.array([correct]) > 0, targets, (targets + 1) % 5)
  got = ul.extraction_strength(_logits_predicting(preds), targets, np.ones((1, 4)))
  assert float(got[0]) == pytest.approx(want)


def test_extraction_strength_reads_only_masked_positions_in_order():
  targets = np.array([[1, 2, 3, 4, 0, 0]])
  # Wrong at positions 0 (prompt) and 5 (padding), both unmasked; wrong at masked position 2.
  preds = np.array([[0, 2, 0, 4, 0, 1]])
  logits = _logits_predicting(preds)
  mask = np.array([[0, 1, 1, 1, 1, 0]])  # masked order: right, wrong, right, right
  assert float(ul.extraction_strength(logits, targets, mask)[0]) == pytest.approx(0.5)
  gaps = np.array([[0, 1, 0, 1, 1, 0]])  # non-contiguous: right, right, right
  assert float(ul.extraction_strength(logits, targets, gaps)[0]) == 1.0
  single = np.array([[0, 0, 1, 0, 0, 0]])
  assert float(ul.extraction_strength(logits, targets, single)[0]) == 0.0
  assert np.isnan(float(ul.extraction_strength(logits, targets, np.zeros((1, 6)))[0]))


@pytest.mark.parametrize("seed", range(3))
def test_memorization_matches_numpy_and_open_unlearning_where_they_agree(seed):
  logits, targets, mask, correct = _inputs(seed)
  em = np.asarray(ul.exact_memorization(logits, targets, mask))
  es = np.asarray(ul.extraction_strength(logits, targets, mask))
  np.testing.assert_allclose(em, (correct * mask).sum(-1) / mask.sum(-1), rtol=1e-6)
  want = np.array([_np_es(c, m) for c, m in zip(correct, mask, strict=True)])
  np.testing.assert_allclose(es, want, rtol=1e-6)
  assert np.all(es <= em + 1e-7)  # the extractable tail is part of the greedy hits
  for row, (c, m) in enumerate(zip(correct, mask, strict=True)):
    ou = _open_unlearning_es(c, m)
    if c[m > 0][-1]:
      assert es[row] == pytest.approx(ou)
    else:  # the last masked token wrong: open-unlearning stops at k = n - 1
      assert es[row] == 0.0 and ou == pytest.approx(1.0 / m.sum())


def test_memorization_jit_bf16_and_errors():
  logits, targets, mask, _ = _inputs(4)
  for fn in (ul.exact_memorization, ul.extraction_strength):
    eager = np.asarray(fn(logits, targets, mask))
    np.testing.assert_allclose(jax.jit(fn)(logits, targets, mask), eager)
    low = fn(jnp.asarray(logits, jnp.bfloat16), targets, mask)
    assert low.dtype == jnp.float32
    # The cast is exact and monotone, so bf16 logits give the argmax of their float32 values.
    up = fn(jnp.asarray(logits, jnp.bfloat16).astype(jnp.float32), targets, mask)
    np.testing.assert_array_equal(low, up)
    stacked = jax.vmap(fn, in_axes=(None, None, 0))(logits, targets, np.stack([mask, mask]))
    np.testing.assert_allclose(stacked[1], eager)
    with pytest.raises(ValueError, match="targets"):
      fn(logits, targets[:, 1:], mask)
    with pytest.raises(ValueError, match="mask"):
      jax.jit(fn)(logits, targets, mask[:2])
    with pytest.raises(ValueError, match="logits"):
      fn(logits[0], targets, mask)


# ---- ZLib and Reference -------------------------------------------------------------------


def test_zlib_scores_hand():
  texts = ["aaaa", "hello world", "naïve café", ""]
  lengths = [len(zlib.compress(t.encode("utf-8"))) for t in texts]
  assert lengths[:2] == [12, 19]
  avg = np.array([-1.2, -0.5, -2.0, -3.0], np.float32)
  got = ul.zlib_scores(avg, texts)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, avg / np.array(lengths), rtol=1e-6)
  jitted = jax.jit(lambda a: ul.zlib_scores(a, texts))(avg)  # traced scores, host-side texts
  np.testing.assert_allclose(jitted, got)
  # A sequence's score rises (more member-like) with its mean log-prob.
  assert ul.mia_auc(ul.zlib_scores([-0.1, -0.2], ["ab", "ab"]), [-0.3, -0.4]) == 1.0


def test_zlib_scores_errors():
  with pytest.raises(TypeError, match="texts"):
    ul.zlib_scores([-1.0], "aaaa")  # a single str is not a sequence of texts
  with pytest.raises(TypeError, match="texts"):
    ul.zlib_scores([-1.0], [b"aaaa"])
  with pytest.raises(ValueError, match="texts"):
    ul.zlib_scores([-1.0, -2.0], ["a"])
  with pytest.raises(ValueError, match="avg_log_probs"):
    ul.zlib_scores([[-1.0]], ["a"])


def test_reference_scores_hand_and_errors():
  got = ul.reference_scores(np.array([-1.0, -2.5]), jnp.array([-1.5, -1.0], jnp.bfloat16))
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, [0.5, -1.5])
  with pytest.raises(ValueError, match="ref_avg_log_probs"):
    jax.jit(ul.reference_scores)(np.zeros(3), np.zeros(2))
  with pytest.raises(ValueError, match="avg_log_probs"):
    ul.reference_scores(np.zeros((3, 1)), np.zeros(3))


# ---- GradNorm -----------------------------------------------------------------------------


def _linear_loss(params, example):
  """Linear in the parameters: the gradients are the example's arrays and 1 for the bias."""
  return (
    params["w"] @ example["a"]
    + jnp.sum(params["m"] * example["b"])
    + params["c"].astype(jnp.float32)
  )


def _linear_case():
  rng = np.random.default_rng(5)
  params = {
    "w": jnp.asarray(rng.normal(size=3), jnp.float32),
    "m": jnp.asarray(rng.normal(size=(2, 2)), jnp.float32),
    "c": jnp.float32(0.5),
  }
  examples = {
    "a": rng.normal(size=(4, 3)).astype(np.float32),
    "b": rng.normal(size=(4, 2, 2)).astype(np.float32),
  }
  return params, examples


@pytest.mark.parametrize(
  "ord, norm",
  [
    (1, lambda x: np.abs(x).sum()),
    (2, lambda x: np.sqrt((x**2).sum())),
    (2.0, lambda x: np.sqrt((x**2).sum())),
    (np.int64(1), lambda x: np.abs(x).sum()),
    (math.inf, lambda x: np.abs(x).max()),
    (np.inf, lambda x: np.abs(x).max()),
  ],
)
def test_gradnorm_against_a_linear_model(ord, norm):
  params, examples = _linear_case()
  want = [
    -(norm(a.ravel()) + norm(b.ravel()) + 1.0) / 3.0
    for a, b in zip(examples["a"], examples["b"], strict=True)
  ]
  got = ul.gradnorm_scores(_linear_loss, params, examples, ord=ord)
  assert got.shape == (4,) and got.dtype == jnp.float32
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_gradnorm_members_score_higher_and_jit_bf16():
  w = jnp.array([1.0, -2.0, 0.5])

  def loss_fn(params, x):  # minimum at x: its gradient, params - x, is small for "members"
    return 0.5 * jnp.sum(jnp.square(params.astype(jnp.float32) - x))

  xs = np.array([[1.0, -2.0, 0.5], [1.1, -2.0, 0.5], [4.0, 0.0, 0.0]], np.float32)
  got = np.asarray(ul.gradnorm_scores(loss_fn, w, xs))
  np.testing.assert_allclose(got, -np.linalg.norm(np.asarray(w) - xs, axis=-1), rtol=1e-5)
  assert got[0] > got[1] > got[2]
  jitted = jax.jit(lambda p, x: ul.gradnorm_scores(loss_fn, p, x, ord=1))(w, xs)
  np.testing.assert_allclose(jitted, ul.gradnorm_scores(loss_fn, w, xs, ord=1), rtol=1e-6)
  low = ul.gradnorm_scores(loss_fn, w.astype(jnp.bfloat16), xs)
  assert low.dtype == jnp.float32
  np.testing.assert_allclose(low, got, rtol=2e-2)


def test_gradnorm_errors():
  params, examples = _linear_case()
  for bad in (3, 0, -1, "fro", True, None, 1.5):
    with pytest.raises(ValueError, match="ord"):
      ul.gradnorm_scores(_linear_loss, params, examples, ord=bad)
  with pytest.raises(ValueError, match="examples"):
    ul.gradnorm_scores(_linear_loss, params, {"a": examples["a"], "b": examples["b"][:3]})
  with pytest.raises(ValueError, match="examples"):
    ul.gradnorm_scores(lambda p, x: p["c"] * x, params, jnp.float32(1.0))
  with pytest.raises(ValueError, match="params"):
    ul.gradnorm_scores(lambda p, x: jnp.sum(x), {}, examples["a"])
