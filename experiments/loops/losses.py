"""Forget and retain losses, written ``FORGET+RETAIN`` (e.g. ``NPO+GD``).

Every loss has the signature ``loss(apply, params, ref_params, batches)``:
``apply(params, ids, mask)`` returns logits, ``ref_params`` is the frozen
reference (the fine-tuned model before unlearning) and ``batches`` maps a role
(``forget``, ``forget_idk``, ``retain``, ``retain_idk``) to a
:class:`~experiments.data.batching.Batch`. Notation as in UNLEARNING.md: ``L(x)`` is
the summed answer NLL of a sequence, ``CE_mean`` the mean token cross-entropy
over a batch, ``beta = 0.1`` unless noted.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

BETA = 0.1
SIMNPO_BETA, SIMNPO_GAMMA = 2.5, 0.0


def token_nll(logits: jax.Array, ids: jax.Array) -> jax.Array:
  """NLL of each next token: ``(batch, seq-1)`` for predicting ``ids[:, 1:]``."""
  logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
  return -jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1)[..., 0]


def sequence_nll(apply, params, batch) -> tuple[jax.Array, jax.Array]:
  """Summed answer NLL ``L`` per sequence and the number of answer tokens."""
  logits = apply(params, batch.ids, batch.mask)
  t = batch.targets[:, 1:]
  return jnp.sum(token_nll(logits, batch.ids) * t, axis=1), jnp.sum(t, axis=1)


def ce_mean(apply, params, batch) -> jax.Array:
  """Mean token cross-entropy over all answer tokens of the batch (HF's loss)."""
  nll, n = sequence_nll(apply, params, batch)
  return jnp.sum(nll) / jnp.maximum(jnp.sum(n), jnp.float32(1.0))


def _ref_nll(apply, ref_params, batch) -> jax.Array:
  return jax.lax.stop_gradient(sequence_nll(apply, ref_params, batch)[0])


def ga(apply, params, ref_params, b):
  """Gradient ascent: ``-CE_mean(forget)``."""
  del ref_params
  return -ce_mean(apply, params, b["forget"])


def npo(apply, params, ref_params, b):
  """NPO: ``-(2/beta) mean log sigmoid(beta (L_theta - L_ref))`` on the forget set."""
  nll = sequence_nll(apply, params, b["forget"])[0]
  ref = _ref_nll(apply, ref_params, b["forget"])
  return -(2.0 / BETA) * jnp.mean(jax.nn.log_sigmoid(BETA * (nll - ref)))


def simnpo(apply, params, ref_params, b):
  """SimNPO: ``-(2/beta) mean log sigmoid(beta (L/|y| - gamma))``, beta=2.5, no reference."""
  del ref_params
  nll, n = sequence_nll(apply, params, b["forget"])
  avg = nll / jnp.maximum(n, jnp.float32(1.0))
  return -(2.0 / SIMNPO_BETA) * jnp.mean(jax.nn.log_sigmoid(SIMNPO_BETA * (avg - SIMNPO_GAMMA)))


def dpo(apply, params, ref_params, b):
  """IdkDPO: prefer the IDK answer over the forget answer, relative to the reference.

  ``Delta = log pi(idk) - log pi(forget)`` with ``log pi = -L``;
  loss ``-(2/beta) mean log sigmoid(beta (Delta_theta - Delta_ref))``.
  """
  win = -sequence_nll(apply, params, b["forget_idk"])[0]
  lose = -sequence_nll(apply, params, b["forget"])[0]
  ref_win = -_ref_nll(apply, ref_params, b["forget_idk"])
  ref_lose = -_ref_nll(apply, ref_params, b["forget"])
  delta = (win - lose) - (ref_win - ref_lose)
  return -(2.0 / BETA) * jnp.mean(jax.nn.log_sigmoid(BETA * delta))


def idk(apply, params, ref_params, b):
  """IDK: ``CE_mean(forget question -> refusal)``."""
  del ref_params
  return ce_mean(apply, params, b["forget_idk"])


def me(apply, params, ref_params, b):
  """Maximum entropy: mean over answer positions of ``KL(uniform || softmax(z_t))``."""
  del ref_params
  batch = b["forget"]
  logits = apply(params, batch.ids, batch.mask)[:, :-1].astype(jnp.float32)
  vocab = logits.shape[-1]
  logp = jnp.log(jax.nn.softmax(logits, axis=-1) + jnp.float32(1e-12))
  kl = -jnp.log(jnp.float32(vocab)) - jnp.mean(logp, axis=-1)
  t = batch.targets[:, 1:]
  return jnp.sum(kl * t) / jnp.maximum(jnp.sum(t), jnp.float32(1.0))


def gd(apply, params, ref_params, b):
  """Gradient descent on the retain set: ``CE_mean(retain)``."""
  del ref_params
  return ce_mean(apply, params, b["retain"])


def kl(apply, params, ref_params, b):
  """``KL(p_ref || p_theta)`` summed over the vocabulary, divided by batch x seq (all positions)."""
  batch = b["retain"]
  logp = jax.nn.log_softmax(apply(params, batch.ids, batch.mask).astype(jnp.float32), axis=-1)
  ref = jax.lax.stop_gradient(
    jax.nn.log_softmax(apply(ref_params, batch.ids, batch.mask).astype(jnp.float32), axis=-1)
  )
  total = jnp.sum(jnp.exp(ref) * (ref - logp))
  return total / jnp.float32(batch.ids.shape[0] * batch.ids.shape[1])


def ap(apply, params, ref_params, b):
  """Answer preservation: ``-(1/beta) mean log sigmoid(beta (L(retain_idk) - L(retain)))``."""
  del ref_params
  l_idk = sequence_nll(apply, params, b["retain_idk"])[0]
  l_ans = sequence_nll(apply, params, b["retain"])[0]
  return -(1.0 / BETA) * jnp.mean(jax.nn.log_sigmoid(BETA * (l_idk - l_ans)))


LossFn = Callable[..., jax.Array]
FORGET_LOSSES: dict[str, LossFn] = {
  "GA": ga,
  "NPO": npo,
  "SimNPO": simnpo,
  "DPO": dpo,
  "IDK": idk,
  "ME": me,
}
RETAIN_LOSSES: dict[str, LossFn] = {"GD": gd, "KL": kl, "AP": ap}
NEEDS_REFERENCE = {"NPO", "DPO", "KL"}
# Which batch roles each loss reads (the loop only builds what is needed).
ROLES = {
  "GA": ("forget",),
  "NPO": ("forget",),
  "SimNPO": ("forget",),
  "DPO": ("forget", "forget_idk"),
  "IDK": ("forget_idk",),
  "ME": ("forget",),
  "GD": ("retain",),
  "KL": ("retain",),
  "AP": ("retain", "retain_idk"),
}


def parse_loss(name: str) -> tuple[str, str]:
  """Splits ``"NPO+GD"`` into ``("NPO", "GD")``, checking both names.

  Raises:
    ValueError: the name is not ``FORGET+RETAIN`` with known parts.
  """
  parts = name.strip().split("+")
  if len(parts) != 2:
    raise ValueError(f"loss {name!r} must be written FORGET+RETAIN, e.g. NPO+GD")
  f, r = (p.strip() for p in parts)
  lookup_f = {k.lower(): k for k in FORGET_LOSSES}
  lookup_r = {k.lower(): k for k in RETAIN_LOSSES}
  if f.lower() not in lookup_f:
    choices = ", ".join(FORGET_LOSSES)
    raise ValueError(f"unknown forget loss {f!r} in {name!r}; choose from {choices}")
  if r.lower() not in lookup_r:
    choices = ", ".join(RETAIN_LOSSES)
    raise ValueError(f"unknown retain loss {r!r} in {name!r}; choose from {choices}")
  return lookup_f[f.lower()], lookup_r[r.lower()]


def roles_for(forget: str, retain: str) -> tuple[str, ...]:
  """The batch roles a loss pair reads (forget-side roles first)."""
  return ROLES[forget] + ROLES[retain]
