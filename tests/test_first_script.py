"""The short script a JAX user writes first, for every public alias (issue 11).

Each test is one habit from optax's, flax's and orbax's own documentation:
clipping in a chain, ``MultiSteps``, ``masked``, schedules as learning rates,
``inject_hyperparams``, ``nnx.Optimizer`` with ``objective=`` passed through
``optimizer.update``, orbax's ``StandardCheckpointer`` and bf16 parameters. A
user's script runs with JAX's default (standard) dtype promotion, so these
tests do too; the library's own strictness is checked in the other files.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import nnx

import dualoptim_jax as do

ALIASES = {
  "dualoptim_plus": do.dualoptim_plus,
  "dualoptim": do.dualoptim,
  "dualoptim_plus_8bit": do.dualoptim_plus_8bit,
  "dualoptim_8bit": do.dualoptim_8bit,
  "adamw_8bit": do.adamw_8bit,
  "dualoptim_plus_muon": do.dualoptim_plus_muon,
}


@pytest.fixture(autouse=True)
def users_promotion():
  with jax.numpy_dtype_promotion("standard"):
    yield


class Model(nnx.Module):
  """Embedding (64 x 64 = 4096 entries: int8 in the 8-bit aliases) and a linear head."""

  def __init__(self, rngs: nnx.Rngs, dtype=jnp.float32):
    self.embed = nnx.Embed(64, 64, param_dtype=dtype, rngs=rngs)
    self.head = nnx.Linear(64, 8, param_dtype=dtype, rngs=rngs)

  def __call__(self, ids):
    return self.head(self.embed(ids))


IDS = jnp.arange(32) % 64
LABELS = jnp.arange(32) % 8


def loss_fn(model, objective):
  """Gradient ascent on the forget objective, descent on the retain one."""
  logits = model(IDS).astype(jnp.float32)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, LABELS).mean()
  return jnp.where(objective == do.FORGET, -ce, ce)


def dict_params(dtype=jnp.float32):
  return nnx.to_pure_dict(nnx.state(Model(nnx.Rngs(0), dtype), nnx.Param))


def dict_loss(params, objective):
  model = Model(nnx.Rngs(0), jax.tree.leaves(params)[0].dtype)
  nnx.update(model, params)
  return loss_fn(model, objective)


def train(tx, params, steps, objective=lambda k: do.scheduled_objective(k, (1, 1))):
  """A jitted optax loop on a params dict; returns params, state and the last updates."""

  @jax.jit
  def step(params, state, objective):
    grads = jax.grad(dict_loss)(params, objective)
    updates, state = tx.update(grads, state, params, objective=objective)
    return optax.apply_updates(params, updates), state, updates

  state, updates = tx.init(params), None
  for k in range(steps):
    params, state, updates = step(params, state, objective(k))
  return params, state, updates


def assert_finite(tree):
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(tree))


def same_types(a, b):
  return jax.tree.map(lambda x: (x.shape, x.dtype), a) == jax.tree.map(
    lambda x: (x.shape, x.dtype), b
  )


@pytest.mark.parametrize("name", ALIASES)
def test_chain_with_gradient_clipping(name):
  tx = optax.chain(optax.clip_by_global_norm(1.0), ALIASES[name](1e-2))
  params, state, _ = train(tx, dict_params(), 4)
  assert_finite((params, state))
  assert same_types(state, tx.init(params))


@pytest.mark.parametrize("name", ALIASES)
def test_multisteps_accumulates_then_steps(name):
  tx = optax.MultiSteps(ALIASES[name](1e-2), every_k_schedule=2)
  params = dict_params()
  # Accumulate one objective's gradients (a forget and a retain gradient of
  # this loss would cancel exactly); the inner step takes the emitting call's objective.
  retain = lambda k: jnp.int32(do.RETAIN)  # noqa: E731
  _, state, first = train(tx, params, 1, retain)
  assert all(bool(jnp.all(u == 0)) for u in jax.tree.leaves(first))
  _, state, second = train(tx, params, 2, retain)
  assert any(bool(jnp.any(u != 0)) for u in jax.tree.leaves(second))
  assert same_types(state, tx.init(params))


@pytest.mark.parametrize("name", ALIASES)
def test_masked_leaves_pass_through(name):
  """``optax.masked``: the embedding is optimised, the head's gradients pass unchanged."""
  params = dict_params()
  mask = jax.tree.map(lambda _: False, params) | {"embed": {"embedding": True}}
  tx = optax.masked(ALIASES[name](1e-2), mask)
  state = tx.init(params)
  grads = jax.grad(dict_loss)(params, jnp.int32(do.RETAIN))
  updates, state = jax.jit(tx.update)(grads, state, params)
  np.testing.assert_array_equal(updates["head"]["kernel"], grads["head"]["kernel"])
  # A first step is Adam's, |u| <= 1 (adamw_8bit adds its 1e-4 weight decay).
  assert float(jnp.max(jnp.abs(updates["embed"]["embedding"]))) <= 1e-2 * 1.001
  assert_finite(state)


@pytest.mark.parametrize("name", ALIASES)
def test_schedules_as_learning_rates(name):
  """Warm-up from 0: the first step does not move; later steps do."""
  lr = optax.warmup_cosine_decay_schedule(0.0, 1e-2, warmup_steps=2, decay_steps=10)
  kwargs = (
    {} if name == "adamw_8bit" else {"forget_learning_rate": optax.linear_schedule(0, 2e-2, 2)}
  )
  tx = ALIASES[name](lr, **kwargs)
  params = dict_params()
  _, _, first = train(tx, params, 1)
  assert all(bool(jnp.all(u == 0)) for u in jax.tree.leaves(first))
  _, _, third = train(tx, params, 3)
  assert any(bool(jnp.any(u != 0)) for u in jax.tree.leaves(third))


