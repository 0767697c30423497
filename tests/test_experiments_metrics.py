"""TOFU metrics against hand-computed values."""

import math

import numpy as np
import pytest

from experiments.evaluation import metrics


def test_truth_ratio_hand_computed():
  # P(para) = e^-1; perturbed P = e^-2, e^-4 -> GM = e^-3 -> R = e^-3 / e^-1 = e^-2.
  r = metrics.truth_ratios(np.array([1.0]), np.array([[2.0, 4.0]]))
  assert r[0] == pytest.approx(math.exp(-2.0))
  assert metrics.truth_ratio_forget(r) == pytest.approx(math.exp(-2.0))
  assert metrics.truth_ratio_retain(r) == pytest.approx(1.0 - math.exp(-2.0))


def test_truth_ratio_scores_are_symmetric_and_clipped():
  r = np.array([0.5, 2.0, 4.0])
  assert metrics.truth_ratio_forget(r) == pytest.approx((0.5 + 0.5 + 0.25) / 3)
  assert metrics.truth_ratio_retain(r) == pytest.approx(0.5 / 3)


def test_ks_forget_quality():
  # Disjoint samples of 3: D = 1, exact two-sided p = 2 / C(6, 3) = 0.1.
  assert metrics.forget_quality([1.0, 2.0, 3.0], [4.0, 5.0, 6.0]) == pytest.approx(0.1)
  assert metrics.forget_quality([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]) == pytest.approx(1.0)


def test_harmonic_mean():
  assert metrics.harmonic_mean([1.0, 0.5, 0.25]) == pytest.approx(3 / (1 + 2 + 4))
  assert metrics.harmonic_mean([1.0, 0.0]) == 0.0


def test_model_utility_is_hmean_of_nine():
  sets = {
    s: {"prob": 0.5, "rouge": 1.0, "tr": 0.25} for s in ("retain", "real_authors", "world_facts")
  }
  assert metrics.model_utility(sets) == pytest.approx(9 / (3 * (2 + 1 + 4)))


def test_rouge_l_recall():
  got = metrics.rouge_l_recall(
    ["the cat sat on the mat", "Paris", "running dogs"], ["the cat on a mat", "London", "dog runs"]
  )
  # LCS "the cat on mat" = 4 of 6 reference words; no overlap; stemming: run/dog match.
  assert got[0] == pytest.approx(4 / 6)
  assert got[1] == 0.0
  assert got[2] == pytest.approx(1.0 / 2.0) or got[2] == pytest.approx(1.0)


def test_probabilities_and_forget_efficacy():
  assert metrics.probability(np.array([0.0, np.log(2.0)])) == pytest.approx(0.75)
  p = metrics.probability_with_options(np.array([np.log(2.0)]), np.array([[np.log(4.0)] * 2]))
  assert p == pytest.approx(0.5 / (0.5 + 0.5))
  assert metrics.forget_efficacy(0.2, 0.4, 0.9) == pytest.approx(1 - (0.2 + 0.4 + 0.1) / 3)
