"""open-unlearning's forget losses (CE-U, WGA, SatImp, UNDIAL, RMU) vs hand values and numpy."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dualoptim_jax import unlearning as ul

B, T, V, D = 2, 5, 6, 4


def _softmax(z):
  z = np.asarray(z, np.float64)
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _inputs(seed, b=B, t=T, v=V):
  rng = np.random.default_rng(seed)
  logits = (rng.normal(size=(b, t, v)) * 2).astype(np.float32)
  targets = rng.integers(0, v, (b, t)).astype(np.int32)
  mask = (rng.random((b, t)) < 0.6).astype(np.float32)
  mask[:, 0] = 1.0
  return logits, targets, mask


def _onehot(targets, v=V):
  return np.eye(v)[targets]


def _np_ceu_q(logits, targets):
  z = np.asarray(logits, np.float64).copy()
  np.put_along_axis(z, targets[..., None], -np.inf, axis=-1)
  return _softmax(z)


def _np_cross_entropy(q, logits):
  logp = np.log(_softmax(logits))
  return -np.sum(np.where(q > 0, q * logp, 0.0), axis=-1)


def _np_target_p(logits, targets):
  return np.take_along_axis(_softmax(logits), targets[..., None], -1)[..., 0]


# ---- hand values --------------------------------------------------------------------------


def test_ceu_hand():
  logits = jnp.log(jnp.array([[[0.5, 0.25, 0.25], [0.1, 0.6, 0.3]]]))
  targets = jnp.array([[0, 1]])
  # Position 0: q = (0, 1/2, 1/2); position 1: q = (0.1, 0, 0.3) / 0.4 = (1/4, 0, 3/4).
  ce0 = math.log(4.0)
  ce1 = -(0.25 * math.log(0.1) + 0.75 * math.log(0.3))
  got = float(ul.ceu_loss(logits, targets, jnp.ones((1, 2))))
  assert got == pytest.approx((ce0 + ce1) / 2, rel=1e-6)
  assert float(ul.ceu_loss(logits, targets, jnp.array([[1, 0]]))) == pytest.approx(ce0, rel=1e-6)
  assert float(ul.ceu_loss(logits, targets, jnp.zeros((1, 2)))) == 0.0  # empty mask


def test_wga_and_satimp_hand():
  logits = jnp.log(jnp.array([[[0.8, 0.2], [0.5, 0.5]]]))
  targets, mask = jnp.array([[0, 1]]), jnp.ones((1, 2))
  want = (0.8 * math.log(0.8) + 0.5 * math.log(0.5)) / 2
  assert float(ul.wga_loss(logits, targets, mask)) == pytest.approx(want, rel=1e-6)
  want = (0.8**2 * math.log(0.8) + 0.5**2 * math.log(0.5)) / 2
  assert float(ul.wga_loss(logits, targets, mask, beta=2.0)) == pytest.approx(want, rel=1e-6)
  w1, w2 = 0.8**5 * 0.2, 0.5**5 * 0.5
  want = (w1 * math.log(0.8) + w2 * math.log(0.5)) / 2
  assert float(ul.satimp_loss(logits, targets, mask)) == pytest.approx(want, rel=1e-5)
  w1, w2 = 0.8 * 0.2**3, 0.5 * 0.5**3
  want = (w1 * math.log(0.8) + w2 * math.log(0.5)) / 2
  got = ul.satimp_loss(logits, targets, mask, beta1=1.0, beta2=3.0)
  assert float(got) == pytest.approx(want, rel=1e-5)


def test_undial_hand():
  ref = jnp.log(jnp.array([[[0.5, 0.3, 0.2]]]))
  logits = jnp.log(jnp.array([[[0.6, 0.2, 0.2]]]))
  beta = math.log(2.0)  # halves the target's odds: q = (0.25, 0.3, 0.2) / 0.75
  q = np.array([0.25, 0.3, 0.2]) / 0.75
  want = -float(np.sum(q * np.log([0.6, 0.2, 0.2])))
  got = ul.undial_loss(logits, ref, jnp.array([[0]]), jnp.ones((1, 1)), beta=beta)
  assert float(got) == pytest.approx(want, rel=1e-6)


def test_activation_mse_and_rmu_hand():
  a = jnp.array([[[1.0, 1.0], [3.0, 3.0], [9.0, 9.0]], [[2.0, 0.0], [0.0, 0.0], [0.0, 0.0]]])
  mask = jnp.array([[1, 1, 0], [1, 0, 0]])
  # Row 0: (1 + 9) / 2 = 5; row 1: (4 + 0) / 2 = 2 -> mean over rows 3.5 (not the token mean 11/3).
  assert float(ul.activation_mse(a, jnp.zeros_like(a), mask)) == pytest.approx(3.5)
  c = jnp.array([1.0, -1.0])
  # Row 0: ((0 + 4) / 2 + (4 + 16) / 2) / 2 = 6; row 1: (1 + 1) / 2 = 1.
  assert float(ul.rmu_loss(a, c, mask)) == pytest.approx(3.5)
  # An empty row counts 0 in the mean over rows.
  assert float(ul.activation_mse(a, jnp.zeros_like(a), jnp.array([[1, 1, 0], [0, 0, 0]]))) == 2.5


# ---- numpy references over random inputs ------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
def test_losses_match_numpy(seed):
  logits, targets, mask = _inputs(seed)
  ref = _inputs(seed + 10)[0]
  n = mask.sum()
  ce = _np_cross_entropy(_np_ceu_q(logits, targets), logits)
  assert float(ul.ceu_loss(logits, targets, mask)) == pytest.approx((ce * mask).sum() / n, rel=1e-5)
  p = _np_target_p(logits, targets)
  for beta in (0.0, 0.5, 3.0):
    want = (p**beta * np.log(p) * mask).sum() / n
    assert float(ul.wga_loss(logits, targets, mask, beta=beta)) == pytest.approx(want, rel=1e-5)
  for b1, b2 in ((5.0, 1.0), (0.0, 0.0), (2.0, 0.5)):
    want = (p**b1 * (1 - p) ** b2 * np.log(p) * mask).sum() / n
    got = ul.satimp_loss(logits, targets, mask, beta1=b1, beta2=b2)
    assert float(got) == pytest.approx(want, rel=1e-5)
  for beta in (0.0, 1.0, 10.0):
    q = _softmax(ref - beta * _onehot(targets))
    want = (_np_cross_entropy(q, logits) * mask).sum() / n
    got = ul.undial_loss(logits, ref, targets, mask, beta=beta)
    assert float(got) == pytest.approx(want, rel=1e-5)


def test_reductions_agree_with_open_unlearning_on_a_full_mask_only():
  """open-unlearning's UNDIAL averages over every position; ours over the masked ones."""
  logits, targets, mask = _inputs(3)
  ref = _inputs(4)[0]
  per_position = _np_cross_entropy(_softmax(ref - 10.0 * _onehot(targets)), logits)
  ou = per_position.mean()  # compute_undial_loss: mean over all B * T positions
  full = ul.undial_loss(logits, ref, targets, np.ones_like(mask), beta=10.0)
  assert float(full) == pytest.approx(ou, rel=1e-5)
  ours = float(ul.undial_loss(logits, ref, targets, mask, beta=10.0))
  assert ours == pytest.approx((per_position * mask).sum() / mask.sum(), rel=1e-5)
  assert ours != pytest.approx(ou, rel=1e-3)


