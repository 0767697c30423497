"""Forget and retain losses, written ``FORGET+RETAIN`` (e.g. ``NPO+GD``), as experiments glue.

Every formula lives in :mod:`dualoptim_jax.unlearning`; this module only feeds it
the experiments' batches. Every loss has the signature ``loss(apply, params,
ref_params, batches)``: ``apply(params, ids, mask)`` returns logits,
``ref_params`` is the frozen reference (the fine-tuned model before unlearning)
and ``batches`` maps a role (``forget``, ``forget_idk``, ``retain``,
``retain_idk``) to a :class:`~experiments.data.batching.Batch`.

Shifting (:mod:`experiments.loops.scoring`): losses score the full-length logits
against the ids rolled left by one, with the target mask rolled the same way and 0
at the last position; question and padding positions count for no loss, the KL
retain loss included.

Hyperparameters ride on the loss name, ``NAME:key=value[:key=value...]``, e.g.
``DiPO:gamma=10:top_k=3+GD`` or ``NPO:beta=0.05+KL`` (keys in :data:`LOSSES`);
without options the defaults below apply (``beta = 0.1`` unless noted).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax

from dualoptim_jax import unlearning
from experiments.loops import rmu
from experiments.loops.scoring import (  # noqa: F401 (ce_mean, sequence_nll: used by the loops)
  ce_mean,
  drop_first,
  ref_logits,
  ref_logp,
  sequence_logp,
  sequence_nll,
  shifted,
)

BETA = 0.1
SIMNPO_BETA, SIMNPO_GAMMA = 2.5, 0.0
DIPO_GAMMA, DIPO_TOP_K = 3.0, 1
CEU_SKIP = 1  # CE-U's authors leave the first answer token out of the loss
WGA_BETA = 1.0
SATIMP_BETA1, SATIMP_BETA2 = 5.0, 1.0
# UNDIAL lowers the target's reference logit by beta. The fine-tuned models here predict the
# answer tokens with a logit margin over the runner-up of 9 (median; 10th percentile 5.6), so
# beta = 1 leaves the target on top; 10 (open-unlearning's TOFU setting) moves it below.
UNDIAL_BETA = 10.0


def ga(apply, params, ref_params, b):
  """Gradient ascent: ``-CE_mean(forget)``."""
  del ref_params
  return unlearning.gradient_ascent_loss(*shifted(apply, params, b["forget"]))


def npo(apply, params, ref_params, b, *, beta=BETA):
  """NPO on the forget set against the frozen reference."""
  logp = sequence_logp(apply, params, b["forget"])[0]
  return unlearning.npo_loss(logp, ref_logp(apply, ref_params, b["forget"]), beta=beta)


def simnpo(apply, params, ref_params, b, *, beta=SIMNPO_BETA, gamma=SIMNPO_GAMMA):
  """SimNPO on the forget set (no reference), beta 2.5, gamma 0."""
  del ref_params
  logp, n = sequence_logp(apply, params, b["forget"])
  return unlearning.simnpo_loss(logp, n, beta=beta, gamma=gamma)


def dpo(apply, params, ref_params, b, *, beta=BETA):
  """IdkDPO: prefer the refusal (``forget_idk``) to the forget answer, relative to the reference."""
  chosen = sequence_logp(apply, params, b["forget_idk"])[0]
  rejected = sequence_logp(apply, params, b["forget"])[0]
  ref_chosen = ref_logp(apply, ref_params, b["forget_idk"])
  ref_rejected = ref_logp(apply, ref_params, b["forget"])
  return unlearning.dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=beta)


def idk(apply, params, ref_params, b):
  """IDK: ``CE_mean(forget question -> refusal)``."""
  del ref_params
  return unlearning.nll_loss(*shifted(apply, params, b["forget_idk"]))


def me(apply, params, ref_params, b):
  """Maximum entropy over the forget answer positions."""
  del ref_params
  logits, _, mask = shifted(apply, params, b["forget"])
  return unlearning.maximum_entropy_loss(logits, mask)


def dipo(
  apply, params, ref_params, b, *, beta=BETA, gamma=DIPO_GAMMA, top_k=DIPO_TOP_K, mean=False
):
  """DiPO (our reconstruction) on the forget answer positions; the pair comes from the reference."""
  batch = b["forget"]
  logits, _, mask = shifted(apply, params, batch)
  ref = ref_logits(apply, ref_params, batch)
  return unlearning.dipo_loss(
    logits, ref, mask, beta=beta, gamma=gamma, top_k=top_k, length_normalize=mean
  )


def deattr(
  apply, params, ref_params, b, *, clip=0.2, kl=0.0, samples=4, critic=0, own=0, floor=0, reuse=1
):
  """De-attribution's PPO step on sampled forget answers (``b["rollout"]``, loops/rollout.py).

  Clipped surrogate on the sampled tokens' log-probs with the rollout's advantages, plus
  ``kl`` x token ``KL(p_ref || p_theta)`` on those tokens. The other options shape the
  rollout (:class:`experiments.loops.rollout.RolloutOptions`), not this loss.
  """
  del samples, critic, own, floor, reuse
  r = b["rollout"]
  logits, targets, mask = shifted(apply, params, r)
  logp = unlearning.token_log_probs(logits, targets)
  loss = unlearning.ppo_policy_loss(logp, r.old_logp, r.advantages, mask, clip_eps=clip)
  if kl:
    loss = loss + kl * unlearning.kl_loss(logits, ref_logits(apply, ref_params, r), mask)
  return loss


def ceu(apply, params, ref_params, b, *, skip=CEU_SKIP):
  """CE-U on the forget answers, the first ``skip`` answer tokens of each row left out."""
  del ref_params
  logits, targets, mask = shifted(apply, params, b["forget"])
  return unlearning.ceu_loss(logits, targets, drop_first(mask, skip))


def wga(apply, params, ref_params, b, *, beta=WGA_BETA):
  """Weighted gradient ascent on the forget answers (weights ``p ** beta``)."""
  del ref_params
  return unlearning.wga_loss(*shifted(apply, params, b["forget"]), beta=beta)


def satimp(apply, params, ref_params, b, *, beta1=SATIMP_BETA1, beta2=SATIMP_BETA2):
  """SatImp on the forget answers (weights ``p ** beta1 (1 - p) ** beta2``)."""
  del ref_params
  return unlearning.satimp_loss(*shifted(apply, params, b["forget"]), beta1=beta1, beta2=beta2)


def undial(apply, params, ref_params, b, *, beta=UNDIAL_BETA):
  """UNDIAL: distil the frozen reference with the answer token's logit lowered by ``beta``."""
  batch = b["forget"]
  logits, targets, mask = shifted(apply, params, batch)
  ref = ref_logits(apply, ref_params, batch)
  return unlearning.undial_loss(logits, ref, targets, mask, beta=beta)


