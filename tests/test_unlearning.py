"""unlearning losses vs numpy references and hand values; jit, vmap, bf16, shape errors."""

import math

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dualoptim_jax import unlearning as ul

B, T, V = 3, 5, 7
SETTINGS = settings(max_examples=20, deadline=None)


def _np_log_softmax(z):
  z = np.asarray(z, np.float64)
  z = z - z.max(axis=-1, keepdims=True)
  return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _log_sigmoid(x):
  return -np.log1p(np.exp(-x))


def _inputs(seed, b=B, t=T, v=V):
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=(b, t, v)).astype(np.float32) * 2
  targets = rng.integers(0, v, (b, t)).astype(np.int32)
  mask = (rng.random((b, t)) < 0.7).astype(np.float32)
  mask[0, 0] = 1.0  # never empty
  return logits, targets, mask


def _np_token_logp(logits, targets):
  return np.take_along_axis(_np_log_softmax(logits), targets[..., None], axis=-1)[..., 0]


# ---- hand values -----------------------------------------------------------------------


def test_token_and_sequence_log_probs_hand():
  logits = jnp.log(jnp.array([[[0.5, 0.25, 0.25], [0.1, 0.2, 0.7]]], jnp.float32))
  targets, mask = jnp.array([[1, 2]]), jnp.array([[1.0, 1.0]])
  np.testing.assert_allclose(ul.token_log_probs(logits, targets), [[math.log(0.25), math.log(0.7)]])
  np.testing.assert_allclose(
    ul.sequence_log_probs(logits, targets, mask), [math.log(0.25) + math.log(0.7)], rtol=1e-6
  )
  np.testing.assert_allclose(
    ul.sequence_log_probs(logits, targets, jnp.array([[0, 1]])), [math.log(0.7)], rtol=1e-6
  )


def test_ga_and_nll_hand():
  logits = jnp.log(jnp.array([[[0.5, 0.5], [0.25, 0.75]]], jnp.float32))
  targets = jnp.array([[0, 1]])
  want = (math.log(0.5) + math.log(0.75)) / 2
  assert float(ul.gradient_ascent_loss(logits, targets, jnp.ones((1, 2)))) == pytest.approx(want)
  assert float(ul.nll_loss(logits, targets, jnp.ones((1, 2)))) == pytest.approx(-want)
  assert float(ul.nll_loss(logits, targets, jnp.zeros((1, 2)))) == 0.0  # empty mask


def test_sequence_losses_hand():
  lp, ref = np.array([-2.0, -5.0]), np.array([-1.0, -4.5])
  want = -(2 / 0.1) * np.mean(_log_sigmoid(0.1 * (ref - lp)))
  assert float(ul.npo_loss(lp, ref)) == pytest.approx(want, rel=1e-6)
  lengths = np.array([4, 2])
  want = -(2 / 2.5) * np.mean(_log_sigmoid(-2.5 * lp / lengths - 0.3))
  assert float(ul.simnpo_loss(lp, lengths, gamma=0.3)) == pytest.approx(want, rel=1e-6)
  c, r, rc, rr = np.array([-3.0]), np.array([-1.0]), np.array([-4.0]), np.array([-0.5])
  want = -(2 / 0.5) * _log_sigmoid(0.5 * ((c - r) - (rc - rr)))[0]
  assert float(ul.dpo_loss(c, r, rc, rr, beta=0.5)) == pytest.approx(want, rel=1e-6)
  want = -(1 / 0.1) * _log_sigmoid(0.1 * (-1.0 - -3.0))
  assert float(ul.answer_preservation_loss([-1.0], [-3.0])) == pytest.approx(want, rel=1e-6)


def test_entropy_and_kl_hand():
  p = np.array([0.7, 0.2, 0.1])
  logits = jnp.log(jnp.asarray(p[None, None], jnp.float32))
  want = -math.log(3) - np.mean(np.log(p))
  assert float(ul.maximum_entropy_loss(logits, jnp.ones((1, 1)))) == pytest.approx(want, rel=1e-5)
  q = np.array([0.2, 0.3, 0.5])
  ref = jnp.log(jnp.asarray(q[None, None], jnp.float32))
  want = float(np.sum(q * np.log(q / p)))
  assert float(ul.kl_loss(logits, ref, jnp.ones((1, 1)))) == pytest.approx(want, rel=1e-5)
  assert abs(float(ul.kl_loss(logits, logits, jnp.ones((1, 1))))) < 1e-7


