"""open-unlearning's methods through the CLI: each with every optimizer, the new audit columns."""

import json
import math

import pytest
from tiny import JOB_ARGS

from experiments import tofu
from experiments.loops import optimizers

ARGS = list(JOB_ARGS)
# Each new forget loss, paired with each kind of retain loss between them.
LOSSES = ("CEU+GD", "WGA+KL", "SatImp+AP", "UNDIAL+GD", "RMU+AM")
OPTIMIZERS = optimizers.DEFAULT_OPTIMIZERS + ("dualoptim_plus_muon",)
AUCS = ("min_k_pp", "min_k", "loss", "zlib", "reference", "gradnorm")


def _job(out, optimizer: str) -> dict:
  argv = ARGS + ["--loss", ",".join(LOSSES), "--optimizers", optimizer, "--out", str(out)]
  assert tofu.main(argv) == 0
  return json.loads((out / "results.json").read_text())


# One job per optimizer (the runs compile one step each; test workers share them out).
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_every_new_loss_runs_with_every_optimizer(optimizer, tmp_path):
  res = _job(tmp_path, optimizer)
  assert [(r["loss"], r["optimizer"]) for r in res["runs"]] == [(x, optimizer) for x in LOSSES]
  for run in res["runs"]:
    assert [e["objective"] for e in run["log"]] == ["forget", "retain"]
    assert all(math.isfinite(e["loss"]) and math.isfinite(e["grad_norm"]) for e in run["log"])
    _check_audits(run["eval"], oracle=False)
  if optimizer == "adamw":  # the reference models and the report, once
    _check_audits(res["oracle"], oracle=True)
    assert res["oracle"]["mia"]["reference_auc"] == 0.5  # its own reference: every score 0
    _check_audits(res["before"], oracle=False)
    md = (tmp_path / "results.md").read_text()
    for header in ("forget EM", "forget ES", "ZLib AUC", "Ref AUC", "GradNorm AUC"):
      assert f"| {header} |" in md
    assert "## Audits at the best-FQ learning rate" in md and "PrivLeak GradNorm" in md


def _check_audits(ev: dict, oracle: bool) -> None:
  for key in ("em", "es"):
    assert 0.0 <= ev["forget"][key] <= 1.0
  mia = ev["mia"]
  for s in AUCS:
    assert 0.0 <= mia[f"{s}_auc"] <= 1.0
    privleak = mia["privleak" if s == "min_k_pp" else f"privleak_{s}"]
    assert privleak is None if oracle else privleak is None or math.isfinite(privleak)
  assert mia["n_member"] == mia["n_holdout"] == 4


@pytest.mark.parametrize(
  "loss,needle",
  [
    ("RMU:layer=1+GD", "RMU/AM layer=1 is not a block of this model (0..0)"),
    ("NPO+AM:layer=3", "layer=3 is not a block"),
    ("UNDIAL:beta=-1+GD", "option beta='-1' in loss 'UNDIAL:beta=-1' must be >= 0"),
    ("RMU:steer=2+GD", "bad option 'steer=2'"),
  ],
)
def test_bad_options_are_one_line(loss, needle, capsys, tmp_path):
  assert tofu.main(ARGS + ["--loss", loss, "--out", str(tmp_path)]) == 2
  err = capsys.readouterr().err.strip()
  assert needle in err and "\n" not in err and not list(tmp_path.glob("checkpoints/*/full"))
