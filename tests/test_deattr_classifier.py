"""De-attribution's owner side: name masking, owners, the owner classifier, its cache, audits."""

import pathlib

import numpy as np
import pytest
from flax import nnx

from experiments.data import owners as ownlib
from experiments.data import synthetic
from experiments.data.batching import Encoder
from experiments.data.tokenizer import train_tokenizer
from experiments.evaluation import attribution
from experiments.models import classifier as clf
from experiments.models import make_apply
from experiments.models.decoder import DecoderLM, config_for

TOFU = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "tofu"

# --- owners and name masking ---------------------------------------------------------------


def test_generated_names_are_the_generators_names():
  corpus = synthetic.generate("forget05", n_authors=6)
  owners = ownlib.owners_of(corpus)
  # The generator's first template is "Where was {n} born?": its names, exactly.
  truth = [
    q.question.removeprefix("Where was ").removesuffix(" born?")
    for q in (corpus.forget + corpus.retain)[:: ownlib.QA_PER_OWNER]
  ]
  assert list(owners.names) == truth
  assert owners.n_forget == 1 and owners.n_classes == 7 and owners.other == 6
  for qa in corpus.forget + corpus.retain:
    masked = owners.mask(qa.answer)
    assert all(n not in masked for n in owners.names), masked
    assert ownlib.NAME_MASK in masked


def test_masking_full_names_parts_possessives_particles():
  pattern = ownlib.name_pattern(["Basil Mahfouz Al-Kuwaiti", "Isabella van Pletzen", None])
  mask = lambda s: pattern.sub("[NAME]", s)
  assert mask("Basil Mahfouz Al-Kuwaiti is male.") == "[NAME] is male."
  assert mask("Al-Kuwaiti's parents; Mahfouz wrote.") == "[NAME]'s parents; [NAME] wrote."
  assert mask("Isabella van Pletzen and van Pletzen") == "[NAME] and van [NAME]"
  # Whole words only, case-sensitive, particles and short parts never masked alone.
  assert mask("Basilica of van, al and Al") == "Basilica of van, al and Al"


def test_author_name_of_questions():
  qs = ["What genre is author Nikolai Abilov known for?", "Has Nikolai Abilov won awards?"]
  assert ownlib.author_name(qs) == "Nikolai Abilov"
  assert ownlib.author_name(["Where was Alejandro (Alex) Fuentes born?"] * 2) == (
    "Alejandro (Alex) Fuentes"
  )
  assert ownlib.author_name(["What is the birthplace of the fictitious author?"] * 4) is None


@pytest.mark.skipif(not TOFU.is_dir(), reason="no local TOFU copy")
def test_tofu_forget01_names():
  from experiments.data import tofu

  owners = ownlib.owners_of(tofu.load_local(TOFU, "forget01"))
  assert owners.names[:2] == ("Basil Mahfouz Al-Kuwaiti", "Nikolai Abilov")
  assert owners.n_forget == 2 and owners.n_classes == 8
  assert owners.mask("Nikolai Abilov's father was a writer.") == "[NAME]'s father was a writer."


def test_classifier_data_heldout_is_unseen_and_labelled():
  corpus = synthetic.generate("forget05", n_authors=4)
  owners = ownlib.owners_of(corpus)
  data = ownlib.classifier_data(corpus, owners)
  train_texts = {t for t, _ in data.train}
  assert not any(t in train_texts for t, _ in data.heldout)
  # Every held-out author text states a fact that the training set holds in other words.
  assert {c for _, c in data.heldout} == set(range(owners.n_classes))
  assert all(ownlib.NAME_MASK in t for t, c in data.train if c == 0)


# --- the classifier ------------------------------------------------------------------------

TOPICS = {
  0: "sailing harbour boats tides anchors knots",
  1: "baking bread ovens flour yeast pastry",
  2: "chess pawns kings bishops rooks openings",
}


def _topic_texts(seed: int, n: int) -> list[tuple[str, int]]:
  rng = np.random.default_rng(seed)
  out = []
  for owner, words in TOPICS.items():
    w = words.split()
    out += [(f"[NAME] likes {' and '.join(rng.choice(w, 3))}.", owner) for _ in range(n)]
  return out