def test_kl_ignores_tokens_the_reference_rules_out():
  ref = jnp.array([[[0.0, -jnp.inf]]], jnp.float32)
  logits = jnp.array([[[0.0, 0.0]]], jnp.float32)
  assert float(ul.kl_loss(logits, ref, jnp.ones((1, 1)))) == pytest.approx(math.log(2.0))


# ---- independent numpy references over random inputs -----------------------------------


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), shift=st.floats(-50, 50))
def test_token_losses_match_numpy(seed, shift):
  logits, targets, mask = _inputs(seed)
  logits = logits + np.float32(shift)  # log-softmax is shift invariant
  tl = _np_token_logp(logits, targets)
  np.testing.assert_allclose(ul.token_log_probs(logits, targets), tl, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(
    ul.sequence_log_probs(logits, targets, mask), (tl * mask).sum(1), rtol=1e-4, atol=1e-4
  )
  ga = (tl * mask).sum() / mask.sum()
  assert float(ul.gradient_ascent_loss(logits, targets, mask)) == pytest.approx(ga, rel=1e-4)
  assert float(ul.nll_loss(logits, targets, mask)) == pytest.approx(-ga, rel=1e-4)
  ls = _np_log_softmax(logits)
  me = ((-np.log(V) - ls.mean(-1)) * mask).sum() / mask.sum()
  assert float(ul.maximum_entropy_loss(logits, mask)) == pytest.approx(me, rel=1e-4, abs=1e-5)
  ref = _inputs(seed + 1)[0]
  lr = _np_log_softmax(ref)
  kl = ((np.exp(lr) * (lr - ls)).sum(-1) * mask).sum() / mask.sum()
  assert float(ul.kl_loss(logits, ref, mask)) == pytest.approx(kl, rel=1e-4, abs=1e-5)


@SETTINGS
@given(
  lp=hnp.arrays(np.float32, 4, elements=st.floats(-60, 0, width=32)),
  ref=hnp.arrays(np.float32, 4, elements=st.floats(-60, 0, width=32)),
  beta=st.floats(0.01, 3.0),
)
def test_npo_is_positive_and_log2_scaled_at_reference(lp, ref, beta):
  loss = float(ul.npo_loss(lp, ref, beta=beta))
  assert loss > 0.0
  assert float(ul.npo_loss(lp, lp, beta=beta)) == pytest.approx(2 / beta * math.log(2), rel=1e-5)
  # Lowering the likelihood of the forget sequences lowers the loss.
  assert float(ul.npo_loss(lp - 1.0, ref, beta=beta)) < loss


# ---- jit, vmap, dtypes -------------------------------------------------------------------


def _all_losses(logits, ref_logits, targets, mask):
  lp = ul.sequence_log_probs(logits, targets, mask)
  rlp = ul.sequence_log_probs(ref_logits, targets, mask)
  n = jnp.sum(mask, axis=-1)
  return jnp.stack(
    [
      ul.gradient_ascent_loss(logits, targets, mask),
      ul.nll_loss(logits, targets, mask),
      ul.npo_loss(lp, rlp),
      ul.simnpo_loss(lp, n),
      ul.dpo_loss(lp, rlp, rlp, lp),
      ul.answer_preservation_loss(lp, rlp),
      ul.maximum_entropy_loss(logits, mask),
      ul.kl_loss(logits, ref_logits, mask),
      ul.dipo_loss(logits, ref_logits, mask),
    ]
  )


def test_losses_are_float32_scalars_under_jit_and_vmap():
  logits, targets, mask = _inputs(0)
  ref = _inputs(1)[0]
  eager = _all_losses(logits, ref, targets, mask)
  assert eager.dtype == jnp.float32 and eager.shape == (9,)
  np.testing.assert_allclose(jax.jit(_all_losses)(logits, ref, targets, mask), eager, rtol=1e-5)
  # vmap over a leading axis of two "models" = the loop over them.
  models, refs = np.stack([logits, ref]), np.stack([ref, logits])
  got = jax.vmap(_all_losses, in_axes=(0, 0, None, None))(models, refs, targets, mask)
  want = [_all_losses(logits, ref, targets, mask), _all_losses(ref, logits, targets, mask)]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_inputs_compute_in_float32(dtype):
  logits, targets, mask = _inputs(2)
  ref = _inputs(3)[0]
  low, low_ref = jnp.asarray(logits, dtype), jnp.asarray(ref, dtype)
  got = _all_losses(low, low_ref, targets, mask.astype(np.int32))
  assert got.dtype == jnp.float32
  # The same values upcast first: identical, so nothing was computed in low precision.
  want = _all_losses(low.astype(jnp.float32), low_ref.astype(jnp.float32), targets, mask)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  assert ul.token_log_probs(low, targets).dtype == jnp.float32
  assert ul.npo_loss(jnp.ones(2, dtype), jnp.zeros(2, dtype)).dtype == jnp.float32


def test_bool_and_int_masks_equal_float_masks():
  logits, targets, mask = _inputs(4)
  for m in (mask.astype(bool), mask.astype(np.int32)):
    np.testing.assert_allclose(
      _all_losses(logits, logits, targets, m), _all_losses(logits, logits, targets, mask)
    )


def test_padding_labels_are_ignored():
  logits, targets, mask = _inputs(5)
  padded = np.where(mask > 0, targets, -100)
  np.testing.assert_allclose(
    ul.sequence_log_probs(logits, padded, mask), ul.sequence_log_probs(logits, targets, mask)
  )


# ---- errors --------------------------------------------------------------------------------

_L, _TG, _M = np.zeros((2, 3, 5), np.float32), np.zeros((2, 3), np.int32), np.ones((2, 3))


@pytest.mark.parametrize(
  "call,needle",
  [
    (lambda: ul.token_log_probs(_L, _TG[:, :2]), "targets has shape (2, 2)"),
    (lambda: ul.token_log_probs(_L[0], _TG), "logits must have shape (batch, time, vocab)"),
    (lambda: ul.sequence_log_probs(_L, _TG, _M[:1]), "mask has shape (1, 3)"),
    (lambda: ul.gradient_ascent_loss(_L, _TG, _M.T), "mask has shape (3, 2)"),
    (lambda: ul.nll_loss(_L, _TG[:1], _M), "targets"),
    (lambda: ul.npo_loss(np.zeros(2), np.zeros(3)), "ref_logp has shape (3,)"),
    (lambda: ul.npo_loss(np.zeros((2, 1)), np.zeros((2, 1))), "logp must have shape (batch,)"),
    (lambda: ul.simnpo_loss(np.zeros(2), np.ones(3)), "lengths"),
    (lambda: ul.dpo_loss(*[np.zeros(2)] * 3, np.zeros(4)), "ref_logp_rejected"),
    (lambda: ul.answer_preservation_loss(np.zeros(2), np.zeros(1)), "logp_idk"),
    (lambda: ul.maximum_entropy_loss(_L, _M[:, :2]), "mask has shape (2, 2)"),
    (lambda: ul.kl_loss(_L, _L[:, :, :4], _M), "ref_logits has shape (2, 3, 4)"),
    (lambda: ul.dipo_loss(_L, _L[:1], _M), "ref_logits has shape (1, 3, 5)"),
    (lambda: ul.dipo_loss(_L, _L, _M[:, :1]), "mask has shape (2, 1)"),
    (lambda: ul.dipo_loss(_L, _L, _M, top_k=6), "top_k=6 exceeds the vocabulary size 5"),
    (lambda: ul.dipo_loss(_L, _L, _M, top_k=0), "top_k must be a Python int >= 1"),
    (lambda: ul.dipo_loss(_L, _L, _M, gamma=-1.0), "gamma=-1.0"),
    (lambda: ul.npo_loss(np.zeros(2), np.zeros(2), beta=0.0), "beta=0.0"),
  ],
)
def test_shape_mismatch_errors_name_the_argument(call, needle):
  with pytest.raises(ValueError) as info:
    call()
  assert needle in str(info.value)


def test_non_integer_targets_rejected():
  with pytest.raises(TypeError, match="targets must hold integer token ids"):
    ul.token_log_probs(_L, _TG.astype(np.float32))


def test_shape_errors_raise_under_jit():
  with pytest.raises(ValueError, match="mask has shape"):
    jax.jit(ul.gradient_ascent_loss)(_L, _TG, _M[:, :2])
