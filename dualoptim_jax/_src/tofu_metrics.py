"""TOFU metrics (Maini et al., 2024) from per-question answer log-probabilities (numpy / scipy).

Inputs are length-normalised answer log-probabilities ``avg_logp`` =
``sequence_log_probs / number of answer tokens`` (so ``P = exp(avg_logp)`` is the
geometric-mean token probability of an answer). Results are Python floats
(float64), computed on the host after the model has scored the answers.

* Truth ratio per question: ``R = GM_j P(perturbed_j) / P(paraphrase)``. TOFU's code
  stores the reciprocal; ``min(R, 1/R)`` and the KS test do not care.
* Forget Quality: two-sample KS-test p-value between the forget-set ``R`` of a model
  and of the retain-only oracle. Model Utility: harmonic mean of the nine
  {retain, real authors, world facts} x {probability, ROUGE-L recall, truth ratio}.
* Forget efficacy: the DualOptim papers' untargeted FE restricted to what runs
  offline, ``1 - mean(forget ROUGE-L, forget prob, 1 - mean min(R, 1/R))``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import scipy.stats
from jax.typing import ArrayLike

UTILITY_SETS = ("retain", "real_authors", "world_facts")
UTILITY_KEYS = ("prob", "rouge", "tr")


def _vector(name: str, x) -> np.ndarray:
  a = np.asarray(x, np.float64)
  if a.ndim != 1:
    raise ValueError(f"{name} must be 1-D (one value per question), got shape {a.shape}")
  return a


def _per_question_options(name: str, x, n: int) -> np.ndarray:
  a = np.asarray(x, np.float64)
  if a.ndim != 2 or a.shape[0] != n:
    raise ValueError(f"{name} must have shape (questions={n}, options), got shape {a.shape}")
  return a


def probability(avg_logp: ArrayLike) -> float:
  """Mean length-normalised answer probability ``mean_i exp(avg_logp_i)`` (retain, forget sets).

  Example:
    >>> import numpy as np
    >>> from dualoptim_jax import unlearning
    >>> unlearning.probability([0.0, -np.log(2.0)])
    0.75
  """
  return float(np.mean(np.exp(_vector("avg_logp", avg_logp))))


def probability_with_options(true_logp: ArrayLike, wrong_logp: ArrayLike) -> float:
  """Probability of the true answer among the options (real authors, world facts).

  ``mean_i P(true_i) / (P(true_i) + sum_j P(wrong_ij) + 1e-10)`` with ``P = exp(avg_logp)``.

  Args:
    true_logp: ``(n,)`` length-normalised log-prob of each true answer.
    wrong_logp: ``(n, k)`` the same for the k wrong options.

  Example:
    >>> import numpy as np
    >>> from dualoptim_jax import unlearning
    >>> round(unlearning.probability_with_options([-np.log(2.0)], [[-np.log(4.0)] * 2]), 6)
    0.5
  """
  p_true = np.exp(_vector("true_logp", true_logp))
  p_wrong = np.exp(_per_question_options("wrong_logp", wrong_logp, p_true.size)).sum(axis=1)
  return float(np.mean(p_true / (p_true + p_wrong + 1e-10)))


def truth_ratios(para_logp: ArrayLike, perturbed_logp: ArrayLike) -> np.ndarray:
  """Per-question truth ratio ``R_i = GM_j P(perturbed_ij) / P(paraphrase_i)``.

  ``R_i = exp(mean_j perturbed_logp_ij - para_logp_i)``.

  Args:
    para_logp: ``(n,)`` length-normalised log-prob of the paraphrased answer (or of the
      true answer for sets without paraphrases).
    perturbed_logp: ``(n, k)`` the same for the k perturbed (wrong) answers.

  Returns:
    ``(n,)`` float64.

  Example:
    >>> from dualoptim_jax import unlearning
    >>> r = unlearning.truth_ratios([-1.0], [[-2.0, -4.0]])  # e^-3 / e^-1
    >>> round(float(r[0]), 6)
    0.135335
  """
  para = _vector("para_logp", para_logp)
  pert = _per_question_options("perturbed_logp", perturbed_logp, para.size)
  return np.exp(pert.mean(axis=1) - para)


def truth_ratio_forget(r: ArrayLike) -> float:
  """Forget-set truth-ratio score ``mean_i min(R_i, 1/R_i)`` (1 = cannot tell true from false).

  Example:
    >>> from dualoptim_jax import unlearning
    >>> unlearning.truth_ratio_forget([0.5, 2.0, 4.0])  # (0.5 + 0.5 + 0.25) / 3
    0.4166666666666667
  """
  r = _vector("r", r)
  return float(np.mean(np.minimum(r, 1.0 / r)))


def truth_ratio_retain(r: ArrayLike) -> float:
  """Retain-like truth-ratio score ``mean_i max(0, 1 - R_i)`` (1 = true answer far likelier).

  Example:
    >>> from dualoptim_jax import unlearning
    >>> unlearning.truth_ratio_retain([0.5, 2.0, 4.0])
    0.16666666666666666
  """
  return float(np.mean(np.maximum(0.0, 1.0 - _vector("r", r))))


def forget_quality(r_model: ArrayLike, r_oracle: ArrayLike) -> float:
  """Forget Quality: two-sample KS-test p-value between forget-set truth ratios.

  ``FQ = p-value of KS(R_model, R_oracle)`` (scipy's ``ks_2samp``, exact for small
  samples); the oracle is the model trained on the retain set only. High = the model's
  truth ratios are distributed like a model that never saw the forget set.

  Example:
    >>> from dualoptim_jax import unlearning
    >>> round(unlearning.forget_quality([1.0, 2.0, 3.0], [4.0, 5.0, 6.0]), 6)  # 2 / C(6, 3)
    0.1
  """
  a, b = _vector("r_model", r_model), _vector("r_oracle", r_oracle)
  return float(scipy.stats.ks_2samp(a, b).pvalue)


def harmonic_mean(values: Iterable[float]) -> float:
  """Harmonic mean ``n / sum_i 1/x_i``; 0 if any value is <= 0 (as scipy's ``hmean`` with zeros).

  Example:
    >>> from dualoptim_jax import unlearning
    >>> round(unlearning.harmonic_mean([1.0, 0.5, 0.25]), 6)  # 3 / (1 + 2 + 4)
    0.428571
  """
  v = np.asarray(list(values), np.float64)
  if v.size == 0:
    raise ValueError("harmonic_mean of no values")
  if np.any(v <= 0.0):
    return 0.0
  return float(v.size / np.sum(1.0 / v))


def model_utility(
  set_metrics: Mapping[str, Mapping[str, float]],
  sets: tuple[str, ...] = UTILITY_SETS,
  keys: tuple[str, ...] = UTILITY_KEYS,
) -> float:
  """Model Utility: harmonic mean of ``set_metrics[s][k]`` over ``sets`` x ``keys``.

  TOFU's nine numbers: {retain, real authors, world facts} x {probability, ROUGE-L
  recall, truth-ratio score}.

  Example:
    >>> from dualoptim_jax import unlearning
    >>> sets = {s: {"prob": 0.5, "rouge": 1.0, "tr": 0.25}
    ...         for s in ("retain", "real_authors", "world_facts")}
    >>> round(unlearning.model_utility(sets), 6)  # 9 / (3 (2 + 1 + 4))
    0.428571
  """
  missing = [f"{s}.{k}" for s in sets for k in keys if k not in set_metrics.get(s, {})]
  if missing:
    raise ValueError(f"model_utility needs {', '.join(missing)}")
  return harmonic_mean(set_metrics[s][k] for s in sets for k in keys)


def forget_efficacy(forget_rouge: float, forget_prob: float, forget_tr: float) -> float:
  """Untargeted forget efficacy, offline terms: ``1 - mean(ROUGE, prob, 1 - truth-ratio score)``.

  ``forget_tr`` is :func:`truth_ratio_forget` (so ``1 - forget_tr`` is the DualOptim
  papers' forget truth ratio: larger = more knowledge). The papers' embedding-cosine and
  NLI-entailment terms need downloaded models and are left out. Higher = more forgetting.

  Example:
    >>> from dualoptim_jax import unlearning
    >>> round(unlearning.forget_efficacy(0.2, 0.4, 0.9), 6)  # 1 - (0.2 + 0.4 + 0.1) / 3
    0.766667
  """
  return float(1.0 - np.mean([forget_rouge, forget_prob, 1.0 - forget_tr]))
