"""The compiled step keeps no full-size copy of the optimizer state (params and state donated).

Written directly, DualOptim+ lets XLA overwrite the base moments before the
computations that still read their old values, and copy insertion then keeps
full-size copies of them (and, with a traced objective, of every delta); see the
docstring of ``dualoptim_jax/_src/ordering.py``. These tests compile one
training step as a user writes it (``optax.apply_updates``, plain ``jax.jit``,
``donate_argnums``) and read the optimized HLO.
"""

import re
import warnings

import jax
import jax.numpy as jnp
import optax
import pytest

import dualoptim_jax as do

SHAPES = {"w": (96, 160), "b": (160,)}
OPTIMIZERS = {
  "dualoptim_plus": lambda: do.dualoptim_plus(1e-3, weight_decay=0.1),
  "dualoptim_plus_bounded": lambda: do.dualoptim_plus(1e-3, bounded=True),
  "dualoptim": lambda: do.dualoptim(1e-3, weight_decay=0.1),
  # The bare transformations order their writes after u instead (no parameter update in sight).
  "scale_by_dualoptim_plus": lambda: do.scale_by_dualoptim_plus(),
  "scale_by_dualoptim": lambda: do.scale_by_dualoptim(),
}
COPY = re.compile(r"=\s*(\w+)\[([\d,]*)\]\S*\s+copy\(")


def compiled_step(tx, mode):
  params = {k: jnp.ones(s, jnp.float32) for k, s in SHAPES.items()}
  grads = {k: jnp.full(s, 0.5, jnp.float32) for k, s in SHAPES.items()}
  state = tx.init(params)

  def step(params, state, grads, objective):
    extra = {} if mode == "schedule" else {"objective": objective}
    updates, state = tx.update(grads, state, params, **extra)
    return optax.apply_updates(params, updates), state

  if mode == "static":
    fn = jax.jit(step, donate_argnums=(0, 1), static_argnums=(3,))
    objective = do.RETAIN
  else:
    fn = jax.jit(step, donate_argnums=(0, 1))
    objective = jnp.int32(do.RETAIN)
  compiled = fn.lower(params, state, grads, objective).compile()
  return fn, compiled.as_text(), (params, state, grads, objective)


def full_size_copies(hlo: str) -> list[str]:
  """``copy`` instructions whose result has the shape of a parameter (so of a state leaf)."""
  shapes = {",".join(map(str, s)) for s in SHAPES.values()}
  return [m.group(0) for m in COPY.finditer(hlo) if m.group(2) in shapes]


@pytest.mark.parametrize("mode", ["static", "traced", "schedule"])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_no_full_size_state_copies(name, mode):
  _, hlo, _ = compiled_step(OPTIMIZERS[name](), mode)
  assert full_size_copies(hlo) == []


def test_written_directly_would_copy():
  """The check has teeth: the direct rule (update reads old Bm after it is rewritten) copies."""
  b = 0.9

  def direct(p, g, bm, dm):
    dm = b * dm + (1 - b) * (g - bm)
    u = (dm + bm) / (jnp.sqrt(jnp.abs(dm)) + 1e-8)
    return p - 1e-3 * u, b * bm + (1 - b) * g, dm

  x = jnp.ones(SHAPES["w"])
  hlo = jax.jit(direct, donate_argnums=(0, 2, 3)).lower(x, x, x, x).compile().as_text()
  assert full_size_copies(hlo)


@pytest.mark.parametrize("mode", ["static", "traced"])
def test_donated_buffers_are_all_used(mode):
  fn, _, (params, state, grads, objective) = compiled_step(OPTIMIZERS["dualoptim_plus"](), mode)
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # "Some donated buffers were not usable" is a UserWarning
    out = fn(params, state, grads, objective)
  jax.block_until_ready(out)
  for leaf in jax.tree.leaves((params, state)):
    assert leaf.is_deleted()


def entry_full_size_fusions(hlo: str) -> int:
  """Full-size (parameter-shaped) fusions of the ENTRY computation: run on every step."""
  entry = hlo[hlo.index("\nENTRY") :]
  shape = ",".join(map(str, SHAPES["w"]))
  return len(re.findall(rf"=\s*f32\[{shape}\]\S*\s+fusion\(", entry))


@pytest.mark.parametrize("name", ["dualoptim_plus", "dualoptim"])
def test_traced_objective_leaves_inactive_moments_alone(name):
  """A traced objective rewrites only the active moments (inside ``lax.cond``s).

  A ``where`` over every objective's moments would add one full-size pass per
  inactive moment to every step. Outside its conditionals the traced step runs
  the static step's passes minus the two that rewrite the active moment pair
  (those run inside the conditionals); a product hoisted out of them (e.g.
  ``g * g``) would show up as one more.
  """
  _, static, _ = compiled_step(OPTIMIZERS[name](), "static")
  _, traced, _ = compiled_step(OPTIMIZERS[name](), "traced")
  assert " conditional(" in traced
  assert entry_full_size_fusions(traced) == entry_full_size_fusions(static) - 2


@pytest.mark.parametrize("mode", ["static", "traced"])
@pytest.mark.parametrize("name", ["dualoptim_plus_8bit", "dualoptim_8bit", "adamw_8bit"])
def test_8bit_row_chunks_update_the_state_in_place(name, mode, monkeypatch):
  """The CPU row-chunk loop writes every chunk's codes and scales into the donated state.

  A ``lax.map`` stacks its results in fresh zero-filled buffers and copies them
  into the state after the loop (full-size copies of every code and scale leaf);
  a scale written before ``u`` has read its old value is copied on every
  iteration. (With a single block per row, XLA also copies the ``(rows, 1)``
  scales once on the way into and out of the loop: 1/256 of the bytes, not
  tested; hence ``block_size=32`` here.)
  """
  from dualoptim_jax._src import row_chunks as impl

  rows, width = SHAPES["w"]
  monkeypatch.setattr(impl, "chunking_enabled", lambda: True)
  monkeypatch.setattr(impl, "CHUNK_ELEMENTS", 12 * width)  # 8 chunks of 12 rows
  tx = getattr(do, name)(1e-3, weight_decay=0.1, block_size=32)
  fn, hlo, args = compiled_step(tx, mode)
  assert " while(" in hlo
  if mode != "static" and name != "adamw_8bit":  # one objective: nothing to select
    assert " conditional(" in hlo  # only the active objective's cond runs the loop
  nb = width // 32
  chunked = {f"{rows},{width}", f"8,12,{width}", f"{rows},{nb}", f"8,12,{nb}"}
  assert [m.group(0) for m in COPY.finditer(hlo) if m.group(2) in chunked] == []
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # "Some donated buffers were not usable" is a UserWarning
    jax.block_until_ready(fn(*args))
