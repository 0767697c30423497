"""Orbax checkpoints: round trips across meshes (8 -> 4 -> 1 devices), resume, damage."""

import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import dualoptim_jax as do

SHAPES = {"w": (8, 1024), "b": (1024,), "s": ()}
SPECS = {"w": P("data", "model"), "b": P("model"), "s": P()}
OPTIMIZERS = {
  "dualoptim_plus": lambda: do.dualoptim_plus(1e-2, weight_decay=0.1, retain_steps=2),
  "dualoptim_plus_8bit": lambda: do.dualoptim_plus_8bit(
    1e-2, weight_decay=0.1, retain_steps=2, min_8bit_size=1024
  ),
}


def mesh_of(n):
  """A (data, model) mesh on the first n devices."""
  shape = {8: (2, 4), 4: (2, 2), 1: (1, 1)}[n]
  return jax.make_mesh(shape, ("data", "model"), devices=jax.devices()[:n])


def shardings_on(tx, mesh, params):
  param_sh = {k: NamedSharding(mesh, s) for k, s in SPECS.items()}
  return param_sh, do.state_shardings(tx, params, param_sh)


def grads_at(k):
  rng = np.random.default_rng(100 + k)
  return {n: jnp.asarray(rng.normal(size=s), jnp.float32) for n, s in SHAPES.items()}


def init_params():
  rng = np.random.default_rng(0)
  return {n: jnp.asarray(rng.normal(size=s), jnp.float32) for n, s in SHAPES.items()}


def make_step(tx, param_sh, state_sh):
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)  # the built-in schedule
    return optax.apply_updates(params, updates), state

  return jax.jit(step, out_shardings=(param_sh, state_sh))


def run(tx, params, state, mesh, start, stop):
  param_sh, state_sh = shardings_on(tx, mesh, params)
  step = make_step(tx, param_sh, state_sh)
  for k in range(start, stop):
    params, state = step(params, state, jax.device_put(grads_at(k), param_sh))
  return params, state


def sharded_start(tx, mesh):
  """Fresh params and optimizer state, sharded on ``mesh``, with their shardings."""
  param_sh, state_sh = shardings_on(tx, mesh, init_params())
  params = jax.device_put(init_params(), param_sh)
  return param_sh, state_sh, params, jax.jit(tx.init, out_shardings=state_sh)(params)


def abstract_like(tree, shardings):
  """Restore targets: ShapeDtypeStructs of ``tree`` carrying ``shardings``."""
  return jax.tree.map(
    lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh), tree, shardings
  )


