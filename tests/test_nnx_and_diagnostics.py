"""Flax NNX integration and the conflict diagnostics."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import dualoptim_jax as do


class Tiny(nnx.Module):
  def __init__(self, rngs):
    self.lin = nnx.Linear(4, 2, rngs=rngs)

  def __call__(self, x):
    return self.lin(x)


@pytest.mark.parametrize("factory", [do.dualoptim_plus, do.dualoptim])
def test_nnx_optimizer_with_objective(factory):
  model = Tiny(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, factory(1e-2, weight_decay=0.01), wrt=nnx.Param)
  x = jnp.ones((3, 4))
  targets = {do.FORGET: jnp.zeros((3, 2)), do.RETAIN: jnp.ones((3, 2))}

  @nnx.jit
  def train_step(model, optimizer, y, objective):
    def loss_fn(model):
      return jnp.mean((model(x) - y) ** 2)

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads, objective=objective)
    return loss

  before = jax.tree.map(jnp.copy, nnx.state(model, nnx.Param))
  for k in range(6):
    obj = do.FORGET if k % 3 == 0 else do.RETAIN
    loss = train_step(model, optimizer, targets[obj], jnp.int32(obj))
    assert np.isfinite(float(loss))
  after = nnx.state(model, nnx.Param)
  assert not np.allclose(before["lin"]["kernel"][...], after["lin"]["kernel"][...])
  inner = optimizer.opt_state[0]
  np.testing.assert_array_equal(inner.objective_counts[...], [2, 4])


def test_conflict_metrics_opposing_and_agreeing():
  tx = do.dualoptim_plus(1e-3)
  p = {"a": jnp.ones(3), "b": jnp.ones((2, 2))}
  g = {"a": jnp.array([1.0, 2.0, 3.0]), "b": jnp.array([[1.0, -1.0], [0.5, 2.0]])}
  neg = jax.tree.map(lambda x: -x, g)
  s = tx.init(p)
  _, s_f = tx.update(g, s, p, objective=do.FORGET)
  _, s_opp = tx.update(neg, s_f, p, objective=do.RETAIN)
  m = do.conflict_metrics(s_opp)
  assert float(m["delta_cosine"]) < -0.99
  assert m["base_share"].shape == (2,)
  assert np.all((np.asarray(m["base_share"]) >= 0) & (np.asarray(m["base_share"]) <= 1))

  per_leaf = do.conflict_metrics(s_opp, per_leaf=True)
  assert set(per_leaf["delta_cosine"]) == {"a", "b"}
  assert per_leaf["base_share"]["b"].shape == (2,)

  # Jittable, and found through wrappers (inject_hyperparams).
  injected = optax.inject_hyperparams(
    do.dualoptim_plus, static_args=("forget_steps", "retain_steps")
  )
  tx2 = injected(learning_rate=1e-3)
  s2 = tx2.init(p)
  _, s2 = tx2.update(g, s2, p, objective=0)
  _, s2 = tx2.update(g, s2, p, objective=1)
  m2 = jax.jit(do.conflict_metrics)(s2)
  assert float(m2["delta_cosine"]) > -1.0


def test_conflict_metrics_needs_exactly_one_state():
  with pytest.raises(ValueError, match="found 0"):
    do.conflict_metrics(optax.adam(1e-3).init({"w": jnp.ones(2)}))
