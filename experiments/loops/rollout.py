"""De-attribution's forget batches: answers sampled from the current policy, rewards, advantages.

Before each forget step of a ``DeAttr+...`` run, :class:`RolloutBatches` samples
``samples`` answers to each forget question of the batch from the current parameters
(temperature 1, a fixed number of new tokens, tokens after the first EOS masked, the
``jax.random`` key folded from the seed and the rollout count), scores them with the
frozen owner classifier (reward ``r = -sum_f C(f | y)`` over the forget owners, or
the question's own owner only, optionally floored at the oracle's attribution), and
turns rewards into advantages with a group baseline (the mean reward of the other
samples of the same question, no critic) or a value baseline (a linear critic on the
prompt's next-token log-probs, ridge-fitted on past rollouts). The rollout rides in
the step's batch dict under ``rollout``; :func:`experiments.loops.losses.deattr` takes
the PPO step on it, and the optimizer sees ``objective=FORGET`` like any other method.
Sampling, the log-probs of the samples and the critic's features are one jitted
program with static shapes.
"""

from __future__ import annotations

import dataclasses
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import dualoptim_jax
from dualoptim_jax import unlearning
from experiments.data.batching import Encoder, round_up
from experiments.data.corpus import Corpus
from experiments.loops import losses
from experiments.loops.unlearn import UnlearnBatches
from experiments.models import make_apply
from experiments.models.classifier import OwnerClassifier
from experiments.models.generate import make_generate

TEMPERATURE = 1.0


class Rollout(NamedTuple):
  """Sampled answers as a training batch (``(N, T)``, N = questions x samples).

  Attributes:
    ids: int32 left-padded prompt followed by the sampled answer.
    mask: int32 1 on real tokens (prompt and answer up to its EOS).
    targets: float32 1 on the answer tokens that count (up to and including EOS).
    old_logp: ``(N, T)`` float32 log-prob of the next token (``ids[:, t + 1]`` at ``t``; the
      last entry is unused) under the sampling policy.
    advantages: ``(N, 1)`` float32 advantage of each sampled answer.
  """

  ids: np.ndarray
  mask: np.ndarray
  targets: np.ndarray
  old_logp: np.ndarray
  advantages: np.ndarray


@dataclasses.dataclass(frozen=True)
class RolloutOptions:
  """The rollout side of ``DeAttr:key=value...`` (the loss side is ``clip`` and ``kl``).

  Attributes:
    samples: answers sampled per forget question.
    critic: 1 for the value baseline (linear critic), 0 for the group baseline.
    own: 1 to reward only the question's own owner's attribution.
    floor: 1 to stop rewarding attribution below the oracle's mean attribution.
    reuse: forget steps one rollout serves (> 1: PPO's clipping bounds the drift).
  """

  samples: int = 4
  critic: int = 0
  own: int = 0
  floor: int = 0
  reuse: int = 1

  @classmethod
  def of(cls, forget_name: str) -> RolloutOptions:
    """The options carried by a forget loss name such as ``DeAttr:samples=8:critic=1``."""
    bound = getattr(losses.FORGET_LOSSES[forget_name], "keywords", {})
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: int(v) for k, v in bound.items() if k in fields})


def rewards(attribution: np.ndarray, floor: float = 0.0) -> np.ndarray:
  """``r = -max(attribution - floor, 0)``: in ``[-1, 0]``, 0 once attribution reaches the floor.

  Example:
    >>> rewards(np.array([0.9, 0.1, 0.0]), floor=0.2).tolist()
    [-0.7, 0.0, 0.0]
  """
  return np.minimum(floor - np.asarray(attribution, np.float64), 0.0)


def group_advantages(r: np.ndarray) -> np.ndarray:
  """Leave-one-out group baseline: ``A_ij = r_ij - mean_{k != j} r_ik`` for ``r`` ``(B, G)``.

  Example:
    >>> group_advantages(np.array([[-1.0, -0.5, -0.0]])).tolist()
    [[-0.75, 0.0, 0.75]]
  """
  g = r.shape[1]
  if g < 2:
    raise ValueError("the group baseline needs >= 2 samples per question (samples=...)")
  return r - (r.sum(1, keepdims=True) - r) / (g - 1)


