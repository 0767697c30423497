"""Model-agnostic unlearning objectives, TOFU metrics and membership-inference audits.

Conventions: ``logits`` ``(B, T, V)``; ``targets`` ``(B, T)`` integer ids, already
shifted (``logits[:, t]`` scores ``targets[:, t]``); ``mask`` ``(B, T)``, 1 on the
tokens that count (answer tokens), 0 elsewhere; sequence log-probs ``logp`` are
``(B,)`` sums over the masked tokens. Every loss returns a float32 scalar to
**minimise**, computed in float32 whatever the input dtype, works under ``jit``
and ``vmap``, and raises ``ValueError`` naming the argument on a shape mismatch.
Reference quantities (``ref_*``, ``old_logp``, ``advantages``) are constants.

Losses: :func:`gradient_ascent_loss` (GA), :func:`nll_loss` (GD, IDK),
:func:`npo_loss`, :func:`simnpo_loss`, :func:`dpo_loss` (IdkDPO),
:func:`answer_preservation_loss` (AP), :func:`maximum_entropy_loss` (ME),
:func:`kl_loss`, :func:`dipo_loss` (a reconstruction of DiPO),
:func:`ppo_policy_loss` (de-attribution's RL step), and open-unlearning's
:func:`ceu_loss` (CE-U), :func:`wga_loss` (WGA), :func:`satimp_loss` (SatImp),
:func:`undial_loss` (UNDIAL) and RMU's :func:`rmu_loss`, :func:`activation_mse`,
:func:`rmu_control_vector` (on a hidden state ``(B, T, D)`` instead of logits).
Audits: :func:`min_k_scores`, :func:`min_k_plus_plus_scores`, :func:`zlib_scores`,
:func:`reference_scores`, :func:`gradnorm_scores`, :func:`mia_auc`,
:func:`privleak`, :func:`tug_of_war`; memorization :func:`exact_memorization`,
:func:`extraction_strength`. TOFU metrics (numpy, on the host): :func:`probability`,
:func:`probability_with_options`, :func:`truth_ratios`, :func:`truth_ratio_forget`,
:func:`truth_ratio_retain`, :func:`forget_quality`, :func:`harmonic_mean`,
:func:`model_utility`, :func:`forget_efficacy`.
"""

from dualoptim_jax._src.dipo import dipo_loss as dipo_loss
from dualoptim_jax._src.memorization import exact_memorization as exact_memorization
from dualoptim_jax._src.memorization import extraction_strength as extraction_strength
from dualoptim_jax._src.mia import gradnorm_scores as gradnorm_scores
from dualoptim_jax._src.mia import mia_auc as mia_auc
from dualoptim_jax._src.mia import min_k_plus_plus_scores as min_k_plus_plus_scores
from dualoptim_jax._src.mia import min_k_scores as min_k_scores
from dualoptim_jax._src.mia import privleak as privleak
from dualoptim_jax._src.mia import reference_scores as reference_scores
from dualoptim_jax._src.mia import zlib_scores as zlib_scores
from dualoptim_jax._src.rl import ppo_policy_loss as ppo_policy_loss
from dualoptim_jax._src.rl import tug_of_war as tug_of_war
from dualoptim_jax._src.rmu import activation_mse as activation_mse
from dualoptim_jax._src.rmu import rmu_control_vector as rmu_control_vector
from dualoptim_jax._src.rmu import rmu_loss as rmu_loss
from dualoptim_jax._src.tofu_metrics import forget_efficacy as forget_efficacy
from dualoptim_jax._src.tofu_metrics import forget_quality as forget_quality
from dualoptim_jax._src.tofu_metrics import harmonic_mean as harmonic_mean
from dualoptim_jax._src.tofu_metrics import model_utility as model_utility
from dualoptim_jax._src.tofu_metrics import probability as probability
from dualoptim_jax._src.tofu_metrics import probability_with_options as probability_with_options
from dualoptim_jax._src.tofu_metrics import truth_ratio_forget as truth_ratio_forget
from dualoptim_jax._src.tofu_metrics import truth_ratio_retain as truth_ratio_retain
from dualoptim_jax._src.tofu_metrics import truth_ratios as truth_ratios
from dualoptim_jax._src.unlearning_losses import (
  answer_preservation_loss as answer_preservation_loss,
)
from dualoptim_jax._src.unlearning_losses import dpo_loss as dpo_loss
from dualoptim_jax._src.unlearning_losses import gradient_ascent_loss as gradient_ascent_loss
from dualoptim_jax._src.unlearning_losses import kl_loss as kl_loss
from dualoptim_jax._src.unlearning_losses import maximum_entropy_loss as maximum_entropy_loss
from dualoptim_jax._src.unlearning_losses import nll_loss as nll_loss
from dualoptim_jax._src.unlearning_losses import npo_loss as npo_loss
from dualoptim_jax._src.unlearning_losses import sequence_log_probs as sequence_log_probs
from dualoptim_jax._src.unlearning_losses import simnpo_loss as simnpo_loss
from dualoptim_jax._src.unlearning_losses import token_log_probs as token_log_probs
from dualoptim_jax._src.unlearning_targets import ceu_loss as ceu_loss
from dualoptim_jax._src.unlearning_targets import satimp_loss as satimp_loss
from dualoptim_jax._src.unlearning_targets import undial_loss as undial_loss
from dualoptim_jax._src.unlearning_targets import wga_loss as wga_loss

__all__ = (
  "activation_mse",
  "answer_preservation_loss",
  "ceu_loss",
  "dipo_loss",
  "dpo_loss",
  "exact_memorization",
  "extraction_strength",
  "forget_efficacy",
  "forget_quality",
  "gradient_ascent_loss",
  "gradnorm_scores",
  "harmonic_mean",
  "kl_loss",
  "maximum_entropy_loss",
  "mia_auc",
  "min_k_plus_plus_scores",
  "min_k_scores",
  "model_utility",
  "nll_loss",
  "npo_loss",
  "ppo_policy_loss",
  "privleak",
  "probability",
  "probability_with_options",
  "reference_scores",
  "rmu_control_vector",
  "rmu_loss",
  "satimp_loss",
  "sequence_log_probs",
  "simnpo_loss",
  "token_log_probs",
  "truth_ratio_forget",
  "truth_ratio_retain",
  "truth_ratios",
  "tug_of_war",
  "undial_loss",
  "wga_loss",
  "zlib_scores",
)
