"""DualOptim+ Muon: reduction to optax.contrib.muon, the base/delta wiring, the optax battery."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from loops import run_scan
from optax.contrib import MuonDimensionNumbers
from optax.contrib import _muon as optax_muon

import dualoptim_jax as do

RNG = np.random.RandomState(0)
MATS = {
  "w": jnp.asarray(RNG.randn(8, 5), jnp.float32),
  "v": jnp.asarray(RNG.randn(5, 12), jnp.float32),
}
GRADS = [jax.tree.map(lambda x, i=i: jnp.sin(x * (i + 1.0)), MATS) for i in range(6)]


def run_updates(tx, grads, params, objectives=None, standard=False):
  """Jitted updates of ``tx`` on a list of gradients; returns (updates list, final state)."""
  state = tx.init(params)
  update = jax.jit(tx.update)
  outs = []
  for k, g in enumerate(grads):
    extra = {} if objectives is None else {"objective": objectives[k]}
    if standard:  # optax's Muon mixes Python floats with int32 counts.
      with jax.numpy_dtype_promotion("standard"):
        u, state = update(g, state, params, **extra)
    else:
      u, state = update(g, state, params, **extra)
    outs.append(u)
  return outs, state


def max_abs_diff(a, b):
  return max(
    float(jnp.max(jnp.abs(x - y)))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
  )


@pytest.mark.parametrize(("nesterov", "consistent_rms"), [(True, None), (False, 0.2)])
def test_reduces_to_optax_muon_without_base(nesterov, consistent_rms):
  # base_beta=1 keeps the base at exactly 0; retain_steps=0: one objective.
  ours = do.dualoptim_plus_muon(
    1.0,
    base_beta=1.0,
    nesterov=nesterov,
    consistent_rms=consistent_rms,
    weight_decay=0.1,
    forget_steps=1,
    retain_steps=0,
  )
  ref = optax.contrib.muon(1.0, nesterov=nesterov, consistent_rms=consistent_rms, weight_decay=0.1)
  u_ours, s_ours = run_updates(ours, GRADS, MATS)
  u_ref, s_ref = run_updates(ref, GRADS, MATS, standard=True)
  diff = max(max_abs_diff(a, b) for a, b in zip(u_ours, u_ref, strict=True))
  print(f"max |dualoptim_plus_muon - optax.contrib.muon| = {diff:.3g}")
  # The momenta agree bit for bit; the updates differ only by XLA's float32
  # rounding (fusion) inside Newton-Schulz, updates being O(1) here.
  assert diff < 1e-5
  ours_mu = s_ours.inner_states["muon"].inner_state[0].delta_mu[do.FORGET]
  ref_mu = s_ref.inner_states["muon"].inner_state[0].mu
  jax.tree.map(np.testing.assert_array_equal, ours_mu, ref_mu)


def test_reduces_with_declared_dimension_numbers_and_mixed_leaves():
  params = {
    "conv": jnp.asarray(RNG.randn(3, 4, 6), jnp.float32),
    "w": MATS["w"],
    "b": jnp.ones(5, jnp.float32),
  }
  dims = {"conv": MuonDimensionNumbers(reduction_axis=1, output_axis=2), "w": None, "b": None}
  grads = [jax.tree.map(lambda x, i=i: jnp.cos(x * (i + 1.0)), params) for i in range(4)]
  ours = do.dualoptim_plus_muon(
    1.0,
    base_beta=1.0,
    consistent_rms=None,
    muon_weight_dimension_numbers=dims,
    forget_steps=1,
    retain_steps=0,
  )
  ref = optax.contrib.muon(1.0, muon_weight_dimension_numbers=dims)
  u_ours, _ = run_updates(ours, grads, params)
  u_ref, _ = run_updates(ref, grads, params, standard=True)
  assert max(max_abs_diff(a["conv"], b["conv"]) for a, b in zip(u_ours, u_ref, strict=True)) < 1e-5
  # Leaves declared None (and 1-D ones) take plain DualOptim+.
  plus = do.dualoptim_plus(1.0, forget_steps=1, retain_steps=0)
  rest = {"w": params["w"], "b": params["b"]}
  u_plus, _ = run_updates(plus, [{k: g[k] for k in rest} for g in grads], rest)
  for a, b in zip(u_ours, u_plus, strict=True):
    np.testing.assert_array_equal(a["w"], b["w"])
    np.testing.assert_array_equal(a["b"], b["b"])


def test_callable_dimension_numbers_route_embeddings_to_dualoptim_plus():
  def dims(params):
    return jax.tree_util.tree_map_with_path(
      lambda path, x: (
        None if "embed" in jax.tree_util.keystr(path) or x.ndim != 2 else MuonDimensionNumbers()
      ),
      params,
    )

  params = {"embed": jnp.ones((10, 4)), "w": jnp.ones((4, 3)), "b": jnp.ones(3)}
  tx = do.dualoptim_plus_muon(1e-2, muon_weight_dimension_numbers=dims)
  state = tx.init(params)
  updates, state = jax.jit(tx.update)(jax.tree.map(jnp.sin, params), state, params)
  muon_state = state.inner_states["muon"].inner_state[0]
  plus_state = state.inner_states["adam"].inner_state[0]
  assert isinstance(muon_state.base_mu["embed"], optax.MaskedNode)
  assert plus_state.base_mu["embed"].shape == (10, 4)
  assert muon_state.base_mu["w"].shape == (4, 3)
  assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))


def test_momenta_are_dualoptim_plus_first_moments():
  # Same base/delta first moments as DualOptim+ with b1=beta, base_b1=base_beta.
  objectives = [0, 1, 1, 0, 1, 1]
  tx = do.scale_by_dualoptim_plus_muon(beta=0.8, base_beta=0.7, nesterov=False)
  plus = do.scale_by_dualoptim_plus(b1=0.8, base_b1=0.7)
  state, pstate = tx.init(MATS), plus.init(MATS)
  tx_update = jax.jit(tx.update, static_argnames="objective")
  plus_update = jax.jit(plus.update, static_argnames="objective")
  coeffs = jnp.asarray(optax_muon._DEFAULT_NS_COEFFS, jnp.float32)
  orthogonalize = jax.jit(lambda x: optax_muon.orthogonalize_via_newton_schulz(x, coeffs, 5))
  close = functools.partial(np.testing.assert_allclose, rtol=1e-6, atol=1e-7)
  for g, o in zip(GRADS, objectives, strict=True):
    t = int(state.objective_counts[o]) + 1
    big_t = int(state.count) + 1
    base_c = jnp.float32(1 - 0.7 ** (big_t - 1) if big_t > 1 else 1.0)
    bm_hat = jax.tree.map(lambda b, c=base_c: b / c, state.base_mu)
    prev_delta = state.delta_mu
    u, state = tx_update(g, state, objective=o)
    _, pstate = plus_update(g, pstate, objective=o)
    # Equal up to float32 rounding of 1 - b1 (DualOptim+ forms it in float32).
    jax.tree.map(close, state.base_mu, pstate.base_mu)
    for k in range(2):
      jax.tree.map(close, state.delta_mu[k], pstate.delta_mu[k])
    # The inactive objective's delta is untouched.
    jax.tree.map(np.testing.assert_array_equal, state.delta_mu[1 - o], prev_delta[1 - o])
    # u = NS(Dm_o / (1 - beta**t_o) + Bm_hat), with optax's iteration.
    delta_c = jnp.float32(1 - 0.8**t)
    expected = jax.tree.map(
      lambda d, b, c=delta_c: orthogonalize(d / c + b), state.delta_mu[o], bm_hat
    )
    assert max_abs_diff(u, expected) < 1e-5
  np.testing.assert_array_equal(state.objective_counts, [2, 4])


def test_base_changes_the_update():
  on, _ = run_updates(do.scale_by_dualoptim_plus_muon(), GRADS, MATS, objectives=[0, 1] * 3)
  off, _ = run_updates(
    do.scale_by_dualoptim_plus_muon(base_beta=1.0), GRADS, MATS, objectives=[0, 1] * 3
  )
  np.testing.assert_array_equal(on[0]["w"], off[0]["w"])  # the base is 0 on step 1
  assert max_abs_diff(on[-1], off[-1]) > 1e-2


TARGET = jnp.asarray(RNG.randn(6, 4), jnp.float32)


def quadratic(p):
  return jnp.sum(jnp.square(p["w"] - TARGET)) + jnp.sum(jnp.square(p["b"] - 1.0))


def rosenbrock_rows(p):
  # Rosenbrock chained down the rows of a matrix: minimum at all ones.
  x = p["w"]
  return jnp.sum(jnp.square(1.0 - x)) + 100.0 * jnp.sum(jnp.square(x[1:] - jnp.square(x[:-1])))


@pytest.mark.parametrize("consistent_rms", [0.2, None])
def test_converges_on_matrix_quadratic(consistent_rms):
  steps = 500
  tx = do.dualoptim_plus_muon(
    optax.cosine_decay_schedule(0.1, steps),
    forget_steps=1,
    retain_steps=3,
    consistent_rms=consistent_rms,
  )
  params = run_scan(tx, quadratic, {"w": jnp.zeros((6, 4)), "b": jnp.zeros(4)}, steps)
  assert float(quadratic(params)) < 1e-3  # from 33.2; 1.1e-5 measured


def test_converges_on_matrix_rosenbrock():
  steps = 2000
  tx = do.dualoptim_plus_muon(
    optax.cosine_decay_schedule(0.02, steps),
    forget_learning_rate=optax.cosine_decay_schedule(0.01, steps),
    forget_steps=1,
    retain_steps=3,
  )
  params = run_scan(tx, rosenbrock_rows, {"w": jnp.zeros((4, 3))}, steps)
  np.testing.assert_allclose(params["w"], 1.0, atol=1e-2)


PARAMS = {"w": jnp.ones((4, 3)), "b": jnp.ones(3)}


def quad_loss(p):
  return jnp.sum(jnp.square(p["w"] - 2.0)) + jnp.sum(jnp.square(p["b"] + 1.0))


def test_traced_objective_compiles_once():
  tx = do.dualoptim_plus_muon(1e-2)
  traces = []

  @jax.jit
  def step(params, state, obj):
    traces.append(1)
    updates, state = tx.update(jax.grad(quad_loss)(params), state, params, objective=obj)
    return optax.apply_updates(params, updates), state

  params, state = PARAMS, tx.init(PARAMS)
  for o in (0, 1, 1, 0):
    params, state = step(params, state, jnp.int32(o))
  assert len(traces) == 1
  counts = [
    s.objective_counts
    for s in jax.tree.leaves(state, is_leaf=lambda x: hasattr(x, "objective_counts"))
    if hasattr(s, "objective_counts")
  ]
  assert len(counts) == 2  # the matrix and the other-leaf transformations, in step
  for c in counts:
    np.testing.assert_array_equal(c, [2, 2])


def test_static_and_traced_objectives_agree():
  tx = do.dualoptim_plus_muon(1e-2, forget_learning_rate=3e-2, weight_decay=0.1)
  objectives = [0, 1, 1, 0, 1]
  grads = [
    jax.grad(quad_loss)(jax.tree.map(lambda x, i=i: x * (1 + 0.1 * i), PARAMS)) for i in range(5)
  ]

  @functools.partial(jax.jit, static_argnums=3)
  def static_step(g, state, params, obj):
    return tx.update(g, state, params, objective=obj)

  traced_step = jax.jit(tx.update)
  s1 = s2 = tx.init(PARAMS)
  for g, o in zip(grads, objectives, strict=True):
    u1, s1 = static_step(g, s1, PARAMS, o)
    u2, s2 = traced_step(g, s2, PARAMS, objective=jnp.int32(o))
    assert max_abs_diff(u1, u2) < 1e-7


def test_invalid_traced_objective_gives_nan_and_keeps_state():
  tx = do.scale_by_dualoptim_plus_muon()
  state = tx.init(MATS)
  u, new = jax.jit(tx.update)(GRADS[0], state, objective=jnp.int32(5))
  assert bool(jnp.all(jnp.isnan(u["w"])))
  jax.tree.map(np.testing.assert_array_equal, new, state)


def test_inject_hyperparams_gives_identical_results():
  kw = dict(
    learning_rate=1e-2, forget_learning_rate=2e-2, beta=0.9, base_beta=0.8, weight_decay=0.05
  )
  plain = do.dualoptim_plus_muon(**kw)
  injected = optax.inject_hyperparams(
    do.dualoptim_plus_muon, static_args=("ns_steps", "forget_steps", "retain_steps")
  )(**kw)
  grads = [jax.grad(quad_loss)(PARAMS)] * 3
  u1, _ = run_updates(plain, grads, PARAMS)
  u2, s2 = run_updates(injected, grads, PARAMS)
  assert max_abs_diff(u1, u2) < 1e-7
  assert set(s2.hyperparams) >= {"learning_rate", "beta", "base_beta", "weight_decay"}


def test_weight_decay_mask_and_forget_learning_rate():
  # The keyword arguments the experiments registry passes, as for dualoptim_plus.
  mask = {"w": True, "b": False}
  tx = do.dualoptim_plus_muon(
    1e-2,
    forget_learning_rate=3e-2,
    b1=0.9,
    b2=0.95,
    eps=1e-8,
    weight_decay=0.5,
    mask=mask,
    forget_steps=1,
    retain_steps=5,
  )
  params = {"w": jnp.full((2, 3), 2.0), "b": jnp.full(3, 2.0)}
  zero = jax.tree.map(jnp.zeros_like, params)
  updates, state = tx.update(zero, tx.init(params), params)  # step 0: forget
  np.testing.assert_allclose(updates["w"], -3e-2 * 0.5 * 2.0, rtol=1e-6)
  np.testing.assert_array_equal(updates["b"], 0.0)
  updates, _ = tx.update(zero, state, params)  # step 1: retain
  np.testing.assert_allclose(updates["w"], -1e-2 * 0.5 * 2.0, rtol=1e-6)
  # A callable mask reaches both partitions.
  tx = do.dualoptim_plus_muon(
    1e-2, weight_decay=0.5, mask=lambda p: jax.tree.map(lambda x: x.ndim == 1, p)
  )
  updates, _ = tx.update(zero, tx.init(params), params)
  np.testing.assert_array_equal(updates["w"], 0.0)
  np.testing.assert_allclose(updates["b"], -1e-2 * 0.5 * 2.0, rtol=1e-6)
  # b1/b2 (dualoptim_plus's names) reach the non-matrix leaves.
  grads = {"w": jnp.ones((2, 3)), "b": jnp.array([1.0, -2.0, 0.5])}
  ours = do.dualoptim_plus_muon(1e-2, b1=0.5, b2=0.6)
  plus = do.dualoptim_plus(1e-2, b1=0.5, b2=0.6)
  u1, s1 = ours.update(grads, ours.init(params), params)
  b_params = {"b": params["b"]}
  u2, s2 = plus.update({"b": grads["b"]}, plus.init(b_params), b_params)
  u1, _ = ours.update(grads, s1, params)
  u2, _ = plus.update({"b": grads["b"]}, s2, b_params)
  np.testing.assert_allclose(u1["b"], u2["b"], rtol=1e-6)


def test_bf16_params_keep_dtype_and_mu_dtype():
  params = {"w": jnp.ones((4, 3), jnp.bfloat16), "b": jnp.ones(3, jnp.bfloat16)}
  for mu_dtype, want in ((None, jnp.bfloat16), (jnp.float32, jnp.float32)):
    tx = do.dualoptim_plus_muon(1e-2, mu_dtype=mu_dtype)
    state = tx.init(params)
    grads = jax.tree.map(lambda x: jnp.full_like(x, 0.5), params)
    updates, state2 = jax.jit(tx.update)(grads, state, params)
    assert all(u.dtype == jnp.bfloat16 for u in jax.tree.leaves(updates))
    muon_state = state2.inner_states["muon"].inner_state[0]
    assert muon_state.base_mu["w"].dtype == want
    jax.tree.map(lambda a, b: np.testing.assert_equal(a.dtype, b.dtype), state, state2)


def test_tree_map_params_and_abstract_init():
  tx = do.dualoptim_plus_muon(1e-2)
  state = tx.init(PARAMS)
  mapped = optax.tree.map_params(tx, lambda p: jnp.full(p.shape, 7.0, p.dtype), state)
  shapes = [x.shape for x in jax.tree.leaves(mapped) if x.shape in ((4, 3), (3,))]
  assert all(bool(jnp.all(x == 7.0)) for x in jax.tree.leaves(mapped) if x.shape == (4, 3))
  # Matrix: base + 2 deltas; other leaf: DualOptim+'s 6 moments.
  assert shapes.count((4, 3)) == 3 and shapes.count((3,)) == 6
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), PARAMS)
  assert jax.tree.structure(tx.init(abstract)) == jax.tree.structure(state)


def test_state_follows_param_sharding():
  mesh = jax.make_mesh((8,), ("d",), axis_types=(jax.sharding.AxisType.Explicit,))
  spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("d"))
  with jax.set_mesh(mesh):
    params = {"w": jax.device_put(jnp.ones((16, 4)), spec), "b": jnp.ones(4)}
    tx = do.dualoptim_plus_muon(1e-2)
    state = jax.jit(tx.init)(params)
    before = jax.tree.map(jax.typeof, state)
    grads = jax.tree.map(lambda x: x * 0.5, params)
    _, state = jax.jit(tx.update)(grads, state, params)
    assert jax.tree.map(jax.typeof, state) == before
  muon_state = state.inner_states["muon"].inner_state[0]
  for tree in (muon_state.base_mu, *muon_state.delta_mu):
    assert tree["w"].sharding.is_equivalent_to(spec, 2)


def test_unknown_extra_args_are_ignored_and_errors():
  tx = do.dualoptim_plus_muon(1e-2)
  updates, _ = tx.update(PARAMS, tx.init(PARAMS), PARAMS, value=1.0, foo="bar")
  assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))
  with pytest.raises(ValueError, match="not a matrix"):
    raw = do.scale_by_dualoptim_plus_muon()
    raw.update(PARAMS, raw.init(PARAMS))
  with pytest.raises(ValueError, match="base_beta"):
    do.dualoptim_plus_muon(1e-2, base_beta=1.5)
  with pytest.raises(ValueError, match="out of range"):
    tx.update(PARAMS, tx.init(PARAMS), PARAMS, objective=2)
