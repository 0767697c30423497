"""DiPO (the reconstruction of UNLEARNING.md 4.2): value, gradient, invariances, against numpy."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dualoptim_jax import unlearning as ul

B, T, V = 2, 4, 6
SETTINGS = settings(max_examples=15, deadline=None)


def _softmax(z):
  z = np.asarray(z, np.float64)
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _np_pair(ref, gamma, top_k):
  """pi_w, pi_l built independently: shift the top_k reference logits down / up by gamma."""
  sel = np.zeros_like(ref, dtype=np.float64)
  order = np.argsort(-ref, axis=-1)[..., :top_k]
  np.put_along_axis(sel, order, 1.0, axis=-1)
  return _softmax(ref - gamma * sel), _softmax(ref + gamma * sel)


def _np_delta(logits, ref, mask, beta, gamma, top_k):
  """Delta_b in its sequence-KL form (the other side of the derivation's identity)."""
  w, lo = _np_pair(ref, gamma, top_k)
  p, q = _softmax(logits), _softmax(ref)

  def kl(a, b):
    return (a * (np.log(a) - np.log(b))).sum(-1)

  per_t = kl(lo, p) - kl(w, p) - kl(lo, q) + kl(w, q)
  return beta * (per_t * mask).sum(-1)


def _inputs(seed):
  rng = np.random.default_rng(seed)
  ref = (rng.normal(size=(B, T, V)) * 2).astype(np.float32)
  logits = (ref + rng.normal(size=(B, T, V))).astype(np.float32)
  mask = (rng.random((B, T)) < 0.6).astype(np.float32)
  mask[:, 0] = 1.0
  return logits, ref, mask


def test_log2_at_reference():
  _, ref, mask = _inputs(0)
  for top_k in (1, 3):
    for gamma in (0.5, 3.0, 30.0):
      got = float(ul.dipo_loss(ref, ref, mask, gamma=gamma, top_k=top_k))
      assert got == pytest.approx(math.log(2.0), abs=1e-6)


@SETTINGS
@given(
  seed=st.integers(0, 2**31 - 1),
  beta=st.floats(0.05, 2.0),
  gamma=st.floats(0.0, 10.0),
  top_k=st.integers(1, V - 1),
  normalize=st.booleans(),
)
def test_value_matches_numpy_kl_form(seed, beta, gamma, top_k, normalize):
  logits, ref, mask = _inputs(seed)
  delta = _np_delta(logits, ref, mask, beta, gamma, top_k)
  if normalize:
    delta = delta / mask.sum(-1)
  want = -np.mean(-np.log1p(np.exp(-delta)))
  got = ul.dipo_loss(
    logits, ref, mask, beta=beta, gamma=gamma, top_k=top_k, length_normalize=normalize
  )
  assert float(got) == pytest.approx(want, rel=1e-4, abs=1e-6)


def test_gradient_is_minus_pi_w_minus_pi_l_and_zero_when_masked():
  logits, ref, mask = _inputs(1)
  beta, gamma = 0.3, 2.0
  grad = np.asarray(jax.grad(ul.dipo_loss)(logits, ref, mask, beta=beta, gamma=gamma))
  w, lo = _np_pair(ref, gamma, 1)
  delta = _np_delta(logits, ref, mask, beta, gamma, 1)
  weight = 1.0 / (1.0 + np.exp(delta))  # sigmoid(-Delta)
  want = -(weight[:, None, None] * beta * mask[..., None] * (w - lo)) / B
  np.testing.assert_allclose(grad, want, rtol=1e-4, atol=1e-7)
  assert np.all(grad[mask == 0] == 0.0)  # masked-out positions: exactly zero
  # Descent lowers the reference's top token and raises every other token.
  top = np.argmax(ref, -1)
  on = mask > 0
  assert np.all(np.take_along_axis(grad, top[..., None], -1)[..., 0][on] > 0)
  others = np.ones_like(grad, dtype=bool)
  np.put_along_axis(others, top[..., None], False, axis=-1)
  assert np.all(grad[others & on[..., None]] < 0)


def test_gradient_wrt_reference_is_zero():
  logits, ref, mask = _inputs(2)
  g = jax.grad(ul.dipo_loss, argnums=1)(logits, ref, mask)
  assert float(jnp.max(jnp.abs(g))) == 0.0


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), scale=st.floats(-20.0, 20.0))
def test_invariant_to_per_position_constants(seed, scale):
  logits, ref, mask = _inputs(seed)
  c = (np.random.default_rng(seed).normal(size=(B, T, 1)) * scale).astype(np.float32)
  base = float(ul.dipo_loss(logits, ref, mask))
  assert float(ul.dipo_loss(logits + c, ref, mask)) == pytest.approx(base, rel=1e-4, abs=1e-5)
  assert float(ul.dipo_loss(logits, ref - c, mask)) == pytest.approx(base, rel=1e-4, abs=1e-5)


def test_gamma_zero_gives_zero_gradient():
  logits, ref, mask = _inputs(3)
  loss, grad = jax.value_and_grad(ul.dipo_loss)(logits, ref, mask, gamma=0.0)
  assert float(loss) == pytest.approx(math.log(2.0), abs=1e-6)
  assert float(jnp.max(jnp.abs(grad))) == 0.0


def test_descent_lowers_the_selected_tokens():
  logits, ref, mask = _inputs(4)
  fn = jax.jit(jax.value_and_grad(lambda z: ul.dipo_loss(z, ref, mask, beta=1.0)))
  z = jnp.asarray(ref)
  first, _ = fn(z)
  for _ in range(20):
    loss, g = fn(z)
    z = z - 5.0 * g
  assert float(loss) < float(first)
  top = np.argmax(ref, -1)[..., None]
  p_before = np.take_along_axis(_softmax(ref), top, -1)[..., 0]
  p_after = np.take_along_axis(_softmax(np.asarray(z)), top, -1)[..., 0]
  assert np.all(p_after[mask > 0] < p_before[mask > 0])
  np.testing.assert_allclose(p_after[mask == 0], p_before[mask == 0], rtol=1e-6)


def test_jit_vmap_bf16():
  logits, ref, mask = _inputs(5)
  eager = ul.dipo_loss(logits, ref, mask, top_k=2)
  fn = jax.jit(lambda a, b, m: ul.dipo_loss(a, b, m, top_k=2))
  assert float(fn(logits, ref, mask)) == pytest.approx(float(eager), rel=1e-6)
  both = jax.vmap(fn, in_axes=(0, None, None))(np.stack([logits, ref]), ref, mask)
  np.testing.assert_allclose(both, [eager, math.log(2.0)], rtol=1e-5)
  low = ul.dipo_loss(jnp.asarray(logits, jnp.bfloat16), jnp.asarray(ref, jnp.bfloat16), mask)
  up = ul.dipo_loss(
    jnp.asarray(logits, jnp.bfloat16).astype(jnp.float32),
    jnp.asarray(ref, jnp.bfloat16).astype(jnp.float32),
    mask,
  )
  assert low.dtype == jnp.float32 and float(low) == pytest.approx(float(up), rel=1e-6)


def test_traced_gamma_and_beta():
  logits, ref, mask = _inputs(6)
  fn = jax.jit(lambda g, b: ul.dipo_loss(logits, ref, mask, gamma=g, beta=b))
  want = ul.dipo_loss(logits, ref, mask, gamma=2.0, beta=0.5)
  assert float(fn(jnp.float32(2.0), jnp.float32(0.5))) == pytest.approx(float(want), rel=1e-6)
