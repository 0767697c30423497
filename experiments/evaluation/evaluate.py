"""Evaluation of a model on the TOFU sets: jitted scoring, greedy decoding, membership inference.

The evaluator tokenises every (question, candidate answer) pair and every
prompt once, pads them to fixed shapes, and compiles one scoring program and
one generation program (a KV-cached ``lax.fori_loop``), which every later
evaluation of any model with the same architecture reuses. The scoring program
returns, per row, the length-normalised answer log-prob and the Min-K% and
Min-K%++ membership scores (all from :mod:`dualoptim_jax.unlearning`); the
forget answers against the corpus's holdout answers (never trained on) give
the membership-inference AUCs. :func:`references` evaluates the retain-only
oracle and the fine-tuned model once; every unlearned model is then scored
against the oracle (:meth:`References.evaluate`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dualoptim_jax import unlearning
from experiments.data.batching import Encoder, round_up
from experiments.data.corpus import QA, Corpus
from experiments.evaluation import metrics
from experiments.evaluation.attribution import tug_of_war_rouge
from experiments.models.generate import make_generate

EVAL_SETS = ("forget", "retain", "real_authors", "world_facts")


@dataclasses.dataclass
class _Rows:
  pairs: list[tuple[str, str]]  # (question, candidate)
  index: dict[tuple[str, int, str], int]  # (set, question index, kind) -> row


def _eval_sets(corpus: Corpus, limit: int | None) -> dict[str, tuple[QA, ...]]:
  sets = {
    "forget": corpus.forget,
    "retain": corpus.retain_eval,
    "real_authors": corpus.real_authors,
    "world_facts": corpus.world_facts,
  }
  return {k: v[:limit] if limit else v for k, v in sets.items()}


class Evaluator:
  """Scores and generates for one corpus with a fixed model architecture.

  Args:
    graphdef: the model's ``nnx`` graph definition.
    encoder: the tokenising :class:`~experiments.data.batching.Encoder`.
    corpus: the corpus to evaluate on.
    limit: questions evaluated per set (first ``limit``; None for all).
    batch_size: rows per compiled call.
    max_new_tokens: generation length cap.
    audit: ``audit(questions, generations) -> dict`` merged into every evaluation
      (fluency, owner attribution: :class:`experiments.evaluation.attribution.Audit`).
  """

  def __init__(
    self,
    graphdef,
    encoder: Encoder,
    corpus: Corpus,
    *,
    limit: int | None = 40,
    batch_size: int = 64,
    max_new_tokens: int = 96,
    audit=None,
  ):
    self.audit = audit
    self.sets = _eval_sets(corpus, limit)
    self.encoder, self.batch_size = encoder, batch_size
    pairs, index = [], {}
    for name, qas in self.sets.items():
      for i, qa in enumerate(qas):
        cands = [("answer", qa.answer)]
        if qa.paraphrased_answer:
          cands.append(("para", qa.paraphrased_answer))
        cands += [(f"pert{j}", p) for j, p in enumerate(qa.perturbed_answers)]
        for kind, text in cands:
          index[(name, i, kind)] = len(pairs)
          pairs.append((qa.question, text))
    # Membership-inference non-members: the holdout answers (scored only, never generated).
    self.holdout = corpus.holdout[:limit] if limit else corpus.holdout
    for i, qa in enumerate(self.holdout):
      index[("holdout", i, "answer")] = len(pairs)
      pairs.append((qa.question, qa.answer))
    self.rows = _Rows(pairs, index)
    length = min(encoder.max_pair_len(pairs), encoder.max_len)
    self.score_batch = encoder.batch(pairs, length=length)
    self.questions = [(n, i, qa) for n, qas in self.sets.items() for i, qa in enumerate(qas)]
    prompt_len = round_up(max(len(encoder.prompt(q.question)) for _, _, q in self.questions), 8)
    self.prompt_ids, self.prompt_mask = encoder.prompts(
      [q.question for _, _, q in self.questions], prompt_len
    )
    longest = max(
      len(encoder.pair(q.question, q.answer)[0]) - len(encoder.prompt(q.question))
      for _, _, q in self.questions
    )
    self.max_new = min(round_up(longest + 2, 8), max_new_tokens)

    def score(params, ids, mask, targets):
      logits = nnx.merge(graphdef, params)(ids, mask)
      # targets[:, t] marks answer token ids[:, t]: logits[:, :-1] score ids[:, 1:].
      z, y, m = logits[:, :-1], ids[:, 1:], targets[:, 1:]
      n = jnp.maximum(jnp.sum(m, axis=1), jnp.float32(1.0))
      avg_logp = unlearning.sequence_log_probs(z, y, m) / n  # also the LOSS attack's score
      min_k = unlearning.min_k_scores(z, y, m, k=metrics.MIA_K)
      min_k_pp = unlearning.min_k_plus_plus_scores(z, y, m, k=metrics.MIA_K)
      return jnp.stack([avg_logp, min_k, min_k_pp], axis=1)

    self._score = jax.jit(score)
    specials = encoder.specials  # the checkpoint's EOS ids (any of them stops) and padding
    self._generate = make_generate(graphdef, self.max_new, eos_id=specials.eos, pad_id=specials.pad)

  def _batched(self, fn, params, arrays):
    n, bs = arrays[0].shape[0], self.batch_size
    outs = []
    for lo in range(0, n, bs):
      chunk = [a[lo : lo + bs] for a in arrays]
      pad = bs - chunk[0].shape[0]
      if pad:
        chunk = [np.concatenate([c, np.repeat(c[-1:], pad, axis=0)]) for c in chunk]
      outs.append(np.asarray(fn(params, *chunk))[: bs - pad])
    return np.concatenate(outs)

  def row_scores(self, params) -> np.ndarray:
    """Per scored pair: ``[avg answer log-prob, Min-K%, Min-K%++]``, shape ``(rows, 3)``."""
    return self._batched(self._score, params, list(self.score_batch))

  def avg_nll(self, params) -> np.ndarray:
    """Average answer NLL of every scored pair."""
    return -self.row_scores(params)[:, 0]

  def generations(self, params) -> list[str]:
    """Greedy answers to every evaluated question (in ``self.questions`` order)."""
    ids = self._batched(self._generate, params, [self.prompt_ids, self.prompt_mask])
    return [self.encoder.decode(row) for row in ids]

  def __call__(
    self, params, oracle_forget_r: np.ndarray | None = None, oracle_mia: dict | None = None
  ) -> dict:
    """All metrics of ``params``.

    Args:
      params: the model parameters (``nnx.State``).
      oracle_forget_r: forget-set truth ratios of the retain-only oracle (for
        Forget Quality); None skips it.
      oracle_mia: the oracle's ``mia`` entry (for PrivLeak); None skips it.

    Returns:
      A dict: per set ``prob``, ``rouge``, ``tr`` (and ``r``, the per-question
      truth ratios, for the forget set); ``model_utility``, ``forget_efficacy``,
      ``forget_quality`` (or None), ``mia`` (AUCs of forget vs holdout answers
      by Min-K%++, Min-K% and LOSS scores, PrivLeak vs the oracle; None without
      a holdout) and a few sample generations.
    """
    scores = self.row_scores(params)
    avg_logp = scores[:, 0]
    gens = self.generations(params)
    refs = [qa.answer for _, _, qa in self.questions]
    rouge = metrics.rouge_l_recall(refs, gens)
    out: dict = {}
    offset = 0
    for name, qas in self.sets.items():
      n = len(qas)
      row = lambda i, kind, name=name: avg_logp[self.rows.index[(name, i, kind)]]
      ans = np.array([row(i, "answer") for i in range(n)])
      k = len(qas[0].perturbed_answers)
      pert = np.array([[row(i, f"pert{j}") for j in range(k)] for i in range(n)])
      para = np.array(
        [row(i, "para") if qa.paraphrased_answer else row(i, "answer") for i, qa in enumerate(qas)]
      )
      out[name], r = metrics.set_metrics(name, ans, para, pert)
      out[name]["rouge"] = float(np.mean(rouge[offset : offset + n]))
      if name == "forget":
        out[name]["r"] = r.tolist()
        out["samples"] = [
          {"question": qa.question, "answer": qa.answer, "generated": gens[offset + i]}
          for i, qa in enumerate(qas[:3])
        ]
      offset += n
    f = out["forget"]
    out["model_utility"] = unlearning.model_utility(out)
    out["forget_efficacy"] = unlearning.forget_efficacy(f["rouge"], f["prob"], f["tr"])
    out["forget_quality"] = (
      None if oracle_forget_r is None else unlearning.forget_quality(f["r"], oracle_forget_r)
    )
    out["mia"] = self._mia(scores, oracle_mia)
    if self.audit is not None:
      out.update(self.audit(self.questions, gens))
    return out

  def _mia(self, scores: np.ndarray, oracle_mia: dict | None) -> dict | None:
    if not self.holdout:
      return None
    columns = {"loss": 0, "min_k": 1, "min_k_pp": 2}
    rows = {
      "forget": [self.rows.index[("forget", i, "answer")] for i in range(len(self.sets["forget"]))],
      "holdout": [self.rows.index[("holdout", i, "answer")] for i in range(len(self.holdout))],
    }
    member = {s: scores[rows["forget"], c] for s, c in columns.items()}
    holdout = {s: scores[rows["holdout"], c] for s, c in columns.items()}
    return metrics.mia_audit(member, holdout, oracle_mia)


@dataclasses.dataclass
class References:
  """The oracle's evaluation, which every other is scored against, and the fine-tuned model's.

  Attributes:
    evaluator: the job's evaluator.
    oracle: the retain-only oracle's evaluation (forget quality 1 by definition).
    before: the fine-tuned model's evaluation (before unlearning).
  """

  evaluator: Evaluator
  oracle: dict
  before: dict = dataclasses.field(default_factory=dict)

  def evaluate(self, state) -> dict:
    """All metrics of a whole model ``state``, Forget Quality, PrivLeak and Tug-of-War included."""
    ev = self.evaluator(state, np.asarray(self.oracle["forget"]["r"]), self.oracle["mia"])
    ev["tug_of_war"] = tug_of_war_rouge(ev, self.oracle)
    return ev


def references(evaluator: Evaluator, finetuned, oracle) -> References:
  """Evaluates the whole states of the ``oracle`` and then the ``finetuned`` model."""
  oracle_ev = evaluator(oracle)
  oracle_ev["forget_quality"] = 1.0
  oracle_ev["tug_of_war"] = tug_of_war_rouge(oracle_ev, oracle_ev)
  refs = References(evaluator, oracle_ev)
  refs.before = refs.evaluate(finetuned)
  return refs