def gd(apply, params, ref_params, b):
  """Gradient descent on the retain set: ``CE_mean(retain)``."""
  del ref_params
  return unlearning.nll_loss(*shifted(apply, params, b["retain"]))


def kl(apply, params, ref_params, b):
  """Token ``KL(p_ref || p_theta)`` on the retain set, mean over its answer positions."""
  batch = b["retain"]
  logits, _, mask = shifted(apply, params, batch)
  return unlearning.kl_loss(logits, ref_logits(apply, ref_params, batch), mask)


def ap(apply, params, ref_params, b, *, beta=BETA):
  """Answer preservation: keep the retain answer likelier than a refusal."""
  del ref_params
  answer = sequence_logp(apply, params, b["retain"])[0]
  refusal = sequence_logp(apply, params, b["retain_idk"])[0]
  return unlearning.answer_preservation_loss(answer, refusal, beta=beta)


LossFn = Callable[..., jax.Array]

# The hyperparameters a name may carry (``NAME:key=value``): their parsers and checks.
_POSITIVE = (float, lambda v: v > 0, "> 0")
_NONNEGATIVE = (float, lambda v: v >= 0, ">= 0")
_ANY = (float, lambda v: True, "a number")
_FLAG = (int, lambda v: v in (0, 1), "0 or 1")
_COUNT = (int, lambda v: v >= 0, "an integer >= 0")


