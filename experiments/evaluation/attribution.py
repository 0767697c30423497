"""De-attribution audits: owner attribution of greedy answers, fluency, Tug-of-War, the classifier.

- ``forget_attribution`` / ``retain_attribution``: mean calibrated probability, under
  the frozen owner classifier, that the model's greedy answers to the forget / retain
  questions come from a forget owner (names masked; :mod:`experiments.models.classifier`).
  With a second classifier of the other kind, ``*_attribution_check`` repeats both under
  it: a policy that fools only the classifier it was trained against shows up there.
- ``fluency`` / ``retain_fluency``: mean token entropy of the greedy answers (DualOptim+
  protocol, UNLEARNING.md 2.3): a collapse to repeated tokens (reward hacking) lowers it.
- ``tug_of_war``: :func:`dualoptim_jax.unlearning.tug_of_war` with ROUGE-L recall per
  split (forget, retain, and the mean of real authors and world facts as "test"), the
  retain-only oracle as the retrained model.

The classifier is built once per job, only when a ``DeAttr`` loss or ``--attribution``
asks for it, and cached beside the fine-tuned checkpoints.
"""

from __future__ import annotations

import math
import pathlib
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np
from tokenizers import Tokenizer

from dualoptim_jax import unlearning
from experiments.data import owners as ownlib
from experiments.data import tokenizer as toklib
from experiments.data.batching import Encoder
from experiments.data.corpus import Corpus
from experiments.loops.checkpoint import Checkpoints, read_json, write_json
from experiments.models import classifier as clf


def token_entropy(tok: Tokenizer, text: str) -> float:
  """Entropy of a text's token frequencies, normalised: ``-sum_w f_w log2 f_w / log2(n)``.

  ``f_w`` is the share of token ``w`` among the ``n`` tokens; 0 for ``n <= 1``
  (DualOptim+'s fluency metric: 1 when no token repeats, low for repetitive text).

  Example:
    >>> from experiments.data.tokenizer import train_tokenizer
    >>> tok = train_tokenizer(["a b c d", "a a a a"], 300)
    >>> token_entropy(tok, "a b c d") > token_entropy(tok, "a a a a a a")
    True
  """
  ids = toklib.encode(tok, text)
  if len(ids) <= 1:
    return 0.0
  _, counts = np.unique(ids, return_counts=True)
  f = counts / len(ids)
  return float(-(f * np.log2(f)).sum() / math.log2(len(ids)))


def tug_of_war_rouge(ev: dict, oracle: dict) -> float:
  """Tug-of-War of an evaluation against the oracle's, ROUGE-L recall per split.

  Example:
    >>> ev = {s: {"rouge": r} for s, r in
    ...       [("forget", 0.5), ("retain", 0.9), ("real_authors", 0.8), ("world_facts", 0.8)]}
    >>> orc = {s: {"rouge": r} for s, r in
    ...        [("forget", 0.4), ("retain", 1.0), ("real_authors", 0.8), ("world_facts", 0.8)]}
    >>> round(tug_of_war_rouge(ev, orc), 4)  # 0.9 * 0.9 * 1
    0.81
  """
  test = lambda e: (e["real_authors"]["rouge"] + e["world_facts"]["rouge"]) / 2
  return float(
    unlearning.tug_of_war(
      ev["forget"]["rouge"],
      oracle["forget"]["rouge"],
      ev["retain"]["rouge"],
      oracle["retain"]["rouge"],
      test(ev),
      test(oracle),
    )
  )


class Audit:
  """The evaluator's hook: fluency always, attribution when a classifier is given.

  Args:
    tok: the tokenizer (token entropy).
    classifier: the frozen owner classifier, or None.
    check: a second classifier (the other kind), or None.
  """

  def __init__(
    self,
    tok: Tokenizer,
    classifier: clf.OwnerClassifier | None = None,
    check: clf.OwnerClassifier | None = None,
  ):
    self.tok, self.classifier, self.check = tok, classifier, check

  def __call__(self, questions: Sequence[tuple], generations: Sequence[str]) -> dict:
    """Metrics of the greedy ``generations`` to ``questions`` (``(set, index, QA)`` each)."""
    by_set: dict[str, list[str]] = {"forget": [], "retain": []}
    for (name, _, _), text in zip(questions, generations, strict=True):
      if name in by_set:
        by_set[name].append(text)
    out = {
      "fluency": float(np.mean([token_entropy(self.tok, t) for t in by_set["forget"]])),
      "retain_fluency": float(np.mean([token_entropy(self.tok, t) for t in by_set["retain"]])),
    }
    for suffix, c in (("", self.classifier), ("_check", self.check)):
      if c is not None:
        out[f"forget_attribution{suffix}"] = float(c.forget_mass(by_set["forget"]).mean())
        out[f"retain_attribution{suffix}"] = float(c.forget_mass(by_set["retain"]).mean())
    return out


def classifiers(
  kind: str, corpus: Corpus, encoder: Encoder, cache: pathlib.Path, apply, params
) -> tuple[clf.OwnerClassifier, clf.OwnerClassifier, dict]:
  """The job's classifier of ``kind``, a check classifier of the other kind, and both reports."""
  other = next(k for k in clf.KINDS if k != kind)
  main, report = owner_classifier(kind, corpus, encoder, cache, apply, params)
  check, check_report = owner_classifier(other, corpus, encoder, cache, apply, params)
  return main, check, {"classifier": report, "check": check_report}


def owner_classifier(
  kind: str,
  corpus: Corpus,
  encoder: Encoder,
  cache: pathlib.Path,
  apply=None,
  params=None,
) -> tuple[clf.OwnerClassifier, dict]:
  """The corpus's frozen owner classifier of ``kind`` and its report, cached under ``cache``.

  Trained on the masked training answers and paraphrases, calibrated on the held-out
  texts (:func:`experiments.data.owners.classifier_data`); ``probe`` reads the LM
  ``apply``/``params`` (the fine-tuned model). A damaged cache is reported and rebuilt.
  """
  owners = ownlib.owners_of(corpus)
  features = clf.feature_map(kind, encoder, apply, params)
  n_features = features(["x"]).shape[1]
  like = {
    "w": jnp.zeros((n_features, owners.n_classes), jnp.float32),
    "b": jnp.zeros((owners.n_classes,), jnp.float32),
    "mean": jnp.zeros((n_features,), jnp.float32),
    "scale": jnp.zeros((n_features,), jnp.float32),
  }
  ckpt = Checkpoints(cache / f"classifier-{kind}")
  report = read_json(cache / f"classifier-{kind}.json")
  restored = ckpt.restore_latest(like, {"temperature": jnp.float32(1.0)})
  if restored is not None and report is not None:
    p, state, _ = restored
    arrays = {k: np.asarray(v) for k, v in p.items()}
    head = clf.Head(**arrays, temperature=float(state["temperature"]))
    return clf.OwnerClassifier(kind, features, head, owners), report
  data = ownlib.classifier_data(corpus, owners)
  classifier, report = clf.train(kind, owners, data.train, data.heldout, encoder, apply, params)
  h = classifier.head
  arrays = {"w": h.w, "b": h.b, "mean": h.mean, "scale": h.scale}
  step = (ckpt.latest() or 0) + 1  # a step is never overwritten; a stale one stays behind
  calibration = {"temperature": jnp.float32(h.temperature)}
  ckpt.save(step, {k: jnp.asarray(v) for k, v in arrays.items()}, calibration)
  write_json(cache / f"classifier-{kind}.json", report)
  return classifier, report