@pytest.mark.parametrize("name", ALIASES)
def test_inject_hyperparams_in_a_chain(name):
  lr = optax.linear_schedule(1e-2, 1e-3, 10)
  plain = optax.chain(optax.clip_by_global_norm(1.0), ALIASES[name](lr))
  injected = optax.chain(
    optax.clip_by_global_norm(1.0), optax.inject_hyperparams(ALIASES[name])(learning_rate=lr)
  )
  p_plain, _, _ = train(plain, dict_params(), 4)
  p_inj, s_inj, _ = train(injected, dict_params(), 4)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), p_inj, p_plain)
  assert float(s_inj[1].hyperparams["learning_rate"]) == pytest.approx(lr(3))


def nnx_train_step(model, optimizer, objective):
  loss, grads = nnx.value_and_grad(loss_fn)(model, objective)
  optimizer.update(model, grads, objective=objective)
  return loss


def moment_counts(optimizer):
  """The per-objective step counts in an nnx.Optimizer's state."""
  pure = nnx.to_pure_dict(nnx.state(optimizer, nnx.OptState))
  paths = jax.tree_util.tree_flatten_with_path(pure)[0]
  found = [np.asarray(x) for k, x in paths if "objective_counts" in jax.tree_util.keystr(k)]
  return found[0].tolist()


@pytest.mark.parametrize("name", ALIASES)
def test_nnx_optimizer_passes_the_objective(name):
  model = Model(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, ALIASES[name](1e-2), wrt=nnx.Param)
  traced = nnx.jit(nnx_train_step)
  static = nnx.jit(nnx_train_step, static_argnums=2)
  traced(model, optimizer, jnp.int32(do.FORGET))
  static(model, optimizer, do.RETAIN)
  static(model, optimizer, do.RETAIN)
  # adamw_8bit has a single objective and ignores objective=.
  assert moment_counts(optimizer) == ([3] if name == "adamw_8bit" else [1, 2])
  assert int(optimizer.step[...]) == 3
  assert_finite(nnx.state(model))


@pytest.mark.parametrize("name", ALIASES)
def test_orbax_standard_checkpointer_round_trip(name, tmp_path):
  """Flax's recipe: save ``nnx.state``; restore into the state of ``nnx.eval_shape``."""
  model = Model(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, ALIASES[name](1e-2), wrt=nnx.Param)
  step = nnx.jit(nnx_train_step)
  for k in range(3):
    step(model, optimizer, do.scheduled_objective(k, (1, 1)))
  ckpt = ocp.StandardCheckpointer()
  ckpt.save(tmp_path / "ckpt", {"model": nnx.state(model), "opt": nnx.state(optimizer)})
  ckpt.wait_until_finished()

  def fresh():
    m = Model(nnx.Rngs(1))
    return m, nnx.Optimizer(m, ALIASES[name](1e-2), wrt=nnx.Param)

  abstract_model, abstract_opt = nnx.eval_shape(fresh)
  target = {"model": nnx.state(abstract_model), "opt": nnx.state(abstract_opt)}
  restored = ckpt.restore(tmp_path / "ckpt", target)
  ckpt.close()
  model2, optimizer2 = fresh()
  nnx.update(model2, restored["model"])
  nnx.update(optimizer2, restored["opt"])
  for a, b in zip(
    jax.tree.leaves(nnx.state(optimizer2)), jax.tree.leaves(nnx.state(optimizer)), strict=True
  ):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # Both continue identically.
  objective = do.scheduled_objective(3, (1, 1))
  assert float(step(model2, optimizer2, objective)) == float(step(model, optimizer, objective))
  jax.tree.map(np.testing.assert_array_equal, nnx.state(model2), nnx.state(model))


@pytest.mark.parametrize("name", ALIASES)
def test_bf16_params(name):
  """bf16 parameters get bf16 updates; the state keeps its dtypes and stays finite."""
  params = dict_params(jnp.bfloat16)
  tx = ALIASES[name](1e-2)
  new_params, state, updates = train(tx, params, 4)
  assert all(u.dtype == jnp.bfloat16 for u in jax.tree.leaves(updates))
  assert all(p.dtype == jnp.bfloat16 for p in jax.tree.leaves(new_params))
  assert same_types(state, tx.init(params))
  assert_finite((new_params, state))
  # And through nnx.Optimizer with optax.inject_hyperparams, which stores the
  # hyperparameters in the params' dtype unless told otherwise: in bfloat16,
  # adamw_8bit's b2=0.999 rounds to 1.0, and the error says what to do.
  model = Model(nnx.Rngs(0), jnp.bfloat16)
  if name == "adamw_8bit":
    with pytest.raises(ValueError, match="hyperparam_dtype=jnp.float32"):
      nnx.Optimizer(model, optax.inject_hyperparams(ALIASES[name])(1e-2), wrt=nnx.Param)
  injected = optax.inject_hyperparams(ALIASES[name], hyperparam_dtype=jnp.float32)
  optimizer = nnx.Optimizer(model, injected(learning_rate=1e-2), wrt=nnx.Param)
  step = nnx.jit(nnx_train_step)
  for k in range(3):
    step(model, optimizer, do.scheduled_objective(k, (1, 1)))
  assert all(p.dtype == jnp.bfloat16 for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
  assert_finite(nnx.state(optimizer))
