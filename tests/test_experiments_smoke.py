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

  # Damage the cache (a fine-tuning checkpoint, the tokenizer, a finished run's record): the
  # rerun says what it found, never crashes, never uses it, and gives the same results.
  step_files = [f for f in (ckpts[0] / "params").rglob("*") if f.is_file()]
  biggest = max(step_files, key=lambda f: f.stat().st_size)
  biggest.write_bytes(biggest.read_bytes()[: biggest.stat().st_size // 2])
  (ckpts[0].parents[1] / "tokenizer.json").write_text('{"version": ')
  run_file = sorted((tmp_path / "runs").glob("*.json"))[0]
  run_file.write_text(run_file.read_text()[:100])
  assert tofu.main(argv) == 0
  err = capsys.readouterr().err
  assert "step 1" in err and "no earlier step: retraining" in err
  assert "tokenizer.json is damaged" in err and f"{run_file.name} is damaged" in err
  again = json.loads((tmp_path / "results.json").read_text())
  assert again["before"] == res["before"] and again["oracle"] == res["oracle"]
  strip = lambda r: {k: v for k, v in r.items() if k != "wall_s"}
  assert [strip(r["eval"]) for r in again["runs"]] == [strip(r["eval"]) for r in res["runs"]]
