"""TOFU metrics of dualoptim_jax.unlearning vs hand-computed values (moved from experiments)."""

import math

import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st

from dualoptim_jax import unlearning as ul


def test_truth_ratio_hand_computed():
  # P(para) = e^-1; perturbed P = e^-2, e^-4 -> GM = e^-3 -> R = e^-3 / e^-1 = e^-2.
  r = ul.truth_ratios(np.array([-1.0]), np.array([[-2.0, -4.0]]))
  assert r[0] == pytest.approx(math.exp(-2.0))
  assert ul.truth_ratio_forget(r) == pytest.approx(math.exp(-2.0))
  assert ul.truth_ratio_retain(r) == pytest.approx(1.0 - math.exp(-2.0))


def test_truth_ratio_scores_are_symmetric_and_clipped():
  r = np.array([0.5, 2.0, 4.0])
  assert ul.truth_ratio_forget(r) == pytest.approx((0.5 + 0.5 + 0.25) / 3)
  assert ul.truth_ratio_retain(r) == pytest.approx(0.5 / 3)


@settings(max_examples=20, deadline=None)
@given(st.lists(st.floats(-5, 5), min_size=1, max_size=8), st.integers(0, 2**31 - 1))
def test_truth_ratio_scores_are_invariant_to_inversion(logs, seed):
  r = np.exp(np.array(logs))
  assert ul.truth_ratio_forget(r) == pytest.approx(ul.truth_ratio_forget(1.0 / r))
  assert 0.0 < ul.truth_ratio_forget(r) <= 1.0
  # KS only sees the order: TOFU's reciprocal convention, used for both models, gives the same FQ.
  other = np.exp(np.random.default_rng(seed).normal(size=len(logs)))
  assert ul.forget_quality(r, other) == pytest.approx(ul.forget_quality(1.0 / r, 1.0 / other))


def test_ks_forget_quality():
  # Disjoint samples of 3: D = 1, exact two-sided p = 2 / C(6, 3) = 0.1.
  assert ul.forget_quality([1.0, 2.0, 3.0], [4.0, 5.0, 6.0]) == pytest.approx(0.1)
  assert ul.forget_quality([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]) == pytest.approx(1.0)
  a, b = np.random.default_rng(0).normal(size=(2, 40))
  assert ul.forget_quality(a, b) == pytest.approx(scipy.stats.ks_2samp(a, b).pvalue)


def test_harmonic_mean():
  assert ul.harmonic_mean([1.0, 0.5, 0.25]) == pytest.approx(3 / (1 + 2 + 4))
  assert ul.harmonic_mean([1.0, 0.0]) == 0.0
  assert ul.harmonic_mean([0.3, 0.7, 0.9]) == pytest.approx(scipy.stats.hmean([0.3, 0.7, 0.9]))
  with pytest.raises(ValueError, match="no values"):
    ul.harmonic_mean([])


def test_model_utility_is_hmean_of_nine():
  names = ("retain", "real_authors", "world_facts")
  sets = {s: {"prob": 0.5, "rouge": 1.0, "tr": 0.25} for s in names}
  assert ul.model_utility(sets) == pytest.approx(9 / (3 * (2 + 1 + 4)))
  del sets["world_facts"]["rouge"]
  with pytest.raises(ValueError, match=r"world_facts\.rouge"):
    ul.model_utility(sets)


def test_probabilities_and_forget_efficacy():
  assert ul.probability(np.array([0.0, -np.log(2.0)])) == pytest.approx(0.75)
  p = ul.probability_with_options(np.array([-np.log(2.0)]), np.array([[-np.log(4.0)] * 2]))
  assert p == pytest.approx(0.5 / (0.5 + 0.5))
  assert ul.forget_efficacy(0.2, 0.4, 0.9) == pytest.approx(1 - (0.2 + 0.4 + 0.1) / 3)


def test_shape_errors():
  with pytest.raises(ValueError, match=r"perturbed_logp must have shape \(questions=2, options\)"):
    ul.truth_ratios([0.0, 0.0], [[0.0, 0.0]])
  with pytest.raises(ValueError, match=r"wrong_logp must have shape \(questions=1, options\)"):
    ul.probability_with_options([0.0], [0.0, 0.0])
  with pytest.raises(ValueError, match="avg_logp must be 1-D"):
    ul.probability(np.zeros((2, 2)))
