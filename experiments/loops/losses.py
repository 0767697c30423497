"""Forget and retain losses, written ``FORGET+RETAIN`` (e.g. ``NPO+GD``), as experiments glue.

Every formula lives in :mod:`dualoptim_jax.unlearning`; this module only feeds it
the experiments' batches. Every loss has the signature ``loss(apply, params,
ref_params, batches)``: ``apply(params, ids, mask)`` returns logits,
``ref_params`` is the frozen reference (the fine-tuned model before unlearning)
and ``batches`` maps a role (``forget``, ``forget_idk``, ``retain``,
``retain_idk``) to a :class:`~experiments.data.batching.Batch`.

Shifting: ``targets[:, t] = 1`` when token ``ids[:, t]`` is an answer target, so
``logits[:, :-1]`` scores ``ids[:, 1:]`` with mask ``targets[:, 1:]`` (question
and padding positions count for no loss, the KL retain loss included).

Hyperparameters ride on the loss name, ``NAME:key=value[:key=value...]``, e.g.
``DiPO:gamma=10:top_k=3+GD`` or ``NPO:beta=0.05+KL`` (keys in :data:`LOSSES`);
without options the defaults below apply (``beta = 0.1`` unless noted).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from dualoptim_jax import unlearning

BETA = 0.1
SIMNPO_BETA, SIMNPO_GAMMA = 2.5, 0.0
DIPO_GAMMA, DIPO_TOP_K = 3.0, 1


def shifted(apply, params, batch) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Library-convention ``(logits, targets, mask)``: ``logits[:, t]`` scores ``targets[:, t]``."""
  logits = apply(params, batch.ids, batch.mask)
  return logits[:, :-1], batch.ids[:, 1:], batch.targets[:, 1:]


def _ref_logits(apply, ref_params, batch) -> jax.Array:
  return jax.lax.stop_gradient(apply(ref_params, batch.ids, batch.mask)[:, :-1])


def token_nll(logits: jax.Array, ids: jax.Array) -> jax.Array:
  """NLL of each next token: ``(batch, seq-1)`` for predicting ``ids[:, 1:]``."""
  return -unlearning.token_log_probs(logits[:, :-1], ids[:, 1:])


def sequence_logp(apply, params, batch) -> tuple[jax.Array, jax.Array]:
  """Summed answer log-prob ``log pi(y|x)`` per sequence and the number of answer tokens."""
  logits, targets, mask = shifted(apply, params, batch)
  return unlearning.sequence_log_probs(logits, targets, mask), jnp.sum(mask, axis=1)


def sequence_nll(apply, params, batch) -> tuple[jax.Array, jax.Array]:
  """Summed answer NLL ``L`` per sequence and the number of answer tokens."""
  logp, n = sequence_logp(apply, params, batch)
  return -logp, n


def ce_mean(apply, params, batch) -> jax.Array:
  """Mean token cross-entropy over all answer tokens of the batch (HF's loss)."""
  return unlearning.nll_loss(*shifted(apply, params, batch))


def _ref_logp(apply, ref_params, batch) -> jax.Array:
  return jax.lax.stop_gradient(sequence_logp(apply, ref_params, batch)[0])


def ga(apply, params, ref_params, b):
  """Gradient ascent: ``-CE_mean(forget)``."""
  del ref_params
  return unlearning.gradient_ascent_loss(*shifted(apply, params, b["forget"]))


def npo(apply, params, ref_params, b, *, beta=BETA):
  """NPO on the forget set against the frozen reference."""
  logp = sequence_logp(apply, params, b["forget"])[0]
  return unlearning.npo_loss(logp, _ref_logp(apply, ref_params, b["forget"]), beta=beta)


def simnpo(apply, params, ref_params, b, *, beta=SIMNPO_BETA, gamma=SIMNPO_GAMMA):
  """SimNPO on the forget set (no reference), beta 2.5, gamma 0."""
  del ref_params
  logp, n = sequence_logp(apply, params, b["forget"])
  return unlearning.simnpo_loss(logp, n, beta=beta, gamma=gamma)


def dpo(apply, params, ref_params, b, *, beta=BETA):
  """IdkDPO: prefer the refusal (``forget_idk``) to the forget answer, relative to the reference."""
  chosen = sequence_logp(apply, params, b["forget_idk"])[0]
  rejected = sequence_logp(apply, params, b["forget"])[0]
  ref_chosen = _ref_logp(apply, ref_params, b["forget_idk"])
  ref_rejected = _ref_logp(apply, ref_params, b["forget"])
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
  ref = _ref_logits(apply, ref_params, batch)
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
    loss = loss + kl * unlearning.kl_loss(logits, _ref_logits(apply, ref_params, r), mask)
  return loss


def gd(apply, params, ref_params, b):
  """Gradient descent on the retain set: ``CE_mean(retain)``."""
  del ref_params
  return unlearning.nll_loss(*shifted(apply, params, b["retain"]))


def kl(apply, params, ref_params, b):
  """Token ``KL(p_ref || p_theta)`` on the retain set, mean over its answer positions."""
  batch = b["retain"]
  logits, _, mask = shifted(apply, params, batch)
  return unlearning.kl_loss(logits, _ref_logits(apply, ref_params, batch), mask)


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


@dataclasses.dataclass(frozen=True)
class Loss:
  """A forget or retain loss, as the registry knows it.

  Attributes:
    fn: ``fn(apply, params, ref_params, batches) -> loss`` (options as keywords).
    side: ``forget`` or ``retain``.
    roles: the batch roles it reads (the loop builds only those).
    options: the hyperparameters its name may carry, ``key -> (parser, check, wording)``.
  """

  fn: LossFn
  side: str
  roles: tuple[str, ...]
  options: dict[str, tuple] = dataclasses.field(default_factory=dict)


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
  "GD": Loss(gd, "retain", ("retain",)),
  "KL": Loss(kl, "retain", ("retain",)),
  "AP": Loss(ap, "retain", ("retain", "retain_idk"), {"beta": _POSITIVE}),
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
