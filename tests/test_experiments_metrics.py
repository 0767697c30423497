"""Metric glue: ROUGE-L recall (rouge_score), per-set summaries and the membership audit.

The TOFU formulas themselves are tested in tests/test_unlearning_metrics.py.
"""

import math

import numpy as np
import pytest

from experiments.evaluation import metrics, report


def test_rouge_l_recall():
  got = metrics.rouge_l_recall(
    ["the cat sat on the mat", "Paris", "running dogs"], ["the cat on a mat", "London", "dog runs"]
  )
  # LCS "the cat on mat" = 4 of 6 reference words; no overlap; stemming: run/dog match.
  assert got[0] == pytest.approx(4 / 6)
  assert got[1] == 0.0
  assert got[2] == pytest.approx(1.0 / 2.0) or got[2] == pytest.approx(1.0)


def test_set_metrics_forget_and_options():
  ans, para, pert = np.array([-1.0]), np.array([-1.0]), np.array([[-2.0, -4.0]])
  out, r = metrics.set_metrics("forget", ans, para, pert)
  assert r[0] == pytest.approx(math.exp(-2.0))
  assert out == pytest.approx({"prob": math.exp(-1.0), "tr": math.exp(-2.0)})
  out, _ = metrics.set_metrics("retain", ans, para, pert)
  assert out["tr"] == pytest.approx(1 - math.exp(-2.0))
  out, _ = metrics.set_metrics("world_facts", ans, ans, pert)
  p = math.exp(-1.0)
  assert out["prob"] == pytest.approx(p / (p + math.exp(-2.0) + math.exp(-4.0)))


def test_mia_audit_and_privleak():
  member = {s: np.array([3.0, 2.0, 1.0]) for s in metrics.MIA_SCORES}
  holdout = {s: np.array([1.0, 0.0]) for s in metrics.MIA_SCORES}
  out = metrics.mia_audit(member, holdout)
  assert out["min_k_pp_auc"] == pytest.approx(5.5 / 6) and out["privleak"] is None
  assert (out["n_member"], out["n_holdout"]) == (3, 2)
  oracle = {f"{s}_auc": 0.5 for s in metrics.MIA_SCORES}
  out = metrics.mia_audit(member, holdout, oracle)
  assert out["privleak"] == pytest.approx(100 * (5.5 / 6 - 0.5) / 0.5)
  assert out["privleak_loss"] == out["privleak"]
  assert metrics.mia_audit(member, holdout, dict(oracle, min_k_pp_auc=0.0))["privleak"] is None


def _run(loss, opt, lr, seed, fq, mu, auc):
  ev = {
    "forget_quality": fq,
    "model_utility": mu,
    "forget_efficacy": 0.5,
    "forget": {"rouge": 0.1, "prob": 0.2},
    "retain": {"rouge": 0.9},
    "mia": {"min_k_pp_auc": auc, "privleak": 100 * (auc - 0.5) / 0.5},
  }
  return {
    "loss": loss,
    "optimizer": opt,
    "lr": lr,
    "seed": seed,
    "eval": ev,
    "wall_s": 1.0,
    "state_bytes": 8,
  }


def test_report_grid_and_summary_carry_the_audit():
  runs = [
    _run("DiPO+GD", "adamw", lr, s, 0.3, 0.8, 0.4 + 0.1 * s) for lr in (1e-3, 3e-3) for s in (0, 1)
  ]
  rows = report.aggregate(runs)
  assert rows[0]["privleak"][0] == pytest.approx(-10.0)
  grid = report.lr_grid(rows, "DiPO+GD")
  assert "| adamw | 0.30±0.00 / 0.80±0.00 / 0.50±0.00 / -10±10 |" in grid
  summary = report.tradeoff_summary(rows, mu_before=0.8)
  assert "0.450 ± 0.050" in summary and "-10.0 ± 10.0" in summary
  # Evaluations from before the audit existed still aggregate (NaN -> "-").
  del runs[0]["eval"]["mia"]
  assert "| -" in report.markdown_table(report.aggregate(runs[:1]), {})