@dataclasses.dataclass(frozen=True)
class Loss:
  """A forget or retain loss, as the registry knows it.

  Attributes:
    fn: ``fn(apply, params, ref_params, batches) -> loss`` (options as keywords).
    side: ``forget`` or ``retain``.
    roles: the batch roles it reads (the loop builds only those).
    options: the hyperparameters its name may carry, ``key -> (parser, check, wording)``.
    trainable: ``trainable(params, **options)`` -> 0/1 multipliers of the gradients and
      updates (what the method trains, for the whole run), or None to train everything.
    inherits: options a retain loss takes from the forget loss's name when its own lacks
      them (``RMU:layer=3+AM``: AM at layer 3).
  """

  fn: LossFn
  side: str
  roles: tuple[str, ...]
  options: dict[str, tuple] = dataclasses.field(default_factory=dict)
  trainable: Callable | None = None
  inherits: tuple[str, ...] = ()


# Every loss, one row each: a new loss is one row here (and its function above).
LOSSES: dict[str, Loss] = {
  "GA": Loss(ga, "forget", ("forget",)),
  "NPO": Loss(npo, "forget", ("forget",), {"beta": _POSITIVE}),
  "SimNPO": Loss(simnpo, "forget", ("forget",), {"beta": _POSITIVE, "gamma": _ANY}),
  "DPO": Loss(dpo, "forget", ("forget", "forget_idk"), {"beta": _POSITIVE}),
  "IDK": Loss(idk, "forget", ("forget_idk",)),
  "ME": Loss(me, "forget", ("forget",)),
  "DiPO": Loss(
    dipo,
    "forget",
    ("forget",),
    {
      "beta": _POSITIVE,
      "gamma": _NONNEGATIVE,
      "top_k": (int, lambda v: v >= 1, "an integer >= 1"),
      "mean": _FLAG,
    },
  ),
  # DeAttr's forget batch picks the questions; loops/rollout.py adds the "rollout" role.
  "DeAttr": Loss(
    deattr,
    "forget",
    ("forget",),
    {
      "clip": _NONNEGATIVE,
      "kl": _NONNEGATIVE,
      "samples": (int, lambda v: v >= 1, "an integer >= 1"),
      "critic": _FLAG,
      "own": _FLAG,
      "floor": _FLAG,
      "reuse": (int, lambda v: v >= 1, "an integer >= 1"),
    },
  ),
  "CEU": Loss(ceu, "forget", ("forget",), {"skip": _COUNT}),
  "WGA": Loss(wga, "forget", ("forget",), {"beta": _NONNEGATIVE}),
  "SatImp": Loss(satimp, "forget", ("forget",), {"beta1": _NONNEGATIVE, "beta2": _NONNEGATIVE}),
  "UNDIAL": Loss(undial, "forget", ("forget",), {"beta": _NONNEGATIVE}),
  # RMU trains only the MLP output projections of blocks layer-span+1 .. layer.
  "RMU": Loss(
    rmu.rmu,
    "forget",
    ("forget",),
    {"layer": _COUNT, "coeff": _NONNEGATIVE, "span": (int, lambda v: v >= 1, "an integer >= 1")},
    trainable=lambda params, layer=None, span=rmu.RMU_SPAN, **_: rmu.trainable_mask(
      params, layer, span
    ),
  ),
  "GD": Loss(gd, "retain", ("retain",)),
  "KL": Loss(kl, "retain", ("retain",)),
  "AP": Loss(ap, "retain", ("retain", "retain_idk"), {"beta": _POSITIVE}),
  "AM": Loss(rmu.am, "retain", ("retain",), {"layer": _COUNT}, inherits=("layer",)),
}


def _split(name: str) -> tuple[str, dict[str, float | int]]:
  """``"DiPO:gamma=10:top_k=3"`` -> ``("DiPO", {"gamma": 10.0, "top_k": 3})`` (base not checked)."""
  base, *items = name.split(":")
  opts: dict[str, float | int] = {}
  for item in items:
    key, sep, text = item.partition("=")
    allowed = LOSSES[base].options if base in LOSSES else {}
    if not sep or key not in allowed:
      keys = ", ".join(allowed) or "none"
      raise ValueError(f"bad option {item!r} in loss {name!r}: use key=value with keys {keys}")
    kind, ok, what = allowed[key]
    try:
      value = kind(text)
    except ValueError:
      value = None
    if value is None or not ok(value):
      raise ValueError(f"option {key}={text!r} in loss {name!r} must be {what}")
    opts[key] = value
  return base, opts


