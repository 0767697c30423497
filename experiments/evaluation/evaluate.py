"""Evaluation of a model on the TOFU sets: jitted scoring and greedy decoding.

The evaluator tokenises every (question, candidate answer) pair and every
prompt once, pads them to fixed shapes, and compiles one scoring program and
one generation program (a KV-cached ``lax.fori_loop``), which every later
evaluation of any model with the same architecture reuses.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from experiments.data import tokenizer as toklib
from experiments.data.batching import Encoder, round_up
from experiments.data.corpus import QA, Corpus
from experiments.evaluation import metrics
from experiments.loops.losses import token_nll
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
  ):
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
      t = targets[:, 1:]
      nll = jnp.sum(token_nll(logits, ids) * t, axis=1)
      return nll / jnp.maximum(jnp.sum(t, axis=1), jnp.float32(1.0))

    self._score = jax.jit(score)
    self._generate = make_generate(graphdef, self.max_new, eos_id=toklib.EOS, pad_id=toklib.PAD)

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

  def avg_nll(self, params) -> np.ndarray:
    """Average answer NLL of every scored pair."""
    return self._batched(self._score, params, list(self.score_batch))

  def generations(self, params) -> list[str]:
    """Greedy answers to every evaluated question (in ``self.questions`` order)."""
    ids = self._batched(self._generate, params, [self.prompt_ids, self.prompt_mask])
    return [toklib.decode(self.encoder.tok, row) for row in ids]

  def __call__(self, params, oracle_forget_r: np.ndarray | None = None) -> dict:
    """All metrics of ``params``.

    Args:
      params: the model parameters (``nnx.State``).
      oracle_forget_r: forget-set truth ratios of the retain-only oracle (for
        Forget Quality); None skips it.

    Returns:
      A dict: per set ``prob``, ``rouge``, ``tr`` (and ``r``, the per-question
      truth ratios, for the forget set); ``model_utility``, ``forget_efficacy``,
      ``forget_quality`` (or None) and a few sample generations.
    """
    nll = self.avg_nll(params)
    gens = self.generations(params)
    refs = [qa.answer for _, _, qa in self.questions]
    rouge = metrics.rouge_l_recall(refs, gens)
    out: dict = {}
    offset = 0
    for name, qas in self.sets.items():
      n = len(qas)
      row = lambda i, kind, name=name: nll[self.rows.index[(name, i, kind)]]
      ans = np.array([row(i, "answer") for i in range(n)])
      k = len(qas[0].perturbed_answers)
      pert = np.array([[row(i, f"pert{j}") for j in range(k)] for i in range(n)])
      para = np.array(
        [row(i, "para") if qa.paraphrased_answer else row(i, "answer") for i, qa in enumerate(qas)]
      )
      r = metrics.truth_ratios(para, pert)
      short = name in ("real_authors", "world_facts")
      prob = metrics.probability_with_options(ans, pert) if short else metrics.probability(ans)
      tr = metrics.truth_ratio_forget(r) if name == "forget" else metrics.truth_ratio_retain(r)
      out[name] = {"prob": prob, "rouge": float(np.mean(rouge[offset : offset + n])), "tr": tr}
      if name == "forget":
        out[name]["r"] = r.tolist()
        out["samples"] = [
          {"question": qa.question, "answer": qa.answer, "generated": gens[offset + i]}
          for i, qa in enumerate(qas[:3])
        ]
      offset += n
    f = out["forget"]
    out["model_utility"] = metrics.model_utility(out)
    out["forget_efficacy"] = metrics.forget_efficacy(f["rouge"], f["prob"], f["tr"])
    out["forget_quality"] = (
      None if oracle_forget_r is None else metrics.forget_quality(f["r"], oracle_forget_r)
    )
    return out
