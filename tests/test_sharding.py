"""Optimizer state takes its parameter's sharding (8 simulated CPU devices, see conftest.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import dualoptim_jax as do

SHAPES = {"w": (16, 2048), "b": (2048,), "v": (16, 64), "s": ()}
SPECS = {"w": P("data", "model"), "b": P("model"), "v": P("data", None), "s": P()}
OPTIMIZERS = {
  "dualoptim_plus": lambda: do.dualoptim_plus(1e-3, weight_decay=0.1),
  "dualoptim": lambda: do.dualoptim(1e-3, weight_decay=0.1),
  # Per-shard last-axis length 2048 / 4 = 512: block_size 256 divides it.
  "dualoptim_plus_8bit": lambda: do.dualoptim_plus_8bit(1e-3, min_8bit_size=1024),
  # MaskedNode where a partition holds no state ("b" and "s" are not matrices).
  "dualoptim_plus_muon": lambda: do.dualoptim_plus_muon(1e-3, weight_decay=0.1),
}


def make_mesh(axis_type):
  return jax.make_mesh((2, 4), ("data", "model"), axis_types=(axis_type, axis_type))


def host_params():
  rng = np.random.default_rng(0)
  return {k: jnp.asarray(rng.normal(size=s), jnp.float32) for k, s in SHAPES.items()}


def host_grads(k):
  rng = np.random.default_rng(k + 1)
  return {n: jnp.asarray(rng.normal(size=s), jnp.float32) for n, s in SHAPES.items()}


def assert_state_sharded_like_params(tx, state, params, mesh):
  specs = do.state_partition_specs(tx, params, SPECS, mesh=mesh)
  leaves = jax.tree.leaves(state)
  spec_leaves = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, P))
  assert len(leaves) == len(spec_leaves)
  for leaf, spec in zip(leaves, spec_leaves, strict=True):
    want = NamedSharding(mesh, spec)
    assert leaf.sharding.is_equivalent_to(want, leaf.ndim), (leaf.shape, leaf.sharding, spec)


def test_partition_specs_follow_params_abstract():
  params = {k: jax.ShapeDtypeStruct(s, jnp.float32) for k, s in SHAPES.items()}
  for name, make in OPTIMIZERS.items():
    tx = make()
    specs = do.state_partition_specs(tx, params, SPECS)
    state = jax.eval_shape(tx.init, params)
    for leaf, spec in zip(
      jax.tree.leaves(state),
      jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, P)),
      strict=True,
    ):
      assert isinstance(spec, P), name
      if leaf.shape[:-1] == (16,) and leaf.ndim == 2:
        assert spec[0] == "data", (name, leaf.shape, spec)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_explicit_mesh_state_types_follow_params(name):
  tx = OPTIMIZERS[name]()
  mesh = make_mesh(AxisType.Explicit)
  with jax.set_mesh(mesh):
    params = {k: jax.device_put(v, SPECS[k]) for k, v in host_params().items()}
    grads = {k: jax.device_put(v, SPECS[k]) for k, v in host_grads(0).items()}
    state = tx.init(params)
    types = jax.tree.map(jax.typeof, state)
    assert_state_sharded_like_params(tx, state, params, mesh)

    # Eager, static objective.
    _, eager = tx.update(grads, state, params, objective=do.FORGET)
    assert jax.tree.map(jax.typeof, eager) == types
    # Jitted, static objective.
    step = jax.jit(lambda g, s, p: tx.update(g, s, p, objective=do.RETAIN))
    _, jitted = step(grads, state, params)
    assert jax.tree.map(jax.typeof, jitted) == types
    # Jitted, traced objective (and the built-in schedule).
    traced = jax.jit(lambda g, s, p, o: tx.update(g, s, p, objective=o))
    updates, state2 = traced(grads, state, params, jnp.int32(do.RETAIN))
    assert jax.tree.map(jax.typeof, state2) == types
    _, state3 = jax.jit(tx.update)(grads, state2, params)
    assert jax.tree.map(jax.typeof, state3) == types
    for leaf, p in zip(jax.tree.leaves(updates), jax.tree.leaves(params), strict=True):
      assert jax.typeof(leaf) == jax.typeof(p)
    assert_state_sharded_like_params(tx, state3, params, mesh)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_named_sharding_out_shardings(name):
  """Classic NamedSharding + jit(out_shardings=) gives the same values as one device."""
  tx = OPTIMIZERS[name]()
  mesh = make_mesh(AxisType.Auto)
  param_shardings = {k: NamedSharding(mesh, s) for k, s in SPECS.items()}
  params = jax.device_put(host_params(), param_shardings)
  state_shardings = do.state_shardings(tx, params, param_shardings)
  state = jax.jit(tx.init, out_shardings=state_shardings)(params)
  assert_state_sharded_like_params(tx, state, params, mesh)

  def step(params, state, grads, objective):
    updates, state = tx.update(grads, state, params, objective=objective)
    return optax.apply_updates(params, updates), state

  sharded_step = jax.jit(
    step, out_shardings=(param_shardings, state_shardings), donate_argnums=(0, 1)
  )
  single_step = jax.jit(step)
  ref_params, ref_state = host_params(), tx.init(host_params())
  for k in range(4):
    grads = jax.device_put(host_grads(k), param_shardings)
    objective = do.scheduled_objective(jnp.int32(k), (1, 1))
    params, state = sharded_step(params, state, grads, objective)
    ref_params, ref_state = single_step(ref_params, ref_state, host_grads(k), objective)
  assert_state_sharded_like_params(tx, state, params, mesh)
  for a, b in zip(
    jax.tree.leaves((params, state)), jax.tree.leaves((ref_params, ref_state)), strict=True
  ):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-6, atol=1e-7)


def test_int8_scales_last_axis_rule():
  mesh = make_mesh(AxisType.Auto)
  params = {k: jax.ShapeDtypeStruct(s, jnp.float32) for k, s in SHAPES.items()}
  # 2048 / 4 devices = 512 per shard: 1024-element blocks would straddle shards.
  tx = do.dualoptim_plus_8bit(1e-3, min_8bit_size=1024, block_size=1024)
  with pytest.raises(ValueError, match="block_size must divide the per-shard length 512"):
    do.state_partition_specs(tx, params, SPECS, mesh=mesh, block_size=1024)
  # Sharding only the leading axis puts no constraint on the block size.
  lead = {"w": P("data", None), "b": P(), "v": P("data", None), "s": P()}
  specs = do.state_partition_specs(tx, params, lead, mesh=mesh, block_size=1024)
  scales = specs[0].base_mu_scales
  assert scales["w"] == P("data", None) and scales["b"] == P()
  # A block size that divides the per-shard length is accepted, scales sharded on "model".
  tx = do.dualoptim_plus_8bit(1e-3, min_8bit_size=1024, block_size=256)
  specs = do.state_partition_specs(tx, params, SPECS, mesh=mesh, block_size=256)
  assert specs[0].base_mu_scales["w"] == P("data", "model")
  assert specs[0].delta_nu_scales[1]["b"] == P("model")
