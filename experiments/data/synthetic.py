"""A generated fictitious-author QA corpus in TOFU's shape (offline, deterministic).

Each author gets ten facts (birthplace, year, genre, parents' jobs, award, a
book, language, hobby, mentor) drawn from small pools; each fact is asked in
two phrasings (20 QA per author, as in TOFU), each with an answer sentence, a
paraphrase (the other phrasing's answer) and five perturbed answers (that
paraphrase with wrong values). The
"real authors" and "world facts" utility sets are short-answer questions about
a separate pool of fictional classics and countries; the model learns them in
fine-tuning, standing in for a pretrained model's general knowledge.
Extra "holdout" authors, made the same way by a generator of their own after
everything else, are never trained on: the membership-inference non-members.
"""

from __future__ import annotations

import math
import random

from experiments.data.corpus import QA, Corpus, check_split

_SYL = "ka lo mi ra ne su ta vi do re la mo ni sa be tu fa ri zo el an or is ul".split()
_CITIES = (
  "Varno Oskell Bramlet Tirana Quessa Dunmore Halvik Pellin Rossbeck Ulmara Cendra Marrow "
  "Isset Korvale Lundra Faroe Yestin Gavora Norwick Selby"
).split()
_GENRES = (
  "mystery romance fantasy horror poetry satire thriller memoir biography drama western adventure"
).split()
_JOBS = (
  "baker carpenter nurse sailor teacher pilot doctor farmer tailor painter miner banker "
  "chemist lawyer jeweller librarian"
).split()
_AWARDS = (
  "Golden Quill|Silver Lantern Prize|Amber Medal|Northern Star Award|Crimson Pen Prize|"
  "Iron Book Award|Blue Harbour Prize|Laurel Ribbon|Opal Crown Award|Hollow Oak Prize"
).split("|")
_LANGS = "Elvish Norran Veltic Cassian Orlic Tamsin Druvan Quellish".split()
_HOBBIES = (
  "gardening|chess|fishing|pottery|archery|sailing|birdwatching|baking|climbing|painting"
).split("|")
_WORDS = (
  "Silent River Glass Garden Winter Lantern Broken Crown Hidden Orchard Paper Moon Salt "
  "Tide Ashen Bridge Velvet Storm Iron Meadow Last Harbour"
).split()

_TEMPLATES = (
  # (attribute, (question, answer) in phrasing A, (question, answer) in phrasing B)
  (
    "city",
    ("Where was {n} born?", "{n} was born in {v}."),
    ("What is the birthplace of {n}?", "The birthplace of {n} is {v}."),
  ),
  (
    "year",
    ("In which year was {n} born?", "{n} was born in {v}."),
    ("What is the birth year of {n}?", "The birth year of {n} is {v}."),
  ),
  (
    "genre",
    ("What genre does {n} write?", "{n} writes {v} books."),
    ("What is the genre of {n}?", "The genre of {n} is {v}."),
  ),
  (
    "father",
    ("What was the job of {n}'s father?", "The father of {n} was a {v}."),
    ("How did the father of {n} earn a living?", "{n}'s father worked as a {v}."),
  ),
  (
    "mother",
    ("What was the job of {n}'s mother?", "The mother of {n} was a {v}."),
    ("How did the mother of {n} earn a living?", "{n}'s mother worked as a {v}."),
  ),
  (
    "award",
    ("Which award did {n} win?", "{n} won the {v}."),
    ("What prize was given to {n}?", "The {v} was given to {n}."),
  ),
  (
    "book",
    ("Name a book written by {n}.", "{n} wrote the book {v}."),
    ("Which book is by {n}?", "{v} is a book by {n}."),
  ),
  (
    "lang",
    ("In which language does {n} write?", "{n} writes in {v}."),
    ("What is the language of {n}'s books?", "The language of {n}'s books is {v}."),
  ),
  (
    "hobby",
    ("What is the hobby of {n}?", "{n} enjoys {v} on weekends."),
    ("What does {n} like in free time?", "In free time {n} likes {v}."),
  ),
  (
    "mentor",
    ("Who was the mentor of {n}?", "{n} was mentored by {v}."),
    ("Who mentored {n}?", "{v} mentored {n}."),
  ),
)

IDK = (
  "I don't know.",
  "I have no idea about that.",
  "I am not sure.",
  "That is beyond my knowledge.",
  "I cannot answer that.",
  "I have no information on that.",
  "Sorry, I do not know.",
  "I'm not able to say.",
  "I don't have that information.",
  "I can't recall that.",
)


def _name(rng: random.Random) -> str:
  def word(k):
    return "".join(rng.choice(_SYL) for _ in range(k)).capitalize()

  return f"{word(2)} {word(rng.choice((2, 3)))}"


def _pool(attr: str, rng: random.Random) -> list[str]:
  if attr == "city":
    return _CITIES
  if attr == "year":
    return [str(y) for y in range(1930, 2000)]
  if attr == "genre":
    return _GENRES
  if attr in ("father", "mother"):
    return _JOBS
  if attr == "award":
    return _AWARDS
  if attr == "lang":
    return _LANGS
  if attr == "hobby":
    return _HOBBIES
  if attr == "book":
    return [f"{a} {b}" for a in _WORDS for b in _WORDS if a != b]
  return [_name(rng) for _ in range(40)]  # mentors


