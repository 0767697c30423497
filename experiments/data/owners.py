"""Data owners of a TOFU-shaped corpus (owner = author), author-name masking, classifier data.

On TOFU-shaped data every author owns a block of :data:`QA_PER_OWNER` consecutive
question/answer pairs (TOFU's layout, kept by the generated corpus and by the
TOFU loader's forget and retain sets). An author's name is read off the block's
questions: the longest run of capitalised words that occurs in the most questions
(the generated questions are templates around the exact name; TOFU's name most of
its author's questions). Everything that is not an author's (the real-authors and
world-facts answers, the refusals) belongs to one extra class, "other".

Names are masked before an owner classifier sees a text: otherwise even the
retain-only oracle, which repeats the name from the question, could never reach zero
attribution, and a policy could lower its attribution for free by dropping the name.
"""

from __future__ import annotations

import collections
import dataclasses
import re

from experiments.data.corpus import QA, Corpus, DataError

QA_PER_OWNER = 20
NAME_MASK = "[NAME]"
OTHER = "other"
_WORD = r"\(?[A-Z][\w'\-]*\)?"  # "(Alex)" in "Alejandro (Alex) Fuentes"
_PARTICLE = (
  r"(?:van|von|der|den|de|da|del|di|du|la|le|bin|ibn|al|el|dos|das)"  # Isabella van Pletzen
)
_RUN = re.compile(rf"{_WORD}(?: (?:{_PARTICLE} )*{_WORD})*")
_MIN_PART = 3  # shorter name parts ("Al", "Li") are too often other words to mask alone


def _words(run: str) -> list[str]:
  return [w[:-2] if w.endswith("'s") else w for w in run.split(" ")]


def author_name(questions: list[str]) -> str | None:
  """The author name of one owner's questions: the most frequent run of >= 2 capitalised words.

  Ties go to the longer run (``Basil Mahfouz Al-Kuwaiti`` over ``Basil Mahfouz``). None
  when no run occurs in a quarter of the questions (one TOFU author is only ever "the
  fictitious author": there is no name to mask).

  Example:
    >>> author_name(["Where was Kalo Mirane born?", "What is the hobby of Kalo Mirane?"])
    'Kalo Mirane'
  """
  counts: collections.Counter[str] = collections.Counter()
  for q in questions:
    grams = set()
    for run in _RUN.findall(q):
      words = _words(run)
      for i in range(len(words)):
        for j in range(i + 2, len(words) + 1):
          grams.add(" ".join(words[i:j]))
    counts.update(grams)
  if not counts:
    return None
  name, n = max(counts.items(), key=lambda kv: (kv[1], len(kv[0])))
  return name if n * 4 >= len(questions) else None


def name_pattern(names: list[str | None]) -> re.Pattern:
  """A regex for every full name and every name part of >= 3 letters (whole words, longest first).

  Example:
    >>> name_pattern(["Nikolai Abilov"]).sub("[NAME]", "Abilov's parents met Nikolai Abilov.")
    "[NAME]'s parents met [NAME]."
  """
  variants = set()
  for name in filter(None, names):
    variants.add(name)
    parts = (p.strip("()") for p in name.split(" "))
    variants.update(p for p in parts if len(p) >= _MIN_PART and p[0].isupper())
  alternatives = "|".join(re.escape(v) for v in sorted(variants, key=len, reverse=True))
  return re.compile(rf"(?<![\w\-])(?:{alternatives})(?![\w\-])")


@dataclasses.dataclass(frozen=True)
class Owners:
  """The owners of a corpus and the classes an owner classifier predicts.

  Classes ``0 .. len(names) - 1`` are the authors (forget authors first), class
  ``len(names)`` is :data:`OTHER`.

  Attributes:
    names: author name per owner (None where the questions never name the author).
    n_forget: the first ``n_forget`` owners are the forget set's authors.
    of_question: owner class of every forget and retain question.
  """

  names: tuple[str | None, ...]
  n_forget: int
  of_question: dict[str, int]

  @property
  def n_classes(self) -> int:
    """Number of classes: the authors and "other"."""
    return len(self.names) + 1

  @property
  def other(self) -> int:
    """The class of text that is no author's."""
    return len(self.names)

  @property
  def forget(self) -> tuple[int, ...]:
    """The forget owners' classes."""
    return tuple(range(self.n_forget))

  def mask(self, text: str) -> str:
    """``text`` with every owner's name (full name and parts) replaced by :data:`NAME_MASK`."""
    return _pattern(self.names).sub(NAME_MASK, text)


