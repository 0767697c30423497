"""Metric glue for the evaluator: ROUGE-L (rouge_score) and the per-set / audit summaries.

Every formula lives in :mod:`dualoptim_jax.unlearning` (TOFU metrics, Min-K%++,
AUC, PrivLeak); this module turns per-row numbers into the dictionaries the
report reads. ROUGE-L stays here: it needs ``rouge_score``, which the library
does not depend on.
"""

from __future__ import annotations

import functools

import numpy as np
from rouge_score import rouge_scorer

from dualoptim_jax import unlearning

# Membership-inference scores of the forget and holdout answers (higher = likelier a member):
# Min-K%++, Min-K%, LOSS (mean log-prob), ZLib (that over the zlib length), Reference (that
# minus the reference model's), GradNorm (minus the mean per-leaf gradient norm).
MIA_SCORES = ("min_k_pp", "min_k", "loss", "zlib", "reference", "gradnorm")
MIA_K = 0.4  # MUSE's default fraction for Min-K% and Min-K%++


@functools.cache
def _scorer():
  return rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)


def rouge_l_recall(references: list[str], generations: list[str]) -> np.ndarray:
  """Per-example ROUGE-L recall of ``generations`` against ``references`` (stemmed)."""
  scorer = _scorer()
  return np.array(
    [scorer.score(r, g)["rougeL"].recall for r, g in zip(references, generations, strict=True)]
  )


def set_metrics(
  name: str, answer_logp: np.ndarray, para_logp: np.ndarray, perturbed_logp: np.ndarray
) -> tuple[dict[str, float], np.ndarray]:
  """Probability and truth-ratio score of one evaluation set, and its per-question ``R``.

  Args:
    name: ``forget``, ``retain``, ``real_authors`` or ``world_facts``.
    answer_logp: ``(n,)`` length-normalised log-prob of each answer.
    para_logp: ``(n,)`` the same for the paraphrase (the answer where there is none).
    perturbed_logp: ``(n, k)`` the same for the perturbed answers.
  """
  r = unlearning.truth_ratios(para_logp, perturbed_logp)
  if name in ("real_authors", "world_facts"):
    prob = unlearning.probability_with_options(answer_logp, perturbed_logp)
  else:
    prob = unlearning.probability(answer_logp)
  if name == "forget":
    tr = unlearning.truth_ratio_forget(r)
  else:
    tr = unlearning.truth_ratio_retain(r)
  return {"prob": prob, "tr": tr}, r


def mia_audit(
  member: dict[str, np.ndarray], holdout: dict[str, np.ndarray], oracle: dict | None = None
) -> dict[str, float | int | None]:
  """AUCs of separating forget answers (members) from holdout answers, and PrivLeak.

  Args:
    member: per score name in :data:`MIA_SCORES` (those given), the forget-set rows' scores.
    holdout: the same for the holdout rows (never trained on).
    oracle: the retain-only oracle's audit (its ``*_auc``), for PrivLeak; None skips it.

  Returns:
    ``{score}_auc`` for each score, ``privleak`` (Min-K%++) and ``privleak_{score}``
    against the oracle (None without it, or when its AUC is 0 or absent), and the two
    sample sizes.

  Example:
    >>> audit = mia_audit({"min_k_pp": np.array([2.0, 3.0])}, {"min_k_pp": np.array([1.0, 2.5])})
    >>> audit["min_k_pp_auc"], audit["privleak"]
    (0.75, None)
  """
  scores = [s for s in MIA_SCORES if s in member]
  out: dict[str, float | int | None] = {
    "n_member": int(len(member[scores[0]])),
    "n_holdout": int(len(holdout[scores[0]])),
  }
  for s in scores:
    out[f"{s}_auc"] = unlearning.mia_auc(member[s], holdout[s])
  for s in scores:
    key = "privleak" if s == MIA_SCORES[0] else f"privleak_{s}"
    # An oracle AUC of exactly 0 (tiny samples) leaves PrivLeak undefined: None, not a crash.
    base = None if oracle is None else oracle.get(f"{s}_auc")
    ok = base is not None and base > 0.0
    out[key] = unlearning.privleak(out[f"{s}_auc"], base) if ok else None
  return out