def test_undial_beta_zero_is_kl_plus_reference_entropy_and_large_beta_is_ceu():
  logits, targets, mask = _inputs(5)
  ref = _inputs(6)[0]
  q = _softmax(ref)
  entropy = (-(q * np.log(q)).sum(-1) * mask).sum() / mask.sum()
  want = float(ul.kl_loss(logits, ref, mask)) + entropy
  got = ul.undial_loss(logits, ref, targets, mask, beta=0.0)
  assert float(got) == pytest.approx(want, rel=1e-5)
  # ref = the model itself and beta -> inf: the target's mass goes to 0, as in CE-U.
  ceu, g_ceu = jax.value_and_grad(ul.ceu_loss)(logits, targets, mask)
  und, g_und = jax.value_and_grad(lambda z: ul.undial_loss(z, z, targets, mask, beta=60.0))(logits)
  assert float(und) == pytest.approx(float(ceu), rel=1e-5)
  np.testing.assert_allclose(g_und, g_ceu, atol=1e-6)


# ---- gradients ---------------------------------------------------------------------------


def test_ceu_gradient_is_p_minus_constant_q():
  logits, targets, mask = _inputs(7)
  grad = np.asarray(jax.grad(ul.ceu_loss)(logits, targets, mask))
  p, q = _softmax(logits), _np_ceu_q(logits, targets)
  # q treated as a constant: no term from q's own dependence on the logits.
  want = (p - q) * mask[..., None] / mask.sum()
  np.testing.assert_allclose(grad, want, rtol=1e-4, atol=1e-7)
  g_target = np.take_along_axis(grad, targets[..., None], -1)[..., 0]
  assert np.all(g_target[mask > 0] > 0)  # descent lowers the target's logit
  assert np.all(grad[mask == 0] == 0.0)