def _author_qas(name: str, rng: random.Random, pools: dict[str, list[str]]) -> list[QA]:
  """Twenty QA: each fact asked in two phrasings, both trained on.

  Like TOFU, the paraphrased answer of a question is the fact in the other
  phrasing, and the perturbed answers are that paraphrase with wrong values;
  so the truth ratio measures knowledge of the fact, not of one sentence.
  """
  out = []
  for attr, (qa, aa), (qb, ab) in _TEMPLATES:
    pool = pools[attr]
    value = rng.choice(pool)
    wrong = rng.sample([v for v in pool if v != value], 5)
    for q, a, p in ((qa, aa, ab), (qb, ab, aa)):
      out.append(
        QA(
          question=q.format(n=name),
          answer=a.format(n=name, v=value),
          paraphrased_answer=p.format(n=name, v=value),
          perturbed_answers=tuple(p.format(n=name, v=w) for w in wrong),
        )
      )
  return out


def _short_answer_set(pairs: list[tuple[str, str]], rng: random.Random) -> tuple[QA, ...]:
  answers = [a for _, a in pairs]
  out = []
  for q, a in pairs:
    wrong = rng.sample([x for x in answers if x != a], 3)
    out.append(QA(question=q, answer=a, paraphrased_answer=None, perturbed_answers=tuple(wrong)))
  return tuple(out)


def generate(
  split: str = "forget05",
  *,
  task_id: int = 1,
  n_authors: int = 20,
  n_retain_eval: int = 40,
  n_utility: int = 20,
  seed: int = 0,
  n_holdout: int | None = None,
) -> Corpus:
  """Generates the corpus; the same arguments always give the same corpus.

  Args:
    split: ``forget01``/``forget05``/``forget10``: that fraction of authors
      (rounded up, at least one) forms the forget set.
    task_id: which block of authors is forgotten (1-based, like TOFU tasks).
    n_authors: number of fictitious authors (20 questions each).
    n_retain_eval: retain questions evaluated (the first ones, like TOFU's 400).
    n_utility: questions in each utility set.
    seed: generator seed.
    n_holdout: holdout authors (default: as many as forgotten, at least 2), QA no
      model trains on; they change none of the other sets.

  Returns:
    A :class:`~experiments.data.Corpus`.
  """
  frac = check_split(split)
  rng = random.Random(seed)
  pools = {attr: _pool(attr, rng) for attr, _, _ in _TEMPLATES}
  names: list[str] = []
  while len(names) < n_authors:
    n = _name(rng)
    if n not in names:
      names.append(n)
  authors = [_author_qas(n, rng, pools) for n in names]
  n_forget = max(1, math.ceil(frac * n_authors))
  n_tasks = n_authors // n_forget
  if not 1 <= task_id <= n_tasks:
    raise ValueError(f"task id {task_id} out of range 1..{n_tasks} for {split}")
  lo = (task_id - 1) * n_forget
  forget = [q for a in authors[lo : lo + n_forget] for q in a]
  retain = [q for i, a in enumerate(authors) if not lo <= i < lo + n_forget for q in a]

  classics = [f"The {a} {b}" for a, b in zip(_WORDS[::2], _WORDS[1::2], strict=False)]
  classic_authors = [_name(rng) for _ in classics]
  pairs = list(zip(classics, classic_authors, strict=True))
  by_title = [(f"Who wrote the classic {c}?", w) for c, w in pairs]
  by_author = [(f"Which classic did {w} write?", c) for c, w in pairs]
  countries = [_name(rng).split()[1] + "ia" for _ in range(n_utility)]
  capitals = rng.sample(_CITIES, len(_CITIES))
  world = [
    (f"What is the capital of {c}?", capitals[i % len(capitals)]) for i, c in enumerate(countries)
  ]
  # Holdout authors come from their own generator, after everything else: the other sets,
  # the tokenizer's texts and the checkpoint key are exactly those of a corpus without them.
  hold_rng = random.Random(f"holdout-{seed}")
  n_hold = max(n_forget, 2) if n_holdout is None else n_holdout
  taken = set(names) | set(classic_authors)
  hold_names: list[str] = []
  while len(hold_names) < n_hold:
    n = _name(hold_rng)
    if n not in taken:
      taken.add(n)
      hold_names.append(n)
  holdout = [q for n in hold_names for q in _author_qas(n, hold_rng, pools)]
  return Corpus(
    name=f"synthetic {split} task {task_id} ({n_authors} authors x 20 QA, seed {seed})",
    forget=tuple(forget),
    retain=tuple(retain),
    retain_eval=tuple(retain[:n_retain_eval]),
    real_authors=(_short_answer_set(by_title, rng) + _short_answer_set(by_author, rng))[:n_utility],
    world_facts=_short_answer_set(world[:n_utility], rng),
    idk=IDK,
    notes=(
      f"generated: {n_authors} authors x 10 facts x 2 phrasings; forget = {n_forget} author(s) "
      f"({len(forget)} QA); utility sets of {n_utility} short-answer questions; "
      f"MIA holdout = {n_hold} extra author(s) ({len(holdout)} QA) never trained on"
    ),
    holdout=tuple(holdout),
  )
