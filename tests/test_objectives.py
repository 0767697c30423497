"""Objective selection, multi-objective schedules, bad input and the hazard safeguard."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import dualoptim_jax as do


@pytest.mark.parametrize(
  "lengths, expected",
  [
    ((1, 5), [0, 1, 1, 1, 1, 1, 0, 1]),
    ((2, 1), [0, 0, 1, 0, 0, 1, 0, 0]),
    ((0, 1), [1] * 8),
    ((1, 0), [0] * 8),
    ((1, 2, 3), [0, 1, 1, 2, 2, 2, 0, 1]),
  ],
)
def test_schedule(lengths, expected):
  got = [int(do.scheduled_objective(jnp.int32(k), lengths)) for k in range(8)]
  assert got == expected
  traced = jax.jit(lambda k: do.scheduled_objective(k, lengths))
  assert [int(traced(jnp.int32(k))) for k in range(8)] == expected
  # Traced run lengths too (one program for any lengths: optax.inject_hyperparams).
  traced_lengths = jax.jit(lambda k, n: do.scheduled_objective(k, tuple(n)))
  n = jnp.asarray(lengths, jnp.int32)
  assert [int(traced_lengths(jnp.int32(k), n)) for k in range(8)] == expected


def test_only_active_delta_changes():
  tx = do.scale_by_dualoptim_plus()
  params = {"w": jnp.ones(3)}
  state = tx.init(params)
  _, s1 = tx.update({"w": jnp.ones(3)}, state, params, objective=do.FORGET)
  np.testing.assert_array_equal(s1.delta_mu[do.RETAIN]["w"], 0.0)
  np.testing.assert_array_equal(s1.objective_counts, [1, 0])
  _, s2 = tx.update({"w": jnp.full(3, 2.0)}, s1, params, objective=do.RETAIN)
  np.testing.assert_array_equal(s2.delta_mu[do.FORGET]["w"], s1.delta_mu[do.FORGET]["w"])
  np.testing.assert_array_equal(s2.delta_nu[do.FORGET]["w"], s1.delta_nu[do.FORGET]["w"])
  np.testing.assert_array_equal(s2.objective_counts, [1, 1])
  assert int(s2.count) == 2
  # The base is fed every step with the raw gradient.
  np.testing.assert_allclose(s2.base_mu["w"], 0.9 * 0.1 + 0.1 * 2.0, rtol=1e-6)


def test_first_step_is_adam():
  jax_promotion = jax.numpy_dtype_promotion("standard")  # optax.adam is not strict-clean
  g = {"w": jnp.array([0.5, -3.0, 1e-3])}
  params = {"w": jnp.zeros(3)}
  ours, _ = do.dualoptim_plus(1e-2).update(g, do.dualoptim_plus(1e-2).init(params), params)
  adam = optax.adam(1e-2, b1=0.9, b2=0.95)
  with jax_promotion:
    ref, _ = adam.update(g, adam.init(params), params)
  np.testing.assert_allclose(ours["w"], ref["w"], rtol=1e-5)


def test_three_objectives():
  tx = do.scale_by_dualoptim_plus(num_objectives=3, run_lengths=(1, 2, 1))
  params = {"w": jnp.ones(2)}
  state = tx.init(params)
  assert len(state.delta_mu) == 3
  step = jax.jit(lambda g, s: tx.update(g, s, params))
  for _ in range(8):
    _, state = step({"w": jnp.ones(2)}, state)
  np.testing.assert_array_equal(state.objective_counts, [2, 4, 2])
  _, state = tx.update({"w": jnp.ones(2)}, state, params, objective=jnp.int32(2))
  np.testing.assert_array_equal(state.objective_counts, [2, 4, 3])


@pytest.mark.parametrize(
  "kwargs",
  [
    dict(b1=1.0),
    dict(b1=-0.1),
    dict(b2=1.5),
    dict(base_b1=1.0),
    dict(base_b2=-1e-3),
    dict(eps=-1e-8),
    dict(learning_rate=-1e-3),
    dict(forget_learning_rate=-1.0),
    dict(weight_decay=-0.1),
    dict(forget_steps=0, retain_steps=0),
    dict(forget_steps=-1),
    dict(b1=float("nan")),
  ],
)
def test_bad_hyperparameters_raise_at_construction(kwargs):
  args = dict(learning_rate=1e-3) | kwargs
  with pytest.raises(ValueError):
    do.dualoptim_plus(**args)
  if not any(k.startswith("base_") for k in kwargs):
    with pytest.raises(ValueError):
      do.dualoptim(**args)


def test_num_objectives_mismatch_raises():
  with pytest.raises(ValueError, match="run_lengths"):
    do.scale_by_dualoptim_plus(num_objectives=3)
  with pytest.raises(ValueError, match="expected 3"):
    do.scale_by_dualoptim_plus(num_objectives=3, run_lengths=(1, 1))


@pytest.mark.parametrize("factory", [do.dualoptim_plus, do.dualoptim])
@pytest.mark.parametrize("objective", [2, -1, 7])
def test_python_objective_out_of_range_raises(factory, objective):
  tx = factory(1e-3)
  params = {"w": jnp.ones(2)}
  with pytest.raises(ValueError, match="out of range"):
    tx.update({"w": jnp.ones(2)}, tx.init(params), params, objective=objective)


@pytest.mark.parametrize("factory", [do.dualoptim_plus, do.dualoptim])
def test_bad_objective_types_raise(factory):
  tx = factory(1e-3)
  params = {"w": jnp.ones(2)}
  state = tx.init(params)
  for bad in (True, jnp.float32(1.0), jnp.array([0, 1])):
    with pytest.raises(TypeError):
      tx.update({"w": jnp.ones(2)}, state, params, objective=bad)


@pytest.mark.parametrize("factory", [do.dualoptim_plus, do.dualoptim])
@pytest.mark.parametrize("objective", [2, -1])
def test_traced_objective_out_of_range_is_nan_and_keeps_state(factory, objective):
  """Documented behaviour: NaN updates (loud) and an unchanged state."""
  tx = factory(1e-3)
  params = {"w": jnp.ones(2)}
  state = tx.init(params)
  _, state = tx.update({"w": jnp.ones(2)}, state, params, objective=0)
  step = jax.jit(lambda s, o: tx.update({"w": jnp.ones(2)}, s, params, objective=o))
  updates, new_state = step(state, jnp.int32(objective))
  assert np.all(np.isnan(updates["w"]))
  jax.tree.map(np.testing.assert_array_equal, new_state, state)


@pytest.mark.parametrize("factory", [do.dualoptim_plus, do.dualoptim])
def test_mismatched_grad_tree_raises(factory):
  tx = factory(1e-3)
  params = {"w": jnp.ones(2), "b": jnp.ones(3)}
  state = tx.init(params)
  with pytest.raises(ValueError, match="does not match"):
    tx.update({"w": jnp.ones(2)}, state, params)
  with pytest.raises(ValueError, match="shape"):
    tx.update({"w": jnp.ones(3), "b": jnp.ones(3)}, state, params)


def test_run_lengths_may_be_arrays_and_are_checked_when_concrete():
  """Arrays as run lengths (optax.inject_hyperparams passes them so); traced: tests/test_inject*."""
  tx = do.scale_by_dualoptim_plus(forget_steps=jnp.int32(1), retain_steps=jnp.int32(2))
  params = {"w": jnp.ones(2)}
  state = tx.init(params)
  for _ in range(3):
    _, state = tx.update({"w": jnp.ones(2)}, state, params)
  np.testing.assert_array_equal(state.objective_counts, [1, 2])
  with pytest.raises(ValueError, match="non-negative"):
    do.dualoptim_plus(1e-3, forget_steps=jnp.int32(-1))
  with pytest.raises(ValueError, match="empty"):
    do.dualoptim_plus(1e-3, run_lengths=(jnp.int32(0), 0))
  with pytest.raises(TypeError, match="integer scalar"):
    do.dualoptim_plus(1e-3, forget_steps=jnp.float32(1.0))
  with pytest.raises(TypeError, match="integer scalar"):
    do.dualoptim_plus(1e-3, run_lengths=(jnp.array([1, 2]), 1))


def hazard_gradients(n=4096, steps=12, seed=0):
  """Gradients whose second-moment residual cancels the base: the section 3 hazard.

  The base second moment tracks large gradients; then small ones arrive, so the
  residual ``g*g - Bv_hat`` is strongly negative and ``Dv_hat + Bv_hat`` nearly
  cancels, while the first moment stays sizeable.
  """
  rng = np.random.default_rng(seed)
  big = rng.normal(size=(steps, n)).astype(np.float32) * 10
  small = rng.normal(size=(steps, n)).astype(np.float32) * 0.05 + 1.0
  return np.concatenate([big, small])


def max_step_over_lr(bounded, grads, lr=1e-3):
  tx = do.dualoptim_plus(lr, forget_steps=1, retain_steps=1, bounded=bounded)
  params = jnp.zeros(grads.shape[1])
  state = tx.init(params)
  worst = 0.0
  step = jax.jit(tx.update)
  for g in grads:
    updates, state = step(jnp.asarray(g), state, params)
    worst = max(worst, float(jnp.max(jnp.abs(updates))) / lr)
  return worst


def test_bounded_caps_every_step_at_lr():
  grads = hazard_gradients()
  unbounded = max_step_over_lr(False, grads)
  bounded = max_step_over_lr(True, grads)
  print(f"\nmax |update|/lr on hazard gradients: faithful {unbounded:.1f}, bounded {bounded:.4f}")
  assert unbounded > 10.0, "the test gradients no longer trigger the hazard"
  assert bounded <= 1.0 + 1e-6