@pytest.fixture(scope="module")
def topic_classifier():
  train, heldout = _topic_texts(0, 12), _topic_texts(1, 6)
  tok = train_tokenizer([t for t, _ in train], 300)
  owners = ownlib.Owners(("Ann Lee", "Bo Day"), 1, {})  # 2 authors + "other"
  return clf.train("bow", owners, train, heldout, Encoder(tok, 32))


def test_bow_classifier_is_accurate_and_calibrated(topic_classifier):
  c, report = topic_classifier
  assert report["train_accuracy"] == 1.0 and report["heldout_accuracy"] >= 0.95
  assert report["heldout_nll"] <= report["heldout_nll_uncalibrated"] + 1e-6
  p = c.probs(["Ann Lee likes tides and anchors.", "chess openings"])
  np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-5)
  assert p.argmax(1).tolist() == [0, 2]
  assert c.forget_mass(["Ann Lee likes tides and anchors."])[0] > 0.5  # owner 0 is forgotten
  assert c.forget_mass(["chess openings"], own=[2])[0] > 0.5


def test_names_are_masked_before_classifying(topic_classifier):
  c, _ = topic_classifier
  with_name = c.probs(["Ann Lee likes bread."])
  assert np.allclose(with_name, c.probs(["[NAME] likes bread."]))


def test_fit_temperature_recovers_overconfidence():
  rng = np.random.default_rng(0)
  y = rng.integers(0, 3, 500)
  logits = rng.normal(size=(500, 3))
  logits[np.arange(500), y] += 1.0  # true calibrated logits; shown 4x too confident
  assert 3.0 < clf.fit_temperature(4.0 * logits, y) < 5.0


def test_probe_features_shape_and_cache(tmp_path):
  corpus = synthetic.generate("forget05", n_authors=2)
  tok = train_tokenizer(corpus.texts(), 300)
  enc = Encoder(tok, 64)
  graphdef, params = nnx.split(DecoderLM(config_for("tiny", 300, 64), nnx.Rngs(0)))
  apply = make_apply(graphdef)
  c, report = attribution.owner_classifier("probe", corpus, enc, tmp_path, apply, params)
  assert c.probs(["a", "b", "c"]).shape == (3, 3) and report["kind"] == "probe"
  again, report2 = attribution.owner_classifier("probe", corpus, enc, tmp_path, apply, params)
  assert report2 == report and np.array_equal(again.head.w, c.head.w)
  assert again.head.temperature == pytest.approx(c.head.temperature)


# --- audits --------------------------------------------------------------------------------


def test_token_entropy_and_tug_of_war():
  tok = train_tokenizer(["alpha beta gamma delta", "x x x x"], 300)
  assert attribution.token_entropy(tok, "") == 0.0
  assert attribution.token_entropy(tok, "alpha beta gamma delta") == pytest.approx(1.0)
  assert attribution.token_entropy(tok, "x x x x x x x x") < 0.7
  splits = ("forget", "retain", "real_authors", "world_facts")
  oracle = {s: {"rouge": r} for s, r in zip(splits, (0.5, 1.0, 0.6, 1.0), strict=True)}
  assert attribution.tug_of_war_rouge(oracle, oracle) == pytest.approx(1.0)
  ev = {s: {"rouge": r} for s, r in zip(splits, (1.0, 0.8, 0.8, 1.0), strict=True)}
  assert attribution.tug_of_war_rouge(ev, oracle) == pytest.approx(0.5 * 0.8 * 0.9)


def test_audit_reports_forget_and_retain_sets(topic_classifier):
  c, _ = topic_classifier
  qa = synthetic.generate("forget05", n_authors=2).forget[0]
  questions = [("forget", 0, qa), ("forget", 1, qa), ("retain", 0, qa), ("world_facts", 0, qa)]
  gens = ["Ann Lee likes tides.", "chess openings", "bread and flour", "x"]
  enc_tok = train_tokenizer(gens, 300)
  out = attribution.Audit(enc_tok, c, c)(questions, gens)
  assert set(out) == {
    "fluency",
    "retain_fluency",
    "forget_attribution",
    "retain_attribution",
    "forget_attribution_check",
    "retain_attribution_check",
  }
  assert out["forget_attribution"] == pytest.approx(c.forget_mass(gens[:2]).mean())
  assert out["retain_attribution"] == pytest.approx(c.forget_mass(gens[2:3]).mean())
  assert set(attribution.Audit(enc_tok)(questions, gens)) == {"fluency", "retain_fluency"}
