"""TOFU metrics from per-question numbers (pure numpy / scipy; no model here).

Conventions (UNLEARNING.md section 2):

* ``avg_nll``: answer NLL divided by the number of answer tokens; the
  length-normalised probability is ``P = exp(-avg_nll)``.
* Truth ratio per question: ``R = GM_j P(perturbed_j) / P(paraphrase)``
  (``= exp(avg_nll(paraphrase) - mean_j avg_nll(perturbed_j))``). TOFU's code
  stores the reciprocal; ``min(R, 1/R)`` and the KS test do not care.
* Forget set: truth-ratio score ``mean min(R, 1/R)``; other sets
  ``mean max(0, 1 - R)``.
* Forget Quality: KS-test p-value between the forget-set ``R`` of a model and
  of the retain-only oracle. Model Utility: harmonic mean of the nine
  {retain, real authors, world facts} x {prob, ROUGE-L recall, truth ratio}.
* Forget efficacy (the DualOptim papers' untargeted FE, restricted to the
  metrics available offline): ``1 - mean(forget ROUGE-L, forget prob,
  1 - mean min(R, 1/R))``; the papers' embedding-cosine and NLI-entailment
  terms need downloaded models and are left out. Higher is more forgetting.
"""

from __future__ import annotations

import functools

import numpy as np
import scipy.stats
from rouge_score import rouge_scorer


def probability(avg_nll: np.ndarray) -> float:
  """Mean length-normalised probability ``mean exp(-avg_nll)``."""
  return float(np.mean(np.exp(-np.asarray(avg_nll, np.float64))))


def probability_with_options(true_nll: np.ndarray, wrong_nll: np.ndarray) -> float:
  """Mean ``P(true) / (P(true) + sum_j P(wrong_j))`` (real authors, world facts)."""
  p_true = np.exp(-np.asarray(true_nll, np.float64))
  p_wrong = np.exp(-np.asarray(wrong_nll, np.float64)).sum(axis=1)
  return float(np.mean(p_true / (p_true + p_wrong + 1e-10)))


def truth_ratios(para_nll: np.ndarray, perturbed_nll: np.ndarray) -> np.ndarray:
  """Per-question ``R = GM_j P(perturbed_j) / P(paraphrase)``.

  Args:
    para_nll: ``(n,)`` average NLL of the paraphrased (or true) answer.
    perturbed_nll: ``(n, k)`` average NLL of the k perturbed answers.
  """
  para = np.asarray(para_nll, np.float64)
  pert = np.asarray(perturbed_nll, np.float64).mean(axis=1)
  return np.exp(para - pert)


def truth_ratio_forget(r: np.ndarray) -> float:
  """Forget-set truth-ratio score ``mean min(R, 1/R)`` (1 = cannot tell true from false)."""
  r = np.asarray(r, np.float64)
  return float(np.mean(np.minimum(r, 1.0 / r)))


def truth_ratio_retain(r: np.ndarray) -> float:
  """Retain-like truth-ratio score ``mean max(0, 1 - R)`` (1 = true answer far likelier)."""
  return float(np.mean(np.maximum(0.0, 1.0 - np.asarray(r, np.float64))))


def forget_quality(r_model: np.ndarray, r_oracle: np.ndarray) -> float:
  """KS-test p-value between the forget-set truth ratios of a model and of the oracle."""
  return float(scipy.stats.ks_2samp(np.asarray(r_model), np.asarray(r_oracle)).pvalue)


def harmonic_mean(values) -> float:
  """Harmonic mean; 0 if any value is 0 (as scipy's ``hmean`` with zeros)."""
  v = np.asarray(list(values), np.float64)
  if np.any(v <= 0.0):
    return 0.0
  return float(len(v) / np.sum(1.0 / v))


@functools.cache
def _scorer():
  return rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)


def rouge_l_recall(references: list[str], generations: list[str]) -> np.ndarray:
  """Per-example ROUGE-L recall of ``generations`` against ``references``."""
  scorer = _scorer()
  return np.array(
    [scorer.score(r, g)["rougeL"].recall for r, g in zip(references, generations, strict=True)]
  )


def forget_efficacy(forget_rouge: float, forget_prob: float, forget_tr: float) -> float:
  """``1 - mean(ROUGE, prob, 1 - forget truth-ratio score)`` (see module docstring)."""
  return float(1.0 - np.mean([forget_rouge, forget_prob, 1.0 - forget_tr]))


def model_utility(set_metrics: dict[str, dict[str, float]]) -> float:
  """Harmonic mean of prob, ROUGE and truth ratio over retain, real authors, world facts."""
  sets, keys = ("retain", "real_authors", "world_facts"), ("prob", "rouge", "tr")
  return harmonic_mean(set_metrics[s][k] for s in sets for k in keys)
