"""The optax battery (optax/_src/alias_test.py) for DualOptim+ and DualOptim."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from loops import run_scan

import dualoptim_jax as do

OPTIMIZERS = {
  "dualoptim_plus": lambda lr=1e-2, **kw: do.dualoptim_plus(lr, **kw),
  "dualoptim_plus_bounded": lambda lr=1e-2, **kw: do.dualoptim_plus(lr, bounded=True, **kw),
  "dualoptim": lambda lr=1e-2, **kw: do.dualoptim(lr, **kw),
}


def parabola(p):
  return jnp.sum(jnp.square(p["x"] - jnp.array([1.0, -2.0, 3.0])))


def rosenbrock(p):
  x, y = p["xy"][0], p["xy"][1]
  return jnp.square(1.0 - x) + 100.0 * jnp.square(y - x * x)


def run(tx, loss, params, steps, objective=None):
  """Python loop of jitted steps; ``objective(k)`` gives a static int or an array."""
  state = tx.init(params)

  @functools.partial(jax.jit, static_argnums=2)
  def step(params, state, static_obj, traced_obj):
    grads = jax.grad(loss)(params)
    obj = traced_obj if static_obj is None else static_obj
    updates, state = tx.update(grads, state, params, objective=obj)
    return optax.apply_updates(params, updates), state

  for k in range(steps):
    obj = None if objective is None else objective(k)
    static = obj if isinstance(obj, int) else None
    params, state = step(params, state, static, None if static is not None else obj)
  return params, state


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_converges_on_parabola(name):
  tx = OPTIMIZERS[name](5e-2, forget_steps=1, retain_steps=3)
  params = run_scan(tx, parabola, {"x": jnp.zeros(3)}, 400)
  np.testing.assert_allclose(params["x"], [1.0, -2.0, 3.0], atol=5e-2)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_converges_on_rosenbrock(name):
  # Both objectives see the same loss: alternating must not stop convergence. A
  # decaying lr (as in unlearning recipes) damps the oscillation across the valley;
  # DualOptim+ is slower than Adam here (0.977, 0.955 after 4000 steps).
  steps = 4000
  tx = OPTIMIZERS[name](
    optax.cosine_decay_schedule(2e-2, steps),
    forget_learning_rate=optax.cosine_decay_schedule(1e-2, steps),
  )
  params = run_scan(tx, rosenbrock, {"xy": jnp.array([-0.5, 0.5])}, steps)
  np.testing.assert_allclose(params["xy"], [1.0, 1.0], atol=5e-2)


@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize("traced", [False, True])
def test_no_recompilation_on_second_step(name, traced):
  tx = OPTIMIZERS[name]()
  params = {"x": jnp.ones(3)}
  traces = []

  @jax.jit
  def step(params, state, obj):
    traces.append(1)
    grads = jax.grad(parabola)(params)
    updates, state = tx.update(grads, state, params, objective=obj)
    return optax.apply_updates(params, updates), state

  state = tx.init(params)
  objectives = [jnp.int32(o) for o in (0, 1, 1, 0)] if traced else [None] * 4
  for obj in objectives:
    params, state = step(params, state, obj)
  assert len(traces) == 1


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_static_objective_compiles_once_per_objective(name):
  tx = OPTIMIZERS[name]()
  params = {"x": jnp.ones(3)}
  traces = []

  @functools.partial(jax.jit, static_argnums=2)
  def step(params, state, obj):
    traces.append(obj)
    updates, state = tx.update(jax.grad(parabola)(params), state, params, objective=obj)
    return optax.apply_updates(params, updates), state

  state = tx.init(params)
  for obj in (do.FORGET, do.RETAIN, do.RETAIN, do.FORGET, do.RETAIN):
    params, state = step(params, state, obj)
  assert traces == [do.FORGET, do.RETAIN]


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_static_and_traced_objectives_agree(name):
  tx = OPTIMIZERS[name](1e-2, forget_learning_rate=3e-2, weight_decay=0.1)
  params = {"x": jnp.array([0.3, -0.2, 0.5])}
  objectives = [0, 1, 1, 0, 1]
  p_static, _ = run(tx, parabola, params, 5, objective=lambda k: objectives[int(k)])
  p_traced, _ = run(tx, parabola, params, 5, objective=lambda k: jnp.int32(objectives[k]))
  np.testing.assert_allclose(p_static["x"], p_traced["x"], rtol=1e-6)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_traced_objective_step_is_differentiable(name):
  """Reverse mode through a traced-objective step (meta-gradients): same as the static one."""
  tx = OPTIMIZERS[name](1e-2, weight_decay=0.1)
  params = {"x": jnp.array([0.3, -0.2, 0.5])}
  state = tx.init(params)
  for k in range(3):  # non-zero moments, both objectives seen
    updates, state = tx.update(jax.grad(parabola)(params), state, params, objective=k % 2)
    params = optax.apply_updates(params, updates)

  def loss_after_step(grads, objective):
    updates, _ = tx.update(grads, state, params, objective=objective)
    return parabola(optax.apply_updates(params, updates))

  grads = jax.grad(parabola)(params)
  for obj in (do.FORGET, do.RETAIN):
    static = jax.grad(loss_after_step)(grads, obj)
    traced = jax.jit(jax.grad(loss_after_step))(grads, jnp.int32(obj))
    assert np.all(np.isfinite(traced["x"]))
    np.testing.assert_allclose(traced["x"], static["x"], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", ["dualoptim_plus", "dualoptim"])
def test_inject_hyperparams_gives_identical_results(name):
  factory = {"dualoptim_plus": do.dualoptim_plus, "dualoptim": do.dualoptim}[name]
  kw = dict(learning_rate=1e-2, forget_learning_rate=2e-2, b1=0.8, b2=0.9, weight_decay=0.05)
  plain = factory(**kw)
  injected = optax.inject_hyperparams(factory, static_args=("forget_steps", "retain_steps"))(**kw)
  p1, _ = run(plain, parabola, {"x": jnp.zeros(3)}, 7)
  p2, s2 = run(injected, parabola, {"x": jnp.zeros(3)}, 7)
  np.testing.assert_array_equal(p1["x"], p2["x"])
  assert set(s2.hyperparams) >= {"learning_rate", "b1", "weight_decay"}


def test_inject_hyperparams_schedule_for_learning_rate():
  sched = optax.linear_schedule(1e-2, 0.0, 10)
  p1, _ = run(do.dualoptim_plus(sched), parabola, {"x": jnp.zeros(3)}, 6)
  injected = optax.inject_hyperparams(
    do.dualoptim_plus, static_args=("forget_steps", "retain_steps")
  )(learning_rate=sched)
  with jax.numpy_dtype_promotion("standard"):  # optax's own schedule maths is not strict-clean
    p2, _ = run(injected, parabola, {"x": jnp.zeros(3)}, 6)
  np.testing.assert_allclose(p1["x"], p2["x"], rtol=1e-6)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_chain_with_clipping_and_apply_if_finite(name):
  tx = optax.chain(optax.clip_by_global_norm(1.0), OPTIMIZERS[name](5e-2))
  tx = optax.apply_if_finite(tx, max_consecutive_errors=3)
  params, state = run(tx, parabola, {"x": jnp.zeros(3)}, 600, objective=lambda k: k % 2)
  np.testing.assert_allclose(params["x"], [1.0, -2.0, 3.0], atol=5e-2)
  # A non-finite gradient is skipped and leaves the inner state alone.
  bad = {"x": jnp.array([jnp.nan, 0.0, 0.0])}
  updates, state2 = tx.update(bad, state, params, objective=0)
  assert int(state2.notfinite_count) == 1
  np.testing.assert_array_equal(updates["x"], 0.0)
  jax.tree.map(np.testing.assert_array_equal, state2.inner_state, state.inner_state)


@pytest.fixture
def standard_promotion():
  """optax.MultiSteps divides float sums by int counts, which strict promotion rejects."""
  with jax.numpy_dtype_promotion("standard"):
    yield


@pytest.mark.usefixtures("standard_promotion")
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_multisteps_accumulates_then_steps(name):
  every = 3
  tx = optax.MultiSteps(OPTIMIZERS[name](1e-2), every_k_schedule=every)
  params = {"x": jnp.array([0.5, 0.1, -0.3])}
  state = tx.init(params)
  grads = [{"x": jnp.array([0.1, 0.2, 0.3]) * (i + 1)} for i in range(every)]
  for i, g in enumerate(grads):
    updates, state = jax.jit(tx.update)(g, state, params)
    if i < every - 1:
      np.testing.assert_array_equal(updates["x"], 0.0)
  inner = OPTIMIZERS[name](1e-2)
  mean = jax.tree.map(lambda *g: sum(g) / every, *grads)
  expected, _ = inner.update(mean, inner.init(params), params)
  np.testing.assert_allclose(updates["x"], expected["x"], rtol=1e-5)


@pytest.mark.usefixtures("standard_promotion")
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_multisteps_with_static_and_traced_objective(name):
  tx = optax.MultiSteps(OPTIMIZERS[name](1e-2), every_k_schedule=2)
  params = {"x": jnp.ones(3)}
  state = tx.init(params)
  g = {"x": jnp.ones(3)}
  for obj in (0, 0, jnp.int32(1), jnp.int32(1)):
    updates, state = tx.update(g, state, params, objective=obj)
  assert np.all(np.isfinite(updates["x"]))
  np.testing.assert_array_equal(optax.tree.get(state, "objective_counts"), [1, 1])


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_masked(name):
  mask = {"a": True, "b": False}
  tx = optax.masked(OPTIMIZERS[name](1e-1), mask)
  params = {"a": jnp.ones(3), "b": jnp.ones(2)}
  grads = {"a": jnp.ones(3), "b": jnp.full(2, 7.0)}
  state = tx.init(params)
  updates, state = tx.update(grads, state, params, objective=do.RETAIN)
  np.testing.assert_allclose(updates["a"], -0.1, rtol=1e-5)
  np.testing.assert_array_equal(updates["b"], grads["b"])


def test_weight_decay_mask_and_forget_learning_rate():
  tx = do.dualoptim_plus(
    1e-2, forget_learning_rate=3e-2, weight_decay=0.5, mask={"w": True, "b": False}
  )
  params = {"w": jnp.full(2, 2.0), "b": jnp.full(2, 2.0)}
  zero = {"w": jnp.zeros(2), "b": jnp.zeros(2)}
  updates, state = tx.update(zero, tx.init(params), params, objective=do.FORGET)
  np.testing.assert_allclose(updates["w"], -3e-2 * 0.5 * 2.0, rtol=1e-6)
  np.testing.assert_array_equal(updates["b"], 0.0)
  updates, _ = tx.update(zero, state, params, objective=do.RETAIN)
  np.testing.assert_allclose(updates["w"], -1e-2 * 0.5 * 2.0, rtol=1e-6)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_init_accepts_shape_dtype_struct(name):
  tx = OPTIMIZERS[name]()
  params = {"w": jnp.ones((4, 5)), "b": jnp.ones(5, jnp.bfloat16)}
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
  concrete = jax.eval_shape(tx.init, params)
  assert jax.tree.structure(jax.eval_shape(tx.init, abstract)) == jax.tree.structure(concrete)
  state = tx.init(abstract)
  assert jax.tree.structure(state) == jax.tree.structure(tx.init(params))


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_bf16_params_keep_dtype(name):
  tx = OPTIMIZERS[name]()
  params = {"w": jnp.ones(4, jnp.bfloat16)}
  state = tx.init(params)
  updates, state = tx.update({"w": jnp.full(4, 0.5, jnp.bfloat16)}, state, params)
  assert updates["w"].dtype == jnp.bfloat16
  for leaf in jax.tree.leaves(state):
    if leaf.shape == (4,):
      assert leaf.dtype == jnp.bfloat16
  assert optax.apply_updates(params, updates)["w"].dtype == jnp.bfloat16


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_mu_and_nu_dtype_respected(name):
  tx = OPTIMIZERS[name](mu_dtype=jnp.bfloat16, nu_dtype=jnp.float32)
  params = {"w": jnp.ones(4, jnp.bfloat16)}
  state = tx.init(params)
  updates, state2 = tx.update({"w": jnp.full(4, 0.5, jnp.bfloat16)}, state, params)
  assert updates["w"].dtype == jnp.bfloat16
  inner = state2[0]
  mus = [inner.base_mu, *inner.delta_mu] if hasattr(inner, "base_mu") else list(inner.mu)
  nus = [inner.base_nu, *inner.delta_nu] if hasattr(inner, "base_nu") else list(inner.nu)
  assert all(m["w"].dtype == jnp.bfloat16 for m in mus)
  assert all(n["w"].dtype == jnp.float32 for n in nus)
  jax.tree.map(lambda a, b: np.testing.assert_equal(a.dtype, b.dtype), state, state2)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_tree_map_params_maps_every_moment(name):
  tx = OPTIMIZERS[name]()
  params = {"w": jnp.ones((2, 3)), "b": jnp.ones(3)}
  state = tx.init(params)
  mapped = optax.tree.map_params(tx, lambda p: jnp.full(p.shape, 7.0, p.dtype), state)
  n_param_like = 0
  for leaf in jax.tree.leaves(mapped):
    if leaf.shape in ((2, 3), (3,)) and leaf.dtype == jnp.float32:
      np.testing.assert_array_equal(leaf, 7.0)
      n_param_like += 1
  per_leaf = {"dualoptim": 4}.get(name, 6)  # moments per param leaf (K=2)
  assert n_param_like == 2 * per_leaf


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_unknown_extra_args_are_ignored(name):
  tx = OPTIMIZERS[name]()
  params = {"x": jnp.ones(3)}
  updates, _ = tx.update({"x": jnp.ones(3)}, tx.init(params), params, value=1.0, foo="bar")
  assert np.all(np.isfinite(updates["x"]))


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_state_stable_under_lax_cond(name):
  tx = OPTIMIZERS[name]()
  params = {"x": jnp.ones(3)}
  state = tx.init(params)

  def step(pred, state):
    return jax.lax.cond(
      pred, lambda s: tx.update({"x": jnp.ones(3)}, s, params)[1], lambda s: s, state
    )

  s1 = jax.jit(step)(True, state)
  jax.tree.map(lambda a, b: np.testing.assert_equal(a.dtype, b.dtype), s1, state)
