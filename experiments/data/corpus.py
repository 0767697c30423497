"""Question/answer records and the corpus bundle every phase reads.

A :class:`Corpus` holds the TOFU-shaped sets: the forget split (with
paraphrased and perturbed answers for the truth ratio), the retain set used
for training and for the unlearning retain batches, the retain evaluation set,
the two utility sets (real authors, world facts), the "I don't know"
refusals used by IDK-style losses, and a holdout of forget-like QA that no
model trains on (the non-members of the membership-inference audit).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

SPLITS = {"forget01": 0.01, "forget05": 0.05, "forget10": 0.10}


class DataError(ValueError):
  """A data source is missing, malformed or inconsistent (message names it)."""


@dataclasses.dataclass(frozen=True)
class QA:
  """One question/answer pair.

  Attributes:
    question: the question.
    answer: the reference answer (trained on; ROUGE reference).
    paraphrased_answer: a correct paraphrase (truth-ratio denominator), or None.
    perturbed_answers: wrong answers in the same style (truth-ratio numerator).
  """

  question: str
  answer: str
  paraphrased_answer: str | None = None
  perturbed_answers: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Corpus:
  """Everything one experiment reads.

  Attributes:
    name: a short description (source, split, task).
    forget: the forget split.
    retain: the retain set (fine-tuning and unlearning retain batches).
    retain_eval: retain questions with paraphrased/perturbed answers.
    real_authors: utility set (short answer + 3 perturbed).
    world_facts: utility set (short answer + 3 perturbed).
    idk: refusal sentences (IDK / DPO / AP targets).
    notes: how the corpus was built (subsampling etc.), for the report.
    holdout: QA of the same kind as the forget set that no model trains on: the
      non-members of the membership-inference audit. Not part of any training
      set, of :meth:`texts` (tokenizer) or of :meth:`fingerprint` (checkpoint key).
  """

  name: str
  forget: tuple[QA, ...]
  retain: tuple[QA, ...]
  retain_eval: tuple[QA, ...]
  real_authors: tuple[QA, ...]
  world_facts: tuple[QA, ...]
  idk: tuple[str, ...]
  notes: str = ""
  holdout: tuple[QA, ...] = ()

  def full_train(self) -> tuple[QA, ...]:
    """Fine-tuning set of the original model: forget + retain + utility sets."""
    return self.forget + self.oracle_train()

  def oracle_train(self) -> tuple[QA, ...]:
    """Fine-tuning set of the retain-only oracle (everything but the forget split)."""
    return self.retain + self.real_authors + self.world_facts

  def fingerprint(self) -> str:
    """A short hash of the training content (keys the checkpoint cache)."""
    blob = json.dumps(
      [dataclasses.asdict(q) for q in self.full_train()] + [len(self.forget)], sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:12]

  def texts(self) -> list[str]:
    """Every string the tokenizer should cover."""
    out = list(self.idk)
    for q in self.full_train() + self.retain_eval:
      out += [q.question, q.answer, *(q.perturbed_answers)]
      if q.paraphrased_answer:
        out.append(q.paraphrased_answer)
    return out


def check_split(split: str) -> float:
  """The forget fraction of ``split`` (``forget01``, ``forget05``, ``forget10``)."""
  if split not in SPLITS:
    raise DataError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
  return SPLITS[split]
