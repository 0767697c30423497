"""``optax.inject_hyperparams`` on every alias with its default arguments (issue 11, item 1)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import dualoptim_jax as do

ALIASES = {
  "dualoptim_plus": do.dualoptim_plus,
  "dualoptim": do.dualoptim,
  "dualoptim_plus_8bit": do.dualoptim_plus_8bit,
  "dualoptim_8bit": do.dualoptim_8bit,
  "adamw_8bit": do.adamw_8bit,
  "dualoptim_plus_muon": do.dualoptim_plus_muon,
}


def params():
  # "w" is big enough (4096 elements) for the 8-bit aliases' default min_8bit_size.
  return {"w": jnp.linspace(-1.0, 1.0, 4096).reshape(64, 64), "b": jnp.linspace(0.5, 1.0, 3)}


def loss(p):
  rest = jnp.sum((p["b"] - 2.0) ** 2) if "b" in p else 0.0
  return jnp.sum(jnp.sin(3.0 * p["w"]) * p["w"]) + rest


def run(tx, objectives, p=None, state=None):
  """Jitted steps; ``objectives`` holds None (the schedule) or an int32 array per step."""
  p = params() if p is None else p
  state = tx.init(p) if state is None else state

  @jax.jit
  def step(p, state, objective):
    updates, state = tx.update(jax.grad(loss)(p), state, p, objective=objective)
    return optax.apply_updates(p, updates), state

  @jax.jit
  def scheduled(p, state):
    updates, state = tx.update(jax.grad(loss)(p), state, p)
    return optax.apply_updates(p, updates), state

  for o in objectives:
    p, state = scheduled(p, state) if o is None else step(p, state, o)
  return p, state


# Three scheduled steps, then an explicit traced objective (RETAIN, then FORGET).
OBJECTIVES = [None, None, None, jnp.int32(do.RETAIN), jnp.int32(do.FORGET)]


def assert_close(a, b, atol=2e-7):
  # Injected hyperparameters are runtime values where the plain alias has
  # constants that XLA folds (1 - b1, Muon's RMS scale): equal up to an ulp.
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=atol), a, b)


@pytest.mark.parametrize("name", ALIASES)
def test_defaults_equal_the_plain_alias(name):
  factory = ALIASES[name]
  p_plain, _ = run(factory(1e-3), OBJECTIVES)
  p_inj, s_inj = run(optax.inject_hyperparams(factory)(learning_rate=1e-3), OBJECTIVES)
  assert_close(p_plain, p_inj)
  assert float(s_inj.hyperparams["learning_rate"]) == pytest.approx(1e-3)


@pytest.mark.parametrize("name", ALIASES)
def test_learning_rate_schedule_equals_the_plain_alias(name):
  factory = ALIASES[name]
  sched = optax.linear_schedule(1e-2, 1e-3, 4)
  p_plain, _ = run(factory(sched), OBJECTIVES)
  with jax.numpy_dtype_promotion("standard"):  # optax's schedule maths is not strict-clean
    p_inj, _ = run(optax.inject_hyperparams(factory)(learning_rate=sched), OBJECTIVES)
  assert_close(p_plain, p_inj)


@pytest.mark.parametrize("name", ALIASES)
def test_changing_the_injected_learning_rate_changes_the_step(name):
  tx = optax.inject_hyperparams(ALIASES[name])(learning_rate=1e-3)
  p = params()
  _, state = run(tx, OBJECTIVES[:2], p)
  step = jax.jit(tx.update)
  g = jax.grad(loss)(p)
  u_before, _ = step(g, state, p)
  state.hyperparams["learning_rate"] = 5e-4
  u_after, new_state = step(g, state, p)
  assert float(new_state.hyperparams["learning_rate"]) == pytest.approx(5e-4)
  # Every update is -lr * (u + wd * p): halving lr halves the step.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, 0.5 * b, rtol=1e-6), u_after, u_before)


def test_run_lengths_are_injectable_hyperparameters():
  tx = optax.inject_hyperparams(do.dualoptim_plus)(learning_rate=1e-3, retain_steps=3)
  state = tx.init(params())
  assert state.hyperparams["retain_steps"].dtype == jnp.int32
  _, state = run(tx, [None] * 4, state=state)
  np.testing.assert_array_equal(state.inner_state[0].objective_counts, [1, 3])
  # A new run length takes effect at the next step, in the same compiled program.
  state.hyperparams["retain_steps"] = jnp.int32(1)
  _, state = run(tx, [None] * 4, state=state)
  np.testing.assert_array_equal(state.inner_state[0].objective_counts, [3, 5])


def test_k_objectives_under_inject_hyperparams():
  kw = dict(run_lengths=(1, 2, 1), objective_learning_rates=(1e-3, 2e-3, 3e-3))
  p_plain, s_plain = run(do.dualoptim_plus(1e-3, **kw), [None] * 5 + [jnp.int32(2)])
  tx = optax.inject_hyperparams(do.dualoptim_plus)(learning_rate=1e-3, **kw)
  p_inj, s_inj = run(tx, [None] * 5 + [jnp.int32(2)])
  jax.tree.map(np.testing.assert_array_equal, p_plain, p_inj)
  np.testing.assert_array_equal(s_inj.inner_state[0].objective_counts, [2, 2, 2])


RAW = {
  "scale_by_dualoptim_plus": do.scale_by_dualoptim_plus,
  "scale_by_dualoptim": do.scale_by_dualoptim,
  "scale_by_dualoptim_plus_8bit": do.scale_by_dualoptim_plus_8bit,
  "scale_by_dualoptim_8bit": do.scale_by_dualoptim_8bit,
  "scale_by_dualoptim_plus_muon": do.scale_by_dualoptim_plus_muon,
}


@pytest.mark.parametrize("name", RAW)
def test_raw_transformations_take_their_defaults(name):
  # Well-conditioned: Newton-Schulz would amplify an ulp of difference (1 - beta
  # folded in double vs computed in float32) along the near-null directions of
  # the smooth matrix above, and without a learning rate the steps are O(1).
  p = {"w": jax.random.normal(jax.random.key(0), (64, 64)) / 8}
  plain, _ = run(RAW[name](), OBJECTIVES, p)
  injected, _ = run(optax.inject_hyperparams(RAW[name])(), OBJECTIVES, p)
  # Raw Muon steps are O(1) orthogonalised updates: Newton-Schulz grows the
  # ulps to ~1e-6 over five steps (its updates match optax's own to 1e-5).
  assert_close(plain, injected, atol=1e-5 if "muon" in name else 2e-7)


@pytest.mark.parametrize(
  "factory, kwargs, arg",
  [
    (do.dualoptim_plus_8bit, dict(learning_rate=1e-3, block_size=128), "block_size"),
    (do.dualoptim_8bit, dict(learning_rate=1e-3, min_8bit_size=16), "min_8bit_size"),
    (do.adamw_8bit, dict(learning_rate=1e-3, block_size=64), "block_size"),
    (do.dualoptim_plus_muon, dict(learning_rate=1e-3, ns_steps=3), "ns_steps"),
    (do.scale_by_dualoptim_plus, dict(num_objectives=2), "num_objectives"),
  ],
)
def test_program_shaping_arguments_name_static_args(factory, kwargs, arg):
  with pytest.raises(TypeError, match=rf"{arg}.*static_args=\('{arg}',\)"):
    optax.inject_hyperparams(factory)(**kwargs).init(params())
  # Listed in static_args they work, and give the plain result.
  tx = optax.inject_hyperparams(factory, static_args=(arg,))(**kwargs)
  plain = factory(**kwargs)
  p = params()
  u1, _ = tx.update(jax.grad(loss)(p), tx.init(p), p)
  u2, _ = plain.update(jax.grad(loss)(p), plain.init(p), p)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8), u1, u2)


@pytest.mark.parametrize("factory", [do.dualoptim_plus, do.dualoptim, do.dualoptim_plus_muon])
def test_dtype_types_are_callables_to_inject_hyperparams(factory):
  """``jnp.bfloat16`` is callable, so inject_hyperparams takes it for a schedule: say so."""
  with pytest.raises(TypeError, match=r"static_args=\('mu_dtype',\)"):
    optax.inject_hyperparams(factory)(1e-3, mu_dtype=jnp.bfloat16).init(params())
  for tx in (
    optax.inject_hyperparams(factory, static_args=("mu_dtype",))(1e-3, mu_dtype=jnp.bfloat16),
    optax.inject_hyperparams(factory)(1e-3, mu_dtype="bfloat16"),
  ):
    state = tx.init(params())
    dtypes = {x.dtype for x in jax.tree.leaves(state.inner_state) if x.shape == (64, 64)}
    assert jnp.dtype(jnp.bfloat16) in dtypes