def test_ceu_descent_lowers_the_target_only_where_masked():
  logits, targets, mask = _inputs(8)
  step = jax.jit(jax.grad(ul.ceu_loss))
  z = jnp.asarray(logits)
  for _ in range(30):
    z = z - 3.0 * step(z, targets, mask)
  before, after = _np_target_p(logits, targets), _np_target_p(np.asarray(z), targets)
  on = mask > 0
  assert np.all(after[on] < before[on])
  np.testing.assert_allclose(after[~on], before[~on], rtol=1e-6)


def test_ceu_gradient_on_other_tokens_is_proportional_to_their_probability():
  p = np.array([0.5, 0.3, 0.15, 0.05])
  grad = np.asarray(
    jax.grad(ul.ceu_loss)(
      jnp.log(jnp.asarray(p[None, None], jnp.float32)), jnp.array([[0]]), jnp.ones((1, 1))
    )
  )[0, 0]
  want = np.concatenate([[0.5], -p[1:] * 0.5 / 0.5])  # +p_t; -p_v p_t / (1 - p_t)
  np.testing.assert_allclose(grad, want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", ["wga", "satimp"])
def test_reweighting_weights_are_constants(name):
  logits, targets, mask = _inputs(9)
  p = _np_target_p(logits, targets)
  if name == "wga":
    loss, w = (lambda z: ul.wga_loss(z, targets, mask, beta=2.0)), p**2.0
  else:
    loss, w = (
      (lambda z: ul.satimp_loss(z, targets, mask, beta1=2.0, beta2=1.5)),
      p**2 * (1 - p) ** 1.5,
    )
  grad = np.asarray(jax.grad(loss)(logits))
  # d(w log p_t)/dz with w constant: w (onehot - p); a differentiated w would add a factor.
  want = (w * mask)[..., None] * (_onehot(targets) - _softmax(logits)) / mask.sum()
  np.testing.assert_allclose(grad, want, rtol=1e-4, atol=1e-8)
  g_target = np.take_along_axis(grad, targets[..., None], -1)[..., 0]
  assert np.all(g_target[mask > 0] > 0)  # descent lowers p_t
  assert np.all(grad[mask == 0] == 0.0)


def test_wga_beta_zero_and_satimp_betas_zero_are_gradient_ascent():
  logits, targets, mask = _inputs(10)
  ga = float(ul.gradient_ascent_loss(logits, targets, mask))
  assert float(ul.wga_loss(logits, targets, mask, beta=0.0)) == pytest.approx(ga, rel=1e-6)
  got = ul.satimp_loss(logits, targets, mask, beta1=0.0, beta2=0.0)
  assert float(got) == pytest.approx(ga, rel=1e-6)


@pytest.mark.parametrize(
  "row, target",
  [([100.0, 0.0], 0), ([0.0, 1e4], 1), ([-np.inf, 0.0], 0)],  # p_t = 1, 1, 0 in float32
)
def test_reweighting_at_saturated_tokens_is_finite(row, target):
  logits = jnp.array([[row]], jnp.float32)
  targets, mask = jnp.array([[target]]), jnp.ones((1, 1))
  for fn in (
    lambda z: ul.wga_loss(z, targets, mask),
    lambda z: ul.satimp_loss(z, targets, mask),
    lambda z: ul.satimp_loss(z, targets, mask, beta2=0.0),
  ):
    loss, grad = jax.value_and_grad(fn)(logits)
    assert float(loss) == 0.0  # log p_t = 0, or weight 0 at p_t = 0 (the limit, not 0 * -inf)
    assert np.all(np.isfinite(grad))


def test_reweighting_of_an_underflowed_token_is_zero():
  far = jnp.array([[[0.0, -200.0]]])  # p_t = e^-200 underflows to 0 in float32
  assert float(ul.wga_loss(far, jnp.array([[1]]), jnp.ones((1, 1)))) == 0.0
  assert float(ul.satimp_loss(far, jnp.array([[1]]), jnp.ones((1, 1)))) == 0.0


def test_undial_gradient_and_its_zero():
  logits, targets, mask = _inputs(11)
  ref, beta = _inputs(12)[0], 2.5
  grad = np.asarray(jax.grad(ul.undial_loss)(logits, ref, targets, mask, beta=beta))
  q = _softmax(ref - beta * _onehot(targets))
  want = (_softmax(logits) - q) * mask[..., None] / mask.sum()
  np.testing.assert_allclose(grad, want, rtol=1e-4, atol=1e-7)
  assert np.all(grad[mask == 0] == 0.0)
  g_ref = jax.grad(ul.undial_loss, argnums=1)(logits, ref, targets, mask, beta=beta)
  assert float(jnp.max(jnp.abs(g_ref))) == 0.0
  # At logits = ref - beta onehot (+ any per-position constant) the model predicts q: the minimum.
  shift = np.random.default_rng(0).normal(size=(B, T, 1)).astype(np.float32) * 5
  at = (ref - beta * _onehot(targets) + shift).astype(np.float32)
  loss, g = jax.value_and_grad(ul.undial_loss)(at, ref, targets, mask, beta=beta)
  assert float(jnp.max(jnp.abs(g))) < 1e-6
  entropy = (-(q * np.log(q)).sum(-1) * mask).sum() / mask.sum()
  assert float(loss) == pytest.approx(entropy, rel=1e-5)
  assert float(ul.undial_loss(logits, ref, targets, mask, beta=beta)) > float(loss)


def test_activation_gradients():
  rng = np.random.default_rng(13)
  a = rng.normal(size=(B, T, D)).astype(np.float32)
  b = rng.normal(size=(B, T, D)).astype(np.float32)
  mask = _inputs(13)[2]
  g_a, g_b = jax.grad(ul.activation_mse, argnums=(0, 1))(a, b, mask)
  n = mask.sum(-1)[:, None, None]
  want = 2.0 * (a - b) / D * mask[..., None] / n / B
  np.testing.assert_allclose(g_a, want, rtol=1e-5, atol=1e-7)
  assert float(jnp.max(jnp.abs(g_b))) == 0.0  # the target is a constant
  c = rng.normal(size=(D,)).astype(np.float32)
  want = float(ul.activation_mse(a, np.broadcast_to(c, a.shape), mask))
  assert float(ul.rmu_loss(a, c, mask)) == pytest.approx(want, rel=1e-6)
  g_c = jax.grad(ul.rmu_loss, argnums=1)(a, c, mask)
  assert float(jnp.max(jnp.abs(g_c))) == 0.0


def test_rmu_control_vector():
  key = jax.random.key(3)
  c = np.asarray(ul.rmu_control_vector(key, 64))
  assert c.shape == (64,) and c.dtype == np.float32
  assert np.linalg.norm(c) == pytest.approx(20.0, rel=1e-6)
  assert np.all(c >= 0)
  u = np.asarray(jax.random.uniform(key, (64,)))  # the same draw, normalised by hand
  np.testing.assert_allclose(c, 20.0 * u / np.linalg.norm(u), rtol=1e-6)
  np.testing.assert_array_equal(c, ul.rmu_control_vector(key, 64))  # deterministic in the key
  assert not np.allclose(c, ul.rmu_control_vector(jax.random.key(4), 64))
  raw = ul.rmu_control_vector(jax.random.PRNGKey(3), 8, steering_coeff=2.0)  # raw uint32 keys too
  assert float(jnp.linalg.norm(raw)) == pytest.approx(2.0, rel=1e-6)
  traced = jax.jit(lambda s: ul.rmu_control_vector(key, 64, steering_coeff=s))(jnp.float32(5.0))
  np.testing.assert_allclose(traced, c / 4.0, rtol=1e-6)


# ---- masking, dtypes, tracing, errors ------------------------------------------------------


def _all_losses(logits, ref, targets, mask, beta=1.0):
  return {
    "ceu": ul.ceu_loss(logits, targets, mask),
    "wga": ul.wga_loss(logits, targets, mask, beta=beta),
    "satimp": ul.satimp_loss(logits, targets, mask, beta1=beta, beta2=beta),
    "undial": ul.undial_loss(logits, ref, targets, mask, beta=beta),
  }


def test_masked_positions_have_no_influence():
  logits, targets, mask = _inputs(14)
  ref = _inputs(15)[0]
  base = _all_losses(logits, ref, targets, mask)
  off = mask == 0
  rng = np.random.default_rng(1)
  logits2, ref2, targets2 = logits.copy(), ref.copy(), targets.copy()
  logits2[off] = rng.normal(size=logits2[off].shape) * 50
  ref2[off] = rng.normal(size=ref2[off].shape) * 50
  targets2[off] = -100  # HF's ignore index
  for name, value in _all_losses(logits2, ref2, targets2, mask).items():
    assert float(value) == pytest.approx(float(base[name]), rel=1e-6), name
  a = rng.normal(size=(B, T, D)).astype(np.float32)
  a2 = a.copy()
  a2[off] = 1e3
  zero = np.zeros_like(a)
  assert float(ul.activation_mse(a2, zero, mask)) == pytest.approx(
    float(ul.activation_mse(a, zero, mask)), rel=1e-6
  )


def test_jit_vmap_and_bf16():
  logits, targets, mask = _inputs(16)
  ref = _inputs(17)[0]
  eager = _all_losses(logits, ref, targets, mask, beta=2.0)
  jitted = jax.jit(lambda z, r, t, m: _all_losses(z, r, t, m, beta=2.0))(logits, ref, targets, mask)
  for name in eager:
    assert float(jitted[name]) == pytest.approx(float(eager[name]), rel=1e-6), name
  stacked = jax.vmap(lambda z: _all_losses(z, ref, targets, mask, beta=2.0))(
    np.stack([logits, ref])
  )
  for name in eager:
    assert float(stacked[name][0]) == pytest.approx(float(eager[name]), rel=1e-6), name
  lo, lo_ref = jnp.asarray(logits, jnp.bfloat16), jnp.asarray(ref, jnp.bfloat16)
  low = _all_losses(lo, lo_ref, targets, mask)
  up = _all_losses(lo.astype(jnp.float32), lo_ref.astype(jnp.float32), targets, mask)
  for name in low:
    assert low[name].dtype == jnp.float32, name
    assert float(low[name]) == pytest.approx(float(up[name]), rel=1e-6), name
  a = jnp.asarray(np.random.default_rng(2).normal(size=(B, T, D)), jnp.bfloat16)
  c = ul.rmu_control_vector(jax.random.key(0), D, steering_coeff=2.0)
  got = ul.rmu_loss(a, c, mask)
  assert got.dtype == jnp.float32
  assert float(got) == pytest.approx(float(ul.rmu_loss(a.astype(jnp.float32), c, mask)), rel=1e-6)


def test_traced_hyperparameters():
  logits, targets, mask = _inputs(18)
  ref = _inputs(19)[0]
  want = _all_losses(logits, ref, targets, mask, beta=1.7)
  got = jax.jit(lambda b: _all_losses(logits, ref, targets, mask, beta=b))(jnp.float32(1.7))
  for name in want:
    assert float(got[name]) == pytest.approx(float(want[name]), rel=1e-6), name


def test_shape_and_hyperparameter_errors_name_the_argument():
  logits, targets, mask = _inputs(20)
  ref = _inputs(21)[0]
  with pytest.raises(ValueError, match="targets"):
    ul.ceu_loss(logits, targets[:, :-1], mask)
  with pytest.raises(ValueError, match="mask"):
    jax.jit(ul.wga_loss)(logits, targets, mask[:1])
  with pytest.raises(ValueError, match="mask"):
    ul.satimp_loss(logits, targets, mask[..., None])
  with pytest.raises(ValueError, match="ref_logits"):
    jax.jit(ul.undial_loss)(logits, ref[..., :-1], targets, mask)
  with pytest.raises(ValueError, match="logits"):
    ul.ceu_loss(logits[..., :1], targets * 0, mask)  # a vocabulary of 1 has no other token
  with pytest.raises(ValueError, match="beta"):
    ul.wga_loss(logits, targets, mask, beta=-1.0)
  with pytest.raises(ValueError, match="beta2"):
    ul.satimp_loss(logits, targets, mask, beta2=float("nan"))
  with pytest.raises(ValueError, match="beta"):
    ul.undial_loss(logits, ref, targets, mask, beta=-0.5)
  a = np.zeros((B, T, D), np.float32)
  with pytest.raises(ValueError, match="target_activations"):
    ul.activation_mse(a, a[:, :, :-1], mask)
  with pytest.raises(ValueError, match="mask"):
    jax.jit(ul.activation_mse)(a, a, mask[:, :-1])
  with pytest.raises(ValueError, match="activations"):
    ul.rmu_loss(a[0], np.zeros(D), mask)
  with pytest.raises(ValueError, match="control_vector"):
    jax.jit(ul.rmu_loss)(a, np.zeros(D + 1), mask)
  with pytest.raises(ValueError, match="dim"):
    ul.rmu_control_vector(jax.random.key(0), 0)
  with pytest.raises(ValueError, match="steering_coeff"):
    ul.rmu_control_vector(jax.random.key(0), 4, steering_coeff=-1.0)
