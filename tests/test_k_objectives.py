"""K objectives through the ready-made aliases: ``run_lengths`` and ``objective_learning_rates``."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import dualoptim_jax as do

LENGTHS = (1, 2, 1)
LRS = (1e-2, 2e-2, 3e-2)

# 8-bit aliases quantize "w" (min_8bit_size=8) and keep "b" in float32.
ALIASES = {
  "dualoptim_plus": lambda **kw: do.dualoptim_plus(1e-2, **kw),
  "dualoptim": lambda **kw: do.dualoptim(1e-2, **kw),
  "dualoptim_plus_8bit": lambda **kw: do.dualoptim_plus_8bit(1e-2, min_8bit_size=8, **kw),
  "dualoptim_8bit": lambda **kw: do.dualoptim_8bit(1e-2, min_8bit_size=8, **kw),
  "dualoptim_plus_muon": lambda **kw: do.dualoptim_plus_muon(1e-2, **kw),
}

MOMENT_STATES = (
  do.ScaleByDualOptimPlusState,
  do.ScaleByDualOptimState,
  do.ScaleByDualOptimPlus8bitState,
  do.ScaleByDualOptim8bitState,
  do.ScaleByDualOptimPlusMuonState,
)


def params():
  return {"w": jnp.linspace(-1.0, 1.0, 32).reshape(4, 8), "b": jnp.ones(3)}


def grads(k):
  return jax.tree.map(lambda p: jnp.cos(p * (k + 1)), params())


def moment_states(state):
  found = jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, MOMENT_STATES))
  return [s for s in found if isinstance(s, MOMENT_STATES)]


def counts(state):
  """The per-objective counts, checked equal across every moment state in ``state``."""
  per_state = [np.asarray(s.objective_counts).tolist() for s in moment_states(state)]
  assert per_state and all(c == per_state[0] for c in per_state)
  return per_state[0]


@pytest.mark.parametrize("name", ALIASES)
def test_three_objectives_follow_the_run_lengths(name):
  tx = ALIASES[name](run_lengths=LENGTHS, objective_learning_rates=LRS)
  state = tx.init(params())
  for s in moment_states(state):
    per_objective = [f for f in s._fields if isinstance(getattr(s, f), tuple)]
    assert per_objective and all(len(getattr(s, f)) == 3 for f in per_objective)
  step = jax.jit(lambda g, s: tx.update(g, s, params()))
  seen = []
  for k in range(8):
    before = counts(state)
    _, state = step(grads(k), state)
    after = counts(state)
    seen.append(int(np.argmax(np.subtract(after, before))))
  assert seen == [0, 1, 1, 2, 0, 1, 1, 2]


@pytest.mark.parametrize("name", ALIASES)
def test_explicit_objective_2_static_and_traced(name):
  tx = ALIASES[name](run_lengths=LENGTHS, objective_learning_rates=LRS)
  state = tx.init(params())
  _, state = tx.update(grads(0), state, params())  # one scheduled step first
  static = jax.jit(lambda g, s: tx.update(g, s, params(), objective=2))
  traced = jax.jit(lambda g, s, o: tx.update(g, s, params(), objective=o))
  u1, s1 = static(grads(1), state)
  u2, s2 = traced(grads(1), state, jnp.int32(2))
  assert counts(s1) == counts(s2) == [1, 0, 1]
  # Static and traced programs fuse differently: equal up to float32 rounding
  # (which Newton-Schulz amplifies in Muon's updates).
  atol = 1e-6 if "muon" in name else 1e-8
  close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=atol)  # noqa: E731
  jax.tree.map(close, (u1, s1), (u2, s2))


@pytest.mark.parametrize("name", ALIASES)
def test_each_objective_uses_its_learning_rate(name):
  """A first step is Adam's (|u| = 1 on a constant gradient): the update is -lr_o."""
  tx = ALIASES[name](run_lengths=LENGTHS, objective_learning_rates=LRS)
  p = params()
  for o, lr in enumerate(LRS):
    u, _ = tx.update(jax.tree.map(jnp.ones_like, p), tx.init(p), p, objective=o)
    np.testing.assert_allclose(u["b"], -lr, rtol=1e-5)  # "b" is a vector in every alias


def raw_chain(scale, lengths, lrs):
  return optax.chain(
    scale,
    optax.add_decayed_weights(0.01),
    do.scale_by_objective_learning_rate(lrs, run_lengths=lengths),
  )


RAW = {
  "dualoptim_plus": lambda k, lengths: do.scale_by_dualoptim_plus(
    num_objectives=k, run_lengths=lengths
  ),
  "dualoptim": lambda k, lengths: do.scale_by_dualoptim(num_objectives=k, run_lengths=lengths),
  "dualoptim_plus_8bit": lambda k, lengths: do.scale_by_dualoptim_plus_8bit(
    num_objectives=k, run_lengths=lengths, min_8bit_size=8
  ),
  "dualoptim_8bit": lambda k, lengths: do.scale_by_dualoptim_8bit(
    num_objectives=k, run_lengths=lengths, min_8bit_size=8
  ),
}


@pytest.mark.parametrize("name", RAW)
def test_alias_equals_the_raw_transform_chain(name):
  alias = ALIASES[name](run_lengths=LENGTHS, objective_learning_rates=LRS, weight_decay=0.01)
  raw = raw_chain(RAW[name](3, LENGTHS), LENGTHS, LRS)
  p_alias, p_raw = params(), params()
  s_alias, s_raw = alias.init(p_alias), raw.init(p_raw)
  for k in range(6):
    objective = 2 if k == 4 else None
    u_alias, s_alias = alias.update(grads(k), s_alias, p_alias, objective=objective)
    u_raw, s_raw = raw.update(grads(k), s_raw, p_raw, objective=objective)
    p_alias = optax.apply_updates(p_alias, u_alias)
    p_raw = optax.apply_updates(p_raw, u_raw)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), p_alias, p_raw)


def test_two_objective_defaults_are_unchanged():
  """Without run_lengths: FORGET uses forget_learning_rate, RETAIN learning_rate."""
  a = do.dualoptim_plus(1e-2, forget_learning_rate=3e-2, forget_steps=1, retain_steps=2)
  b = do.dualoptim_plus(1e-2, objective_learning_rates=(3e-2, 1e-2), run_lengths=(1, 2))
  p = params()
  sa, sb = a.init(p), b.init(p)
  for k in range(5):
    ua, sa = a.update(grads(k), sa, p)
    ub, sb = b.update(grads(k), sb, p)
    jax.tree.map(np.testing.assert_array_equal, ua, ub)


@pytest.mark.parametrize("name", ALIASES)
def test_bad_learning_rate_arguments_raise(name):
  with pytest.raises(ValueError, match="3 objectives"):
    ALIASES[name](run_lengths=LENGTHS, forget_learning_rate=1e-3)
  with pytest.raises(ValueError, match="2 entries for 3 objectives"):
    ALIASES[name](run_lengths=LENGTHS, objective_learning_rates=(1e-3, 1e-3))
  with pytest.raises(ValueError, match="not both"):
    ALIASES[name](objective_learning_rates=(1e-3, 1e-3), forget_learning_rate=1e-3)
