"""A 2-step end-to-end run of the CLI on a tiny model (fine-tune, oracle, unlearn, report)."""

import json

from experiments import tofu


def test_two_step_end_to_end(tmp_path, capsys):
  argv = [
    "--model-size",
    "tiny",
    "--n-authors",
    "10",
    "--ft-epochs",
    "1",
    "--steps",
    "2",
    "--eval-size",
    "4",
    "--loss",
    "NPO+GD",
    "--optimizers",
    "adamw,dualoptim_plus",
    "--seeds",
    "0",
    "--lrs",
    "1e-3",
    "--out",
    str(tmp_path),
  ]
  assert tofu.main(argv) == 0
  out = capsys.readouterr().out
  assert "| NPO+GD | dualoptim_plus |" in out
  res = json.loads((tmp_path / "results.json").read_text())
  assert len(res["runs"]) == 2
  for run in res["runs"]:
    assert [e["objective"] for e in run["log"]] == ["forget", "retain"]
    assert run["state_bytes"] > 0 and run["eval"]["forget_quality"] is not None
  assert res["runs"][1]["state_bytes"] > res["runs"][0]["state_bytes"]  # DualOptim+ holds more
  for name in ("results.md", "loss_curves.png", "tradeoff.png"):
    assert (tmp_path / name).stat().st_size > 0
  ckpts = list((tmp_path / "checkpoints").glob("*/full/1"))
  assert ckpts, "the fine-tuned model was checkpointed (epoch 1)"


def test_checkpoint_round_trip(tmp_path):
  import jax.numpy as jnp
  import optax

  from experiments.loops.checkpoint import Checkpoints

  params = {"w": jnp.arange(6, dtype=jnp.float32).reshape(2, 3), "b": jnp.ones(3, jnp.float32)}
  opt_state = optax.adam(1e-3).init(params)
  ckpt = Checkpoints(tmp_path / "c")
  assert ckpt.latest() is None
  ckpt.save(3, params, opt_state, {"epoch": 3})
  zeros = {k: jnp.zeros_like(v) for k, v in params.items()}
  got, got_opt, meta = ckpt.restore(ckpt.latest(), zeros, optax.adam(1e-3).init(zeros))
  ckpt.close()
  assert meta == {"epoch": 3}
  assert bool(jnp.all(got["w"] == params["w"]))
  assert type(got_opt) is type(opt_state)