class _Registry(dict):
  """Name -> loss; a name with options (``NPO:beta=0.05``) resolves to the loss with them bound."""

  def __missing__(self, name: str) -> LossFn:
    base = name.partition(":")[0]
    if base == name or base not in self:
      raise KeyError(name)
    return functools.partial(self[base], **_split(name)[1])


def _side(side: str) -> dict[str, LossFn]:
  return _Registry({name: loss.fn for name, loss in LOSSES.items() if loss.side == side})


# Name -> loss function of each side (names with options resolve too: ``NPO:beta=0.05``).
FORGET_LOSSES: dict[str, LossFn] = _side("forget")
RETAIN_LOSSES: dict[str, LossFn] = _side("retain")


def _canonical(part: str, registry: dict, side: str, name: str) -> str:
  base, _, rest = part.partition(":")
  lookup = {k.lower(): k for k in registry}
  if base.lower() not in lookup:
    raise ValueError(f"unknown {side} loss {base!r} in {name!r}; choose from {', '.join(registry)}")
  canonical = lookup[base.lower()] + (":" + rest if rest else "")
  _split(canonical)  # checks the options
  return canonical


def parse_loss(name: str) -> tuple[str, str]:
  """Splits ``"NPO+GD"`` into ``("NPO", "GD")``, checking both names and any options.

  Options stay on the returned name (``"dipo:gamma=10+gd"`` -> ``("DiPO:gamma=10", "GD")``),
  which :data:`FORGET_LOSSES` / :data:`RETAIN_LOSSES` resolve.

  Raises:
    ValueError: the name is not ``FORGET+RETAIN`` with known parts and valid options.
  """
  parts = name.strip().split("+")
  if len(parts) != 2:
    raise ValueError(f"loss {name!r} must be written FORGET+RETAIN, e.g. NPO+GD")
  f, r = (p.strip() for p in parts)
  return (
    _canonical(f, FORGET_LOSSES, "forget", name),
    _canonical(r, RETAIN_LOSSES, "retain", name),
  )


def roles_for(forget: str, retain: str) -> tuple[str, ...]:
  """The batch roles a loss pair reads (forget-side roles first)."""
  return LOSSES[forget.partition(":")[0]].roles + LOSSES[retain.partition(":")[0]].roles


def pair(forget: str, retain: str) -> tuple[LossFn, LossFn]:
  """The forget and retain functions of a parsed pair, options bound.

  A retain loss takes the forget name's options it :attr:`Loss.inherits` unless its own name
  sets them (``RMU:layer=3+AM`` matches activations at block 3).
  """
  f_opts = _split(forget)[1]
  r_base, r_opts = _split(retain)
  taken = {k: f_opts[k] for k in LOSSES[r_base].inherits if k in f_opts and k not in r_opts}
  r_fn = RETAIN_LOSSES[retain]
  return FORGET_LOSSES[forget], functools.partial(r_fn, **taken) if taken else r_fn


def trainable(forget: str, params):
  """0/1 multipliers of what ``forget`` (a parsed name) trains in ``params``, or None (all).

  Raises:
    rmu.ModelMismatch: the options do not fit the model (e.g. a layer it lacks).
  """
  base, opts = _split(forget)
  fn = LOSSES[base].trainable
  return None if fn is None else fn(params, **opts)


def check_for_model(forget: str, retain: str, params) -> None:
  """Checks a parsed pair's model-dependent options against ``params`` (one-line errors).

  Raises:
    rmu.ModelMismatch: a layer the model lacks, or nothing the method could train.
  """
  trainable(forget, params)
  for name in (forget, retain):
    base, opts = _split(name)
    if "layer" in LOSSES[base].options:
      rmu.hidden_layer(params, opts.get("layer"))