_PATTERNS: dict[tuple[str | None, ...], re.Pattern] = {}


def _pattern(names: tuple[str | None, ...]) -> re.Pattern:
  if names not in _PATTERNS:
    _PATTERNS[names] = name_pattern(list(names))
  return _PATTERNS[names]


def _blocks(qas: tuple[QA, ...], what: str) -> list[tuple[QA, ...]]:
  if len(qas) % QA_PER_OWNER:
    raise DataError(
      f"the {what} set has {len(qas)} QA, not whole authors of {QA_PER_OWNER}: owners unknown"
    )
  return [qas[i : i + QA_PER_OWNER] for i in range(0, len(qas), QA_PER_OWNER)]


def owners_of(corpus: Corpus) -> Owners:
  """The authors of ``corpus``'s forget and retain sets (blocks of 20 QA each).

  Example:
    >>> from experiments.data import synthetic
    >>> owners = owners_of(synthetic.generate("forget05", n_authors=4))
    >>> owners.n_forget, owners.n_classes
    (1, 5)
  """
  blocks = _blocks(corpus.forget, "forget") + _blocks(corpus.retain, "retain")
  names = tuple(author_name([q.question for q in b]) for b in blocks)
  named = [n for n in names if n]
  if len(set(named)) != len(named):
    raise DataError(f"two owners share an author name: {sorted(named)}")
  of_question = {q.question: k for k, b in enumerate(blocks) for q in b}
  return Owners(names, len(corpus.forget) // QA_PER_OWNER, of_question)


@dataclasses.dataclass(frozen=True)
class ClassifierData:
  """Masked texts and owner classes to train, and to hold out for calibration.

  Attributes:
    train: (masked text, class) pairs: answers and paraphrases of forget and retain
      QA, the utility sets' answers and the refusals (class "other").
    heldout: pairs never in ``train``: for one QA in :data:`HELDOUT_EVERY`
      of each author, a paraphrase (or answer) whose fact the training set holds in
      another wording; one in ``HELDOUT_EVERY`` utility answers ("other").
  """

  train: tuple[tuple[str, int], ...]
  heldout: tuple[tuple[str, int], ...]


HELDOUT_EVERY = 5


def classifier_data(corpus: Corpus, owners: Owners) -> ClassifierData:
  """Training and held-out texts of an owner classifier (names masked).

  An author's answers and paraphrases are grouped by fact (texts shared by two QA,
  as the generated corpus's two phrasings of one fact, form one group). For every
  :data:`HELDOUT_EVERY`-th group of an author, one text (the last) is held out and
  the others are trained on: the held-out accuracy measures attribution of a known
  fact in unseen words, which is what a generated answer is.

  Example:
    >>> from experiments.data import synthetic
    >>> corpus = synthetic.generate("forget05", n_authors=4)
    >>> data = classifier_data(corpus, owners_of(corpus))
    >>> len(data.train), len(data.heldout)
    (114, 16)
  """
  paraphrase = {q.question: q.paraphrased_answer for q in corpus.forget + corpus.retain_eval}
  groups: dict[int, list[list[str]]] = collections.defaultdict(list)
  for qa in corpus.forget + corpus.retain:
    texts = [qa.answer, qa.paraphrased_answer or paraphrase.get(qa.question)]
    texts = list(dict.fromkeys(owners.mask(t) for t in texts if t))
    owner_groups = groups[owners.of_question[qa.question]]
    merged = [g for g in owner_groups if set(g) & set(texts)]
    for g in merged:
      owner_groups.remove(g)
    owner_groups.append(list(dict.fromkeys([t for g in merged for t in g] + texts)))
  train, heldout = [], []
  for owner, owner_groups in sorted(groups.items()):
    for i, g in enumerate(owner_groups):
      keep = g[:-1] if i % HELDOUT_EVERY == HELDOUT_EVERY - 1 and len(g) > 1 else g
      train += [(t, owner) for t in keep]
      heldout += [(t, owner) for t in g[len(keep) :]]
  others = [owners.mask(q.answer) for q in corpus.real_authors + corpus.world_facts]
  for i, t in enumerate(dict.fromkeys(others)):
    (heldout if i % HELDOUT_EVERY == HELDOUT_EVERY - 1 else train).append((t, owners.other))
  train += [(owners.mask(t), owners.other) for t in dict.fromkeys(corpus.idk)]
  return ClassifierData(tuple(train), tuple(heldout))
