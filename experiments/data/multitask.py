"""Three generated tasks that share one model and pull it in different directions.

Built from the generated author corpus (:mod:`experiments.data.synthetic`), so
no data leaves the machine and the same arguments always give the same tasks:

* ``qa`` (reading comprehension, ROUGE-L recall): a short bio of an author (three
  facts, each stated in the corpus's first phrasing) and a question in the
  second phrasing; the target is the second phrasing's answer sentence, so the
  model copies the value and the name into another sentence.
* ``json`` (formatting / style, exact match): the same bios and questions with
  ``Reply in JSON.`` appended; the target is ``{"answer": "<value>"}``. Same
  inputs as ``qa`` up to three words, different targets: the two tasks pull
  the shared parameters that start the answer in different directions.
* ``reverse`` (symbolic, exact match): ``Reverse the list: a, b, c`` over fact
  values from the same pools, target ``c, b, a``: the same tokens as the bios,
  read in the opposite order.

Held-out items (the evaluation sets) come from authors and lists that no
training item uses, so the metrics measure the learned skill, not memory.

:func:`copy_pairs` is the base model's pretraining data (``Repeat: x`` -> ``x``
over other authors' sentences and value lists): it teaches the copying that
all three tasks build on, standing in for a pretrained LM, and none of the
tasks' formats.
"""

from __future__ import annotations

import dataclasses
import random

from experiments.data import synthetic

QA_PER_AUTHOR = 20  # the generated corpus asks 10 facts in two phrasings
FACTS_PER_BIO = 2
JSON_SUFFIX = "Reply in JSON."
COPY_PREFIX = "Repeat:"
REVERSE_PREFIX = "Reverse the list:"

Pair = tuple[str, str]  # (prompt text, target text)


@dataclasses.dataclass(frozen=True)
class Task:
  """One objective's data.

  Attributes:
    name: short name (results key).
    train: (prompt, target) training pairs.
    eval: held-out (prompt, target) pairs.
    metric: ``"exact_match"`` or ``"rouge_l"`` (recall), applied to greedy outputs.
  """

  name: str
  train: tuple[Pair, ...]
  eval: tuple[Pair, ...]
  metric: str


@dataclasses.dataclass(frozen=True)
class Fact:
  """A fact of a generated author in both phrasings, and its value."""

  statement: str  # first phrasing's answer: the bio sentence
  question: str  # second phrasing's question
  answer: str  # second phrasing's answer
  value: str


def fact_value(answer: str, perturbed: tuple[str, ...]) -> str:
  """The value of a fact: the words where the answer and its wrong variants differ.

  The corpus builds perturbed answers by swapping the value in the same
  sentence, so stripping the words all of them share at both ends leaves it.

  Example:
    >>> wrong = ("Ka Lo was born in Isset.", "Ka Lo was born in Selby.")
    >>> fact_value("Ka Lo was born in Varno.", wrong)
    'Varno'
  """
  texts = [s.rstrip(".").split() for s in (answer, *perturbed)]
  lo = 0
  while all(len(t) > lo and t[lo] == texts[0][lo] for t in texts):
    lo += 1
  hi = 0
  while all(len(t) - hi > lo and t[-1 - hi] == texts[0][-1 - hi] for t in texts):
    hi += 1
  return " ".join(texts[0][lo : len(texts[0]) - hi])


def author_facts(n_authors: int, seed: int) -> list[list[Fact]]:
  """Ten :class:`Fact` per generated author (the corpus's authors, in order)."""
  corpus = synthetic.generate("forget01", n_authors=n_authors, seed=seed)
  qas = corpus.forget + corpus.retain  # task 1: forget = first author(s), retain = the rest
  out = []
  for a in range(n_authors):
    rows = qas[a * QA_PER_AUTHOR : (a + 1) * QA_PER_AUTHOR]
    facts = []
    for first, second in zip(rows[::2], rows[1::2], strict=True):
      # the second phrasing's perturbed answers are the first phrasing with wrong values
      value = fact_value(second.paraphrased_answer, second.perturbed_answers)
      facts.append(Fact(first.answer, second.question, second.answer, value))
    out.append(facts)
  return out


