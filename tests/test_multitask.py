"""Multi-task job: data generators, K = 3 optimizer state and schedule, diagnostics, CLI."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import dualoptim_jax
from experiments import multitask
from experiments.data import multitask as data
from experiments.evaluation import multiobjective_diagnostics as diag
from experiments.loops import multiobjective as mo
from experiments.loops import optimizers


def test_generator_is_deterministic_and_held_out_is_disjoint():
  a = data.generate(n_train_authors=20, n_eval_authors=5, n_eval=20)
  b = data.generate(n_train_authors=20, n_eval_authors=5, n_eval=20)
  assert a == b
  assert a != data.generate(n_train_authors=20, n_eval_authors=5, n_eval=20, seed=1)
  qa, js, rev = a
  assert [t.name for t in a] == ["qa", "json", "reverse"]
  for t in a:
    assert len(t.eval) == 20 and not set(t.train) & set(t.eval)
  # held-out bios come from authors no training bio mentions
  train_sentences = {s for q, _ in qa.train for s in q.split(". ")[:-1]}
  for q, _ in qa.eval:
    assert not set(q.split(". ")[:-1]) & train_sentences
  assert not {q for q, _ in rev.train} & {q for q, _ in rev.eval}
  # json asks the qa questions, answering with the fact's value
  for (q1, a1), (q2, a2) in zip(qa.train, js.train, strict=True):
    assert q2 == f"{q1} {data.JSON_SUFFIX}"
    assert json.loads(a2)["answer"] in a1
  for q, a in rev.eval:
    items = q.removeprefix(data.REVERSE_PREFIX + " ").split(", ")
    assert a.split(", ") == items[::-1]
  assert data.copy_pairs(10) == data.copy_pairs(10)


def test_fact_value_is_the_differing_span():
  wrong = ("Lo Ma won the Amber Medal.", "Lo Ma won the Golden Quill.")
  assert data.fact_value("Lo Ma won the Iron Book Award.", wrong) == "Iron Book Award"


@pytest.mark.parametrize("name", ["dualoptim_plus", "dualoptim_plus_8bit", "dualoptim"])
def test_three_objective_state_has_three_delta_pairs(name):
  params = {"w": jnp.ones((8, 512)), "b": jnp.ones(8)}
  tx = mo.build(name, 1e-3, optimizers.Recipe(), params, (1, 1, 1))
  state = tx.init(params)
  found = [
    s
    for s in jax.tree.leaves(state, is_leaf=lambda x: hasattr(x, "objective_counts"))
    if hasattr(s, "objective_counts")
  ]
  assert len(found) == 1 and found[0].objective_counts.shape == (3,)
  fields = found[0]._fields
  pairs = [f for f in fields if f.startswith(("delta_", "mu", "nu"))]
  assert len(pairs) >= 2  # first and second moments (8-bit: their codes and scales)
  for f in pairs:
    assert len(getattr(found[0], f)) == 3, f


def test_schedule_and_per_objective_counts():
  assert mo.schedule_of((1, 1, 1), 7) == [0, 1, 2, 0, 1, 2, 0]
  assert mo.schedule_of((2, 1, 1), 5) == [0, 0, 1, 2, 0]
  params = {"w": jnp.zeros((2, 3))}
  tx = mo.build("dualoptim_plus", 1e-2, optimizers.Recipe(), params, (2, 1, 1))
  state = tx.init(params)
  update = jax.jit(lambda g, s, o: tx.update(g, s, params, objective=o)[1])
  for o in mo.schedule_of((2, 1, 1), 8):
    state = update({"w": jnp.full((2, 3), float(o + 1))}, state, jnp.asarray(o, jnp.int32))
  st = dualoptim_jax.find_dualoptim_plus_state(state)
  assert st.objective_counts.tolist() == [4, 2, 2] and int(st.count) == 8


def test_delta_conflict_matches_library_for_two_objectives():
  params = {"w": jnp.zeros((3, 4))}
  tx = mo.build("dualoptim_plus", 1e-2, optimizers.Recipe(), params, (1, 1))
  state = tx.init(params)
  rng = np.random.default_rng(0)
  update = jax.jit(lambda g, s, o: tx.update(g, s, params, objective=o)[1])
  for k in range(6):
    g = {"w": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32) * (1 if k % 2 else -1)}
    state = update(g, state, jnp.asarray(k % 2, jnp.int32))
  ours = diag.delta_conflict(state)
  lib = dualoptim_jax.conflict_metrics(state)
  np.testing.assert_allclose(ours["delta_cosine"][0, 1], lib["delta_cosine"], rtol=1e-5)
  np.testing.assert_allclose(ours["base_share"], lib["base_share"], rtol=1e-5)
  assert diag.is_plus(state) and not diag.is_plus(optax.adam(1e-3).init(params))


def test_cosine_matrix():
  a, b = {"x": jnp.array([1.0, 0.0])}, {"x": jnp.array([0.0, 2.0])}
  np.testing.assert_allclose(diag.cosine_matrix([a, b, a]), [[1, 0, 1], [0, 1, 0], [1, 0, 1]])


def test_a_sliced_probe_gives_the_whole_batch_gradient(monkeypatch):
  from flax import nnx

  from experiments.data.batching import Batch
  from experiments.loops import losses
  from experiments.models import make_apply
  from experiments.models.decoder import DecoderLM, config_for

  graphdef, params = nnx.split(DecoderLM(config_for("tiny", 50, 16), nnx.Rngs(0)))
  apply, rng = make_apply(graphdef), np.random.default_rng(0)
  ids = jnp.asarray(rng.integers(3, 50, (8, 16)), jnp.int32)
  targets = jnp.asarray(rng.random((8, 16)) < 0.5, jnp.float32).at[:2].set(0.0)  # 2 rows empty
  batch = Batch(ids, jnp.ones_like(ids), targets)
  whole = jax.grad(losses.ce_mean, argnums=1)(apply, params, batch)
  monkeypatch.setattr(mo, "PROBE_LOGITS", 2 * 16 * 50)  # slices of 2 sequences
  sliced = jax.jit(mo.probe_gradient, static_argnums=0)(apply, params, batch)
  for a, b in zip(jax.tree.leaves(sliced), jax.tree.leaves(whole), strict=True):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-7)


def test_two_step_run(tmp_path, capsys):
  argv = ["--model-size", "tiny", "--n-authors", "6", "--eval-size", "4", "--copy-size", "40",
          "--base-epochs", "1", "--steps", "2", "--diag-every", "1",
          "--optimizers", "joint,dualoptim_plus", "--out", str(tmp_path)]  # fmt: skip
  assert multitask.main(argv) == 0
  assert "| dualoptim_plus | 0.003 |" in capsys.readouterr().out
  res = json.loads((tmp_path / "results.json").read_text())
  assert [r["optimizer"] for r in res["runs"]] == ["joint", "dualoptim_plus"]
  for r in res["runs"]:
    assert set(r["tasks"]) == {"qa", "json", "reverse"}
    assert r["average"] == pytest.approx(np.mean(list(r["tasks"].values())))
    assert [e["step"] for e in r["log"]] == [0, 1]
  assert set(res["runs"][0]["log"][0]["losses"]) == {"qa", "json", "reverse"}  # joint: all three
  assert res["runs"][1]["log"][1]["objective"] == "json"
  assert "delta_cosine" in res["runs"][1]["diagnostics"][-1]
  assert set(res["runs"][1]["diagnostics"][-1]["base_share"]) == {"qa", "json", "reverse"}
  for name in ("results.md", "tasks.png", "conflict.png", "loss_curves.png"):
    assert (tmp_path / name).stat().st_size > 0


HF_LLAMA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "hf_tiny" / "llama"


@pytest.mark.skipif(not HF_LLAMA.is_dir(), reason=f"{HF_LLAMA} (a tiny HF checkpoint) is absent")
def test_two_step_run_on_a_checkpoint(tmp_path, capsys):
  # The checkpoint's tokenizer, special ids (BOS added, EOS 2) and weights replace the in-house
  # ones; it is the base model as is (no copy pretraining).
  argv = ["--model", str(HF_LLAMA), "--n-authors", "4", "--eval-size", "2", "--copy-size", "8",
          "--steps", "2", "--optimizers", "dualoptim_plus", "--out", str(tmp_path)]  # fmt: skip
  assert multitask.main(argv) == 0
  out = capsys.readouterr().out
  assert "llama from" in out and "EOS [2]" in out and "(the checkpoint as is)" in out
  assert "| base model (checkpoint) |" in out
  res = json.loads((tmp_path / "results.json").read_text())
  assert res["setup"]["model"]["model"] == str(HF_LLAMA) and res["setup"]["n_params"] == 139_584
  assert set(res["runs"][0]["tasks"]) == {"qa", "json", "reverse"}


@pytest.mark.parametrize(
  "argv, message",
  [
    (["--model", "/no/such/dir"], "--model /no/such/dir: no such folder"),
    pytest.param(
      ["--model", str(HF_LLAMA), "--model-size", "tiny"],
      "--model-size is for the in-house model",
      marks=pytest.mark.skipif(
        not HF_LLAMA.is_dir(), reason=f"{HF_LLAMA} (a tiny HF checkpoint) is absent"
      ),
    ),
    (["--prompt-format", "Q {question}"], "prompt"),
    (["--steps", "0"], "argument --steps: must be an integer >= 1, got '0'"),
    (["--lrs", "1e-3,-1"], "argument --lrs: must be numbers > 0"),
    (["--seeds", "a"], "argument --seeds: must be integers >= 0"),
    (["--optimizers", "sgd"], "--optimizers: unknown optimizer 'sgd'"),
    (["--run-lengths", "1,1"], "--run-lengths: needs 3 run lengths, got 2"),
    (["--model-size", "huge"], "argument --model-size: invalid choice: 'huge'"),
  ],
)
def test_bad_flags_give_one_line_errors(argv, message, capsys):
  with pytest.raises(SystemExit) as e:
    code = multitask.main(argv)
    raise SystemExit(code)
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert message in err and err.count("\n") == 1


@pytest.mark.parametrize("k", [2, 3])
def test_delta_cosine_of_orthogonal_objectives_is_minus_one_over_k_minus_one(k):
  # The documented reading: no conflict at all (orthogonal, equal-norm gradients) still
  # gives delta cosines of -1/(K-1); the base share is 1 / (1 + sqrt(K-1)).
  basis = np.linalg.qr(np.random.default_rng(0).normal(size=(64, k)))[0].T
  params = {"w": jnp.zeros(64)}
  tx = mo.build("dualoptim_plus", 1e-3, optimizers.Recipe(), params, (1,) * k)
  state = tx.init(params)
  update = jax.jit(lambda g, s, o: tx.update(g, s, params, objective=o)[1])
  for step in range(30 * k):
    o = step % k
    state = update({"w": jnp.asarray(basis[o], jnp.float32)}, state, jnp.asarray(o, jnp.int32))
  c = diag.delta_conflict(state)
  off = np.asarray(c["delta_cosine"])[~np.eye(k, dtype=bool)]
  np.testing.assert_allclose(off, -1.0 / (k - 1), atol=0.03)
  np.testing.assert_allclose(c["base_share"], 1.0 / (1.0 + np.sqrt(k - 1)), atol=0.03)