class ValueBaseline:
  """A linear critic ``V(x) = w . phi(x) + b`` ridge-fitted on past rollouts (decayed).

  ``phi(x)`` is the policy's next-token log-probabilities at the last prompt token.
  The baseline of a rollout comes from the critic *before* it sees that rollout's
  rewards (a sample's own reward never enters its baseline).
  """

  def __init__(self, *, ridge: float = 1.0, decay: float = 0.8):
    self.a = self.c = None
    self.ridge, self.decay = ridge, decay

  def __call__(self, phi: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Advantages ``r - V(phi)``, then one update of the critic with ``(phi, r)``.

    Example:
      >>> critic = ValueBaseline()
      >>> phi = np.array([[0.0], [1.0]])
      >>> critic(phi, np.array([-1.0, 0.0])).tolist()  # no data yet: V = 0
      [-1.0, 0.0]
      >>> for _ in range(3):  # V learns: the same rewards leave smaller advantages
      ...   print(np.round(critic(phi, np.array([-1.0, 0.0])), 2).tolist())
      [-0.6, 0.2]
      [-0.48, 0.19]
      [-0.41, 0.17]
    """
    x = np.concatenate([phi, np.ones((len(phi), 1))], axis=1).astype(np.float64)
    if self.a is None:
      self.a, self.c = np.zeros((x.shape[1], x.shape[1])), np.zeros(x.shape[1])
    w = np.linalg.solve(self.a + self.ridge * np.eye(len(self.c)), self.c)
    adv = r - x @ w
    self.a = self.decay * self.a + x.T @ x
    self.c = self.decay * self.c + x.T @ r
    return adv


class Sampler:
  """Jitted sampling of answers to forget questions, with their log-probs and critic features.

  Args:
    graphdef: the policy's ``nnx`` graph definition.
    encoder: the tokenising encoder.
    questions: the forget questions (prompts are encoded once, left-padded).
    max_new: tokens sampled per answer (static).
  """

  def __init__(self, graphdef, encoder: Encoder, questions: list[str], max_new: int):
    length = round_up(max(len(encoder.prompt(q)) for q in questions), 8)
    self.prompt_ids, self.prompt_mask = encoder.prompts(questions, length)
    self.encoder, self.max_new = encoder, max_new
    stops, pad = encoder.specials.eos, encoder.specials.pad
    generate = make_generate(graphdef, max_new, eos_id=stops, pad_id=pad, sample=True)
    apply = make_apply(graphdef)

    def run(params, ids, mask, key):
      new = generate(params, ids, mask, key, jnp.float32(TEMPERATURE))
      # An answer counts up to and including its first EOS; generate pads after it.
      is_eos = jnp.isin(new, jnp.asarray(stops, jnp.int32)).astype(jnp.int32)
      answer = (jnp.cumsum(is_eos, axis=1) - is_eos == 0).astype(jnp.int32)
      seq = jnp.concatenate([ids, new], axis=1)
      seq_mask = jnp.concatenate([mask, answer], axis=1)
      targets = jnp.concatenate([jnp.zeros_like(mask), answer], axis=1).astype(jnp.float32)
      logits = apply(params, seq, seq_mask)
      # Full-length, as the losses score (losses.shifted): entry t is log p(seq[:, t + 1]).
      old_logp = unlearning.token_log_probs(logits, jnp.roll(seq, -1, axis=1))
      phi = jax.nn.log_softmax(logits[:, ids.shape[1] - 1].astype(jnp.float32), axis=-1)
      return seq, seq_mask, targets, old_logp, phi

    self._run = jax.jit(run)

  def __call__(self, params, rows: np.ndarray, samples: int, key: jax.Array):
    """``(ids, mask, targets, old_logp, phi, texts)`` for ``samples`` answers to each row."""
    rows = np.repeat(rows, samples)
    out = self._run(params, self.prompt_ids[rows], self.prompt_mask[rows], key)
    seq, seq_mask, targets, old_logp, phi = (np.asarray(x) for x in out)
    p = self.prompt_ids.shape[1]
    texts = [self.encoder.decode(row) for row in seq[:, p:]]
    return seq, seq_mask, targets, old_logp, phi, texts


def answer_budget(encoder: Encoder, corpus: Corpus) -> int:
  """Tokens sampled per answer: the longest forget answer plus 8, rounded up to 8."""
  longest = max(
    len(encoder.pair(q.question, q.answer)[0]) - len(encoder.prompt(q.question))
    for q in corpus.forget
  )
  return round_up(longest + 8, 8)


class RolloutBatches(UnlearnBatches):
  """:class:`UnlearnBatches` plus a fresh :class:`Rollout` before forget steps (role ``rollout``).

  Args:
    corpus, encoder, roles, batch_size, seed: as :class:`UnlearnBatches` (the forget
      batch picks the questions to sample for).
    sampler: the jitted :class:`Sampler` over ``corpus.forget``'s questions.
    classifier: the frozen owner classifier (the reward).
    options: :class:`RolloutOptions`.
    floor: the oracle's mean forget attribution (used with ``options.floor``).
    full: the whole model state of the trained ``params`` (a LoRA model's adapters merged
      with its base weights); the identity by default.
  """

  def __init__(
    self,
    corpus: Corpus,
    encoder: Encoder,
    roles,
    batch_size: int,
    seed: int,
    *,
    sampler: Sampler,
    classifier: OwnerClassifier,
    options: RolloutOptions,
    floor: float = 0.0,
    full=None,
  ):
    super().__init__(corpus, encoder, roles, batch_size, seed)
    self.full = full or (lambda params: params)
    self.sampler, self.classifier, self.options = sampler, classifier, options
    self.floor = floor if options.floor else 0.0
    self.owner_rows = [classifier.owners.of_question[q.question] for q in corpus.forget]
    self.key = jax.random.key(seed)
    self.history: list[dict] = []
    self.current: Rollout | None = None
    self._age = 0
    self._forget_rows = self.idle["forget"]
    if options.critic:
      self.critic = ValueBaseline()
    elif options.samples < 2:
      raise ValueError("DeAttr's group baseline needs samples >= 2 (or critic=1)")

  def _take(self, side: str) -> np.ndarray:
    rows = super()._take(side)
    if side == "forget":
      self._forget_rows = rows
    return rows

  def next(self, objective: int, params=None) -> dict:
    """The step's batches; before a forget step (with ``params``) a rollout from ``params``."""
    b = super().next(objective)
    due = self.current is None or self._age >= self.options.reuse
    if objective == dualoptim_jax.FORGET and params is not None and due:
      self.current, self._age = self.rollout(params, self._forget_rows), 0
    if objective == dualoptim_jax.FORGET:
      self._age += 1
    b["rollout"] = self.current if self.current is not None else self._empty()
    return b

  def rollout(self, params, rows: np.ndarray) -> Rollout:
    """Samples, scores and builds the :class:`Rollout` of forget ``rows`` (logged in history)."""
    jax.block_until_ready(params)  # time the rollout, not the queued steps before it
    t0 = time.perf_counter()
    g = self.options.samples
    key = jax.random.fold_in(self.key, len(self.history))
    seq, mask, targets, old_logp, phi, texts = self.sampler(self.full(params), rows, g, key)
    own = np.repeat([self.owner_rows[i] for i in rows], g) if self.options.own else None
    attribution = self.classifier.forget_mass(texts, own)
    r = rewards(attribution, self.floor)
    if self.options.critic:
      adv = self.critic(phi, r)
    else:
      adv = group_advantages(r.reshape(-1, g)).reshape(-1)
    self.history.append(
      {
        "reward": float(r.mean()),
        "attribution": float(attribution.mean()),
        "answer_tokens": float(targets.sum(1).mean()),
        "seconds": time.perf_counter() - t0,
      }
    )
    return Rollout(seq, mask, targets, old_logp, adv.astype(np.float32)[:, None])

  def _empty(self) -> Rollout:
    n = len(self._forget_rows) * self.options.samples
    t = self.sampler.prompt_ids.shape[1] + self.sampler.max_new
    z = lambda shape, dtype: np.zeros(shape, dtype)
    return Rollout(
      z((n, t), np.int32),
      z((n, t), np.int32),
      z((n, t), np.float32),
      z((n, t - 1), np.float32),
      z((n, 1), np.float32),
    )


class Rollouts:
  """Makes the batches of ``DeAttr`` runs; one :class:`Sampler` (compiled once) per job.

  Args:
    graphdef: the policy's graph definition.
    encoder: the tokenising encoder.
    corpus: the corpus (its forget questions are the prompts).
    classifier: the frozen owner classifier.
    floor: the oracle's mean forget attribution (for ``floor=1``).
    full: trained params -> the whole model state (see :class:`RolloutBatches`).
  """

  def __init__(
    self, graphdef, encoder: Encoder, corpus: Corpus, classifier, floor: float = 0.0, full=None
  ):
    questions = [q.question for q in corpus.forget]
    self.sampler = Sampler(graphdef, encoder, questions, answer_budget(encoder, corpus))
    self.encoder, self.corpus, self.classifier, self.floor = encoder, corpus, classifier, floor
    self.full = full

  def batches(self, forget: str, retain: str, batch_size: int, seed: int) -> RolloutBatches:
    """The :class:`RolloutBatches` of one run of ``forget+retain`` (forget = ``DeAttr...``)."""
    return RolloutBatches(
      self.corpus,
      self.encoder,
      losses.roles_for(forget, retain),
      batch_size,
      seed,
      sampler=self.sampler,
      classifier=self.classifier,
      options=RolloutOptions.of(forget),
      floor=self.floor,
      full=self.full,
    )


def is_deattr(forget: str) -> bool:
  """Whether a forget loss name is de-attribution (``DeAttr`` with or without options)."""
  return forget.partition(":")[0] == "DeAttr"