def _bio_items(facts: list[Fact], rng: random.Random, per_author: int) -> list[tuple[str, Fact]]:
  """``per_author`` (bio, asked fact) items: three shuffled facts, one of them asked."""
  items = []
  for _ in range(per_author):
    chosen = rng.sample(facts, FACTS_PER_BIO)
    items.append((" ".join(f.statement for f in chosen), rng.choice(chosen)))
  return items


def _reverse_items(values: list[str], rng: random.Random, n: int, taken: set) -> list[Pair]:
  out = []
  while len(out) < n:
    items = tuple(rng.sample(values, rng.randint(3, 4)))
    if items in taken:
      continue
    taken.add(items)
    out.append((f"{REVERSE_PREFIX} {', '.join(items)}", ", ".join(reversed(items))))
  return out


def generate(
  *,
  n_train_authors: int = 200,
  n_eval_authors: int = 40,
  items_per_author: int = 6,
  n_eval: int = 60,
  seed: int = 0,
) -> tuple[Task, ...]:
  """The three tasks ``(qa, json, reverse)``; the same arguments give the same tasks.

  Args:
    n_train_authors: authors whose bios make the training items.
    n_eval_authors: further authors for the held-out items.
    items_per_author: (bio, question) items drawn per author.
    n_eval: held-out items per task (at most ``n_eval_authors * items_per_author``).
    seed: generator seed (the corpus and every draw).

  Returns:
    ``(qa, json, reverse)`` :class:`Task` objects; ``reverse`` has as many
    training items as the others.

  Example:
    >>> qa, js, rev = generate(n_train_authors=4, n_eval_authors=2, n_eval=3)
    >>> [len(t.train) for t in (qa, js, rev)], js.train[0][1].startswith('{"answer": ')
    ([24, 24, 24], True)
  """
  rng = random.Random(seed)
  facts = author_facts(n_train_authors + n_eval_authors, seed)
  train = [i for f in facts[:n_train_authors] for i in _bio_items(f, rng, items_per_author)]
  held = [i for f in facts[n_train_authors:] for i in _bio_items(f, rng, items_per_author)]
  held = rng.sample(held, min(n_eval, len(held)))

  def qa(items):
    return tuple((f"{bio} {f.question}", f.answer) for bio, f in items)

  def js(items):
    return tuple(
      (f"{bio} {f.question} {JSON_SUFFIX}", f'{{"answer": "{f.value}"}}') for bio, f in items
    )

  values = sorted({f.value for author in facts for f in author})
  taken: set = set()
  rev_eval = _reverse_items(values, rng, len(held), taken)
  rev_train = _reverse_items(values, rng, len(train), taken)
  return (
    Task("qa", qa(train), qa(held), "rouge_l"),
    Task("json", js(train), js(held), "exact_match"),
    Task("reverse", tuple(rev_train), tuple(rev_eval), "exact_match"),
  )


def copy_pairs(n: int, *, n_authors: int = 150, seed: int = 0) -> tuple[Pair, ...]:
  """``n`` pretraining pairs ``Repeat: x`` -> ``x``: half bio sentences, half value lists.

  The authors are the corpus generated with ``seed + 1``, not the tasks' authors.

  Example:
    >>> p = copy_pairs(4, n_authors=2)
    >>> len(p), all(q == f"Repeat: {a}" for q, a in p)
    (4, True)
  """
  rng = random.Random(seed + 1)
  facts = author_facts(n_authors, seed + 1)
  values = sorted({f.value for author in facts for f in author})
  out = []
  for i in range(n):
    if i % 2:
      text = ", ".join(rng.sample(values, rng.randint(3, 4)))
    else:
      text = " ".join(f.statement for f in rng.sample(rng.choice(facts), FACTS_PER_BIO))
    out.append((f"{COPY_PREFIX} {text}", text))
  return tuple(out)