def assert_trees_equal(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(la, lb, strict=True):
    assert x.dtype == y.dtype and x.shape == y.shape
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_round_trip_onto_smaller_meshes_is_bit_exact(name, tmp_path):
  tx = OPTIMIZERS[name]()
  mesh8 = mesh_of(8)
  _, _, params, state = sharded_start(tx, mesh8)
  params, state = run(tx, params, state, mesh8, 0, 3)
  do.save_checkpoint(tmp_path, 3, params, state)
  for n in (4, 1):
    if n == 4:
      assert do.checkpoint_steps(tmp_path) == [3]
    mesh = mesh_of(n)
    p_sh, s_sh = shardings_on(tx, mesh, params)
    target_p = abstract_like(params, p_sh)
    target_s = abstract_like(jax.eval_shape(tx.init, params), s_sh)
    # 8 -> 4 restores the 8-device save (step 3); 4 -> 1 the 4-device one (step 4, latest).
    p2, s2, step = do.restore_checkpoint(tmp_path, target_p, target_s)
    assert step == {4: 3, 1: 4}[n]
    assert_trees_equal((p2, s2), (params, state))
    for leaf, sh in zip(jax.tree.leaves((p2, s2)), jax.tree.leaves((p_sh, s_sh)), strict=True):
      assert len(leaf.sharding.device_set) == n
      assert leaf.sharding.is_equivalent_to(sh, leaf.ndim)
    if n == 4:  # 8 -> 4 -> 1: the next save comes from the 4-device copy.
      do.save_checkpoint(tmp_path, 4, p2, s2)
  assert do.checkpoint_steps(tmp_path) == [3, 4]


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_interrupted_and_resumed_equals_uninterrupted(name, tmp_path):
  tx = OPTIMIZERS[name]()
  mesh8 = mesh_of(8)
  full_p, full_s = run(tx, *sharded_start(tx, mesh8)[2:], mesh8, 0, 6)

  param_sh, state_sh, params0, state0 = sharded_start(tx, mesh8)
  p, s = run(tx, params0, state0, mesh8, 0, 3)
  do.save_checkpoint(tmp_path, 3, p, s)
  del p, s  # "the job dies"
  target = abstract_like(
    (jax.eval_shape(init_params), jax.eval_shape(tx.init, init_params())), (param_sh, state_sh)
  )
  p, s, step = do.restore_checkpoint(tmp_path, *target)
  p, s = run(tx, p, s, mesh8, step, 6)
  assert_trees_equal((p, s), (full_p, full_s))


def test_damaged_and_partial_checkpoints(tmp_path):
  tx = OPTIMIZERS["dualoptim_plus"]()
  params = init_params()
  state = tx.init(params)
  do.save_checkpoint(tmp_path, 1, params, state)
  with pytest.raises(do.CheckpointError, match="refusing to overwrite"):
    do.save_checkpoint(tmp_path, 1, params, state)

  # A save that fails half-way (a leaf orbax cannot write) leaves no step behind.
  with pytest.raises(Exception):  # noqa: B017 - whatever orbax raises for the bad leaf
    do.save_checkpoint(tmp_path, 9, {"w": object()}, state)
  assert do.checkpoint_steps(tmp_path) == [1]

  # Damage a later step: restoring it is a clear error, the good step still restores.
  do.save_checkpoint(tmp_path, 2, params, state)
  damaged = [f for f in pathlib.Path(tmp_path, "2", "opt_state").rglob("*") if f.is_file()]
  assert damaged
  for f in damaged:
    f.write_bytes(b"")
  with pytest.raises(do.CheckpointError, match=r"step 2 .*damaged.*other steps: \[1\]"):
    do.restore_checkpoint(tmp_path, params, state)
  p, s, step = do.restore_checkpoint(tmp_path, params, state, step=1)
  assert step == 1
  assert_trees_equal((p, s), (params, state))
  # Saving again afterwards adds a step and leaves step 1 as it was.
  do.save_checkpoint(tmp_path, 3, params, state)
  assert do.checkpoint_steps(tmp_path) == [1, 2, 3]
  with pytest.raises(FileNotFoundError):
    do.restore_checkpoint(os.path.join(tmp_path, "nothing-here"), params, state)


def test_damage_that_still_decodes_is_caught_by_checksums(tmp_path):
  """A step whose params files were replaced by other valid ones fails its checksums."""
  import shutil

  tx = OPTIMIZERS["dualoptim_plus_8bit"]()
  params = init_params()
  state = tx.init(params)
  do.save_checkpoint(tmp_path, 1, params, state)
  other = jax.tree.map(lambda x: x + jnp.asarray(1, x.dtype), params)
  do.save_checkpoint(tmp_path, 2, other, state)
  shutil.rmtree(tmp_path / "1" / "params")
  shutil.copytree(tmp_path / "2" / "params", tmp_path / "1" / "params")
  with pytest.raises(do.CheckpointError, match=r"step 1 .*checksum mismatch in \[0\]\['b'\]"):
    do.restore_checkpoint(tmp_path, params, state, step=1)
  p, s, step = do.restore_checkpoint(tmp_path, params, state)  # step 2 is intact
  assert step == 2
  assert_trees_equal((p, s), (other, state))
