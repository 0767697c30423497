"""``DeAttr+KL`` through the CLI: 2 steps with each optimizer, attribution audit in the outputs."""

import json

import pytest
from tiny import JOB_ARGS

from experiments import tofu
from experiments.loops import optimizers

ARGS = list(JOB_ARGS)


def test_deattr_kl_two_steps_with_every_optimizer(tmp_path, capsys):
  opts = ",".join(optimizers.DEFAULT_OPTIMIZERS)
  argv = ARGS + ["--loss", "DeAttr:samples=2+KL", "--optimizers", opts, "--out", str(tmp_path)]
  assert tofu.main(argv) == 0
  out = capsys.readouterr().out
  assert "[classifier] bow: held-out accuracy" in out and "[check] probe" in out
  res = json.loads((tmp_path / "results.json").read_text())
  assert [r["optimizer"] for r in res["runs"]] == list(optimizers.DEFAULT_OPTIMIZERS)
  for run in res["runs"]:
    assert [e["objective"] for e in run["log"]] == ["forget", "retain"]
    assert len(run["rollouts"]) == 1 and -1.0 <= run["rollouts"][0]["reward"] <= 0.0
    ev = run["eval"]
    for key in ("forget_attribution", "retain_attribution", "forget_attribution_check"):
      assert 0.0 <= ev[key] <= 1.0
    assert 0.0 <= ev["tug_of_war"] <= 1.0 and 0.0 <= ev["fluency"] <= 1.0
  assert res["oracle"]["tug_of_war"] == pytest.approx(1.0)
  assert res["classifier"]["classifier"]["kind"] == "bow"
  assert "forget attr" in (tmp_path / "results.md").read_text()
  assert (tmp_path / "attribution.png").stat().st_size > 0
  for kind in ("bow", "probe"):  # cached beside the fine-tuned model
    assert list((tmp_path / "checkpoints").glob(f"*/classifier-{kind}/1"))


def test_default_losses_build_no_classifier(tmp_path, capsys):
  argv = ARGS + ["--loss", "NPO+GD", "--optimizers", "adamw", "--out", str(tmp_path)]
  assert tofu.main(argv) == 0
  assert "[classifier]" not in capsys.readouterr().out
  res = json.loads((tmp_path / "results.json").read_text())
  assert "classifier" not in res and not list((tmp_path / "checkpoints").glob("*/classifier-*"))
  ev = res["runs"][0]["eval"]
  assert "forget_attribution" not in ev and "tug_of_war" in ev and "fluency" in ev
  assert "forget attr" not in (tmp_path / "results.md").read_text()


def test_bad_deattr_option_is_one_line(capsys, tmp_path):
  assert tofu.main(["--loss", "DeAttr:critic=2+KL", "--out", str(tmp_path)]) == 2
  err = capsys.readouterr().err.strip()
  assert "critic" in err and "0 or 1" in err and "\n" not in err
