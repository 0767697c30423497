"""Evaluation of a model on the TOFU sets: jitted scoring, greedy decoding, membership inference.

The evaluator tokenises every (question, candidate answer) pair and every
prompt once, pads them to fixed shapes, and compiles one scoring program and
one generation program (a KV-cached ``lax.fori_loop``), which every later
evaluation of any model with the same architecture reuses. The scoring program
returns, per row, the length-normalised answer log-prob, the Min-K% and Min-K%++
membership scores, exact memorization and extraction strength (all from
:mod:`dualoptim_jax.unlearning`); the forget answers against the corpus's holdout
answers (never trained on) give the membership-inference AUCs, with the ZLib and
Reference scores from the same log-probs and the GradNorm score from one gradient
per answer (:data:`GRADNORM_BYTES` bounds the gradients held at once).
:func:`references` evaluates the retain-only oracle and the fine-tuned model once;
every unlearned model is then scored against the oracle (:meth:`References.evaluate`),
which is also the Reference attack's reference model.

Token masks: the log-prob, LOSS, Min-K%, Min-K%++, ZLib, Reference and GradNorm
scores read every answer token and the final EOS (the mask the losses train on);
exact memorization and extraction strength leave the EOS out, as open-unlearning
does: every model, the oracle included, predicts it, so it would only dilute them.
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
from experiments.loops.scoring import next_mask, next_tokens
from experiments.models.generate import make_generate

EVAL_SETS = ("forget", "retain", "real_authors", "world_facts")
# Columns of Evaluator.row_scores.
SCORE_COLUMNS = ("loss", "min_k", "min_k_pp", "em", "es")
# GradNorm holds one gradient per example of a vmapped chunk: at most this many bytes of them.
GRADNORM_BYTES = 2**28


def without_last(mask: jax.Array) -> jax.Array:
  """``mask`` without each row's last masked position (the answer's EOS).

  Example:
    >>> without_last(jnp.array([[0.0, 1.0, 1.0, 1.0, 0.0]])).tolist()
    [[0.0, 1.0, 1.0, 0.0, 0.0]]
  """
  after = jnp.cumsum((mask > 0)[:, ::-1].astype(jnp.int32), axis=1)[:, ::-1]
  return jnp.where(after > 1, mask, jnp.zeros_like(mask))


def answer_nll(graphdef):
  """``nll(params, (ids, mask, targets))``: one example's mean answer NLL (GradNorm's loss)."""

  def nll(params, example):
    ids, mask, targets = example
    logits = nnx.merge(graphdef, params)(ids[None], mask[None])
    return unlearning.nll_loss(logits, next_tokens(ids[None]), next_mask(targets[None]))

  return nll


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
      z = nnx.merge(graphdef, params)(ids, mask)
      # targets[:, t] marks answer token ids[:, t]: logits[:, t] scores ids[:, t + 1].
      y, m = next_tokens(ids), next_mask(targets)
      n = jnp.maximum(jnp.sum(m, axis=1), jnp.float32(1.0))
      avg_logp = unlearning.sequence_log_probs(z, y, m) / n  # also the LOSS attack's score
      min_k = unlearning.min_k_scores(z, y, m, k=metrics.MIA_K)
      min_k_pp = unlearning.min_k_plus_plus_scores(z, y, m, k=metrics.MIA_K)
      em = unlearning.exact_memorization(z, y, without_last(m))
      es = unlearning.extraction_strength(z, y, without_last(m))
      return jnp.stack([avg_logp, min_k, min_k_pp, em, es], axis=1)

    self._score = jax.jit(score)
    # GradNorm: one gradient per forget and holdout answer, in chunks that bound their memory.
    nll = answer_nll(graphdef)
    self._gradnorm = jax.jit(lambda p, *ex: unlearning.gradnorm_scores(nll, p, tuple(ex)))
    self.mia_rows = {
      "forget": [index[("forget", i, "answer")] for i in range(len(self.sets["forget"]))],
      "holdout": [index[("holdout", i, "answer")] for i in range(len(self.holdout))],
    }
    self.mia_texts = {
      "forget": [qa.answer for qa in self.sets["forget"]],
      "holdout": [qa.answer for qa in self.holdout],
    }
    specials = encoder.specials  # the checkpoint's EOS ids (any of them stops) and padding
    self._generate = make_generate(graphdef, self.max_new, eos_id=specials.eos, pad_id=specials.pad)

  def _batched(self, fn, params, arrays, batch_size: int | None = None):
    n, bs = arrays[0].shape[0], batch_size or self.batch_size
    outs = []
    for lo in range(0, n, bs):
      chunk = [a[lo : lo + bs] for a in arrays]
      pad = bs - chunk[0].shape[0]
      if pad:
        chunk = [np.concatenate([c, np.repeat(c[-1:], pad, axis=0)]) for c in chunk]
      outs.append(np.asarray(fn(params, *chunk))[: bs - pad])
    return np.concatenate(outs)

  def row_scores(self, params) -> np.ndarray:
    """Per scored pair, the :data:`SCORE_COLUMNS`: ``[avg answer log-prob, Min-K%, Min-K%++,
    exact memorization, extraction strength]``, shape ``(rows, 5)``."""
    return self._batched(self._score, params, list(self.score_batch))

  def gradnorm_scores(self, params) -> dict[str, np.ndarray]:
    """GradNorm scores (minus the mean per-leaf gradient norm) of the forget and holdout answers.

    One gradient of the mean answer NLL per answer, vmapped over chunks of at most
    :data:`GRADNORM_BYTES` of gradients (16 answers of the in-house models, 1 of SmolLM2).
    """
    n_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))
    chunk = int(np.clip(GRADNORM_BYTES // max(n_bytes, 1), 1, 16))
    rows = self.mia_rows["forget"] + self.mia_rows["holdout"]
    arrays = [a[rows] for a in self.score_batch]
    scores = self._batched(self._gradnorm, params, arrays, chunk)
    n = len(self.mia_rows["forget"])
    return {"forget": scores[:n], "holdout": scores[n:]}

  def avg_nll(self, params) -> np.ndarray:
    """Average answer NLL of every scored pair."""
    return -self.row_scores(params)[:, 0]

  def generations(self, params) -> list[str]:
    """Greedy answers to every evaluated question (in ``self.questions`` order)."""
    ids = self._batched(self._generate, params, [self.prompt_ids, self.prompt_mask])
    return [self.encoder.decode(row) for row in ids]

  def __call__(
    self,
    params,
    oracle_forget_r: np.ndarray | None = None,
    oracle_mia: dict | None = None,
    reference: np.ndarray | None = None,
  ) -> dict:
    """All metrics of ``params``.

    Args:
      params: the model parameters (``nnx.State``).
      oracle_forget_r: forget-set truth ratios of the retain-only oracle (for
        Forget Quality); None skips it.
      oracle_mia: the oracle's ``mia`` entry (for PrivLeak); None skips it.
      reference: the reference model's :meth:`row_scores` (the Reference attack);
        None: ``params`` is its own reference (every score 0, AUC 0.5).

    Returns:
      A dict: per set ``prob``, ``rouge``, ``tr``, ``em`` and ``es`` (exact
      memorization and extraction strength of the answers; and ``r``, the
      per-question truth ratios, for the forget set); ``model_utility``,
      ``forget_efficacy``, ``forget_quality`` (or None), ``mia`` (AUCs of forget vs
      holdout answers by Min-K%++, Min-K%, LOSS, ZLib, Reference and GradNorm
      scores, PrivLeak vs the oracle; None without a holdout) and a few sample
      generations.
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
      for col in ("em", "es"):
        rows = [self.rows.index[(name, i, "answer")] for i in range(n)]
        out[name][col] = float(np.nanmean(scores[rows, SCORE_COLUMNS.index(col)]))
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
    out["mia"] = self._mia(params, scores, oracle_mia, reference)
    if self.audit is not None:
      out.update(self.audit(self.questions, gens))
    return out

  def _mia(self, params, scores, oracle_mia: dict | None, reference) -> dict | None:
    if not self.holdout:
      return None
    ref = scores if reference is None else reference
    by_set = {}
    for side, rows in self.mia_rows.items():
      avg_logp = scores[rows, 0]
      by_set[side] = {
        s: scores[rows, SCORE_COLUMNS.index(s)] for s in ("loss", "min_k", "min_k_pp")
      }
      by_set[side]["zlib"] = np.asarray(unlearning.zlib_scores(avg_logp, self.mia_texts[side]))
      by_set[side]["reference"] = np.asarray(unlearning.reference_scores(avg_logp, ref[rows, 0]))
    for side, values in self.gradnorm_scores(params).items():
      by_set[side]["gradnorm"] = values
    return metrics.mia_audit(by_set["forget"], by_set["holdout"], oracle_mia)


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
  reference: np.ndarray | None = None

  def evaluate(self, state) -> dict:
    """All metrics of a whole model ``state``, Forget Quality, PrivLeak and Tug-of-War included."""
    r = np.asarray(self.oracle["forget"]["r"])
    ev = self.evaluator(state, r, self.oracle["mia"], self.reference)
    ev["tug_of_war"] = tug_of_war_rouge(ev, self.oracle)
    return ev


def references(evaluator: Evaluator, finetuned, oracle=None) -> References:
  """Evaluates the whole states of the ``oracle`` and then the ``finetuned`` model.

  The oracle is the Reference attack's reference model (its own Reference AUC is 0.5 by
  construction). Without an oracle (None) the fine-tuned model stands in for it: the
  reference model, and the model Forget Quality and PrivLeak compare with.
  """
  ref_model = finetuned if oracle is None else oracle
  reference = evaluator.row_scores(ref_model)
  oracle_ev = evaluator(ref_model, reference=reference)
  oracle_ev["forget_quality"] = 1.0
  oracle_ev["tug_of_war"] = tug_of_war_rouge(oracle_ev, oracle_ev)
  refs = References(evaluator, oracle_ev, reference=reference)
  refs.before = refs.evaluate(finetuned)
  return refs
