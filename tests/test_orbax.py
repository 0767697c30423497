"""Whole optimizer states through orbax's own ``StandardCheckpointer`` (issue 11, item 3).

Users checkpoint their train state with orbax directly, not only through
``do.save_checkpoint``. Orbax refuses zero-size arrays, so no state may hold one:
8-bit leaves kept in float32 have ``optax.MaskedNode()`` instead of scales.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

import dualoptim_jax as do

OPTIMIZERS = {
  "dualoptim_plus": lambda: do.dualoptim_plus(1e-2, weight_decay=0.1, retain_steps=2),
  "dualoptim": lambda: do.dualoptim(1e-2, retain_steps=2),
  "dualoptim_plus_8bit": lambda: do.dualoptim_plus_8bit(1e-2, weight_decay=0.1, retain_steps=2),
  "dualoptim_8bit": lambda: do.dualoptim_8bit(1e-2, retain_steps=2),
  "adamw_8bit": lambda: do.adamw_8bit(1e-2),
  "dualoptim_plus_muon": lambda: do.dualoptim_plus_muon(1e-2, retain_steps=2),
}

# "w" is quantized by the 8-bit optimizers (4096 elements, the default
# min_8bit_size); the others keep float32 moments and store no scales.
MIXED = {"w": (64, 64), "v": (16, 8), "b": (7,), "s": ()}
SMALL = {"v": (16, 8), "b": (7,), "s": ()}


def start(shapes):
  rng = np.random.default_rng(0)
  return {k: jnp.asarray(rng.normal(size=s), jnp.float32) for k, s in shapes.items()}


def trained(tx, params, steps=3):
  """``(params, state)`` after a few steps (scheduled, then a traced objective)."""

  @jax.jit
  def step(params, state, k, objective):
    grads = jax.tree.map(lambda p: jnp.cos(p * k), params)
    updates, state = tx.update(grads, state, params, objective=objective)
    return optax.apply_updates(params, updates), state

  state = tx.init(params)
  for k in range(steps):
    params, state = step(params, state, jnp.float32(k + 1), None)
  return step(params, state, jnp.float32(steps + 1), jnp.int32(do.FORGET))


def assert_bit_exact(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    assert x.dtype == y.dtype and x.shape == y.shape
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("shapes", [MIXED, SMALL], ids=["mixed", "small_leaves"])
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_standard_checkpointer_round_trip_is_bit_exact(name, shapes, tmp_path):
  tx = OPTIMIZERS[name]()
  params, state = trained(tx, start(shapes))
  assert not any(x.size == 0 for x in jax.tree.leaves(state))
  ckpt = ocp.StandardCheckpointer()
  ckpt.save(tmp_path / "state", {"params": params, "opt_state": state})
  ckpt.wait_until_finished()
  target = {"params": params, "opt_state": jax.eval_shape(tx.init, params)}
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), target)
  restored = ckpt.restore(tmp_path / "state", target)
  ckpt.close()
  assert_bit_exact(restored, {"params": params, "opt_state": state})
  # Training resumes from the restored state exactly as from the original.
  assert_bit_exact(trained_more(tx, **restored), trained_more(tx, params, state))


def trained_more(tx, params, opt_state):
  grads = jax.tree.map(lambda p: jnp.sin(p), params)
  return jax.jit(tx.update)(grads, opt_state, params)


def test_8bit_scales_exist_only_for_quantized_leaves():
  state = do.dualoptim_plus_8bit(1e-2).init(start(MIXED))[0]
  assert state.base_mu_scales["w"].shape == (64, 1)
  for name in ("v", "b", "s"):
    assert isinstance(state.base_mu_scales[name], optax.MaskedNode)
    assert all(isinstance(s[name], optax.MaskedNode) for s in state.delta_nu_scales)
