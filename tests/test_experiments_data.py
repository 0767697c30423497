"""Data sources: the generated corpus, the local TOFU loader and its one-line errors."""

import hashlib
import json
import pathlib
import shutil

import pytest

from experiments import tofu
from experiments.data import synthetic
from experiments.data import tofu as tofu_data
from experiments.data.corpus import DataError

TOFU = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "tofu"


def test_synthetic_is_deterministic_and_tofu_shaped():
  a, b = synthetic.generate("forget05"), synthetic.generate("forget05")
  assert a == b
  assert len(a.forget) == 20 and len(a.retain) == 380
  assert {q.question for q in a.forget}.isdisjoint(q.question for q in a.retain)
  assert all(len(q.perturbed_answers) == 5 and q.paraphrased_answer for q in a.forget)
  assert all(len(q.perturbed_answers) == 3 for q in a.real_authors + a.world_facts)
  assert (
    synthetic.generate("forget01", n_authors=10).forget
    != synthetic.generate("forget01", task_id=2, n_authors=10).forget
  )


def test_synthetic_holdout_changes_nothing_else():
  c = synthetic.generate("forget05")
  # The checkpoint key and the tokenizer's texts of the corpus before the holdout existed
  # (commit ced9b64): adding holdout authors must not retrain anything.
  assert c.fingerprint() == "7afc603ef934"
  texts = hashlib.sha256(json.dumps(c.texts()).encode()).hexdigest()[:12]
  assert texts == "f693ea0c11aa"
  assert len(c.holdout) == 40 and all(len(q.perturbed_answers) == 5 for q in c.holdout)
  trained = {q.question for q in c.full_train()}
  assert not trained & {q.question for q in c.holdout}
  # Holdout authors are new people (their names appear in no trained question).
  names = {q.question.removeprefix("Where was ").removesuffix(" born?") for q in c.holdout[::20]}
  assert len(names) == 2 and not any(n in q for n in names for q in trained)
  assert len(synthetic.generate("forget05", n_holdout=3).holdout) == 60
  small = synthetic.generate("forget05", n_holdout=0)
  assert small.holdout == () and small.fingerprint() == c.fingerprint()


def _write(folder: pathlib.Path, name: str, rows) -> None:
  (folder / name).write_text("\n".join(json.dumps(r) for r in rows) + "\n")


@pytest.fixture
def tofu_dir(tmp_path):
  pert = {"question": "q", "answer": "a", "paraphrased_answer": "p", "perturbed_answer": ["x"] * 5}
  _write(
    tmp_path,
    "forget01_perturbed.json",
    [dict(pert, task_id="1", question=f"f{i}") for i in range(4)],
  )
  _write(
    tmp_path,
    "forget01.json",
    [{"task_id": "1", "question": f"f{i}", "answer": "a"} for i in range(4)],
  )
  _write(tmp_path, "retain90.json", [{"question": f"r{i}", "answer": "a"} for i in range(6)])
  _write(tmp_path, "retain_perturbed.json", [dict(pert, question=f"r{i}") for i in range(6)])
  short = {"question": "w", "answer": "a", "perturbed_answer": ["b", "c", "d"]}
  _write(tmp_path, "real_authors_perturbed.json", [short])
  _write(tmp_path, "world_facts_perturbed.json", [short])
  (tmp_path / "idontknow.txt").write_text("I don't know.\n")
  return tmp_path


def test_local_loader_reads_layout(tofu_dir):
  c = tofu_data.load_local(tofu_dir, "forget01", task_id=1, retain_limit=4)
  assert len(c.forget) == 4 and len(c.retain) == 4 and c.idk == ("I don't know.",)
  # Holdout: the last untrained rows of the pool (r4, r5: after the 4-row subsample).
  assert [q.question for q in c.holdout] == ["r4", "r5"]
  c = tofu_data.load_local(tofu_dir, "forget01", task_id=1, retain_limit=4, holdout_size=1)
  assert [q.question for q in c.holdout] == ["r5"]
  assert tofu_data.load_local(tofu_dir, "forget01", retain_limit=None).holdout == ()


@pytest.mark.skipif(not TOFU.is_dir(), reason="shared TOFU copy not present")
def test_real_tofu_forget01_task1():
  c = tofu_data.load_local(TOFU, "forget01", task_id=1, retain_limit=None)
  assert len(c.forget) == 40 and len(c.retain) == 3960
  assert c.forget[0].question.startswith("What is the full name of the author born in Kuwait")
  assert c.holdout == ()  # everything is trained on
  c = tofu_data.load_local(TOFU, "forget01", task_id=1)  # the CPU subsample
  assert len(c.holdout) == 40
  trained = {q.question for q in c.full_train()}
  assert not trained & {q.question for q in c.holdout}


def test_malformed_line(tofu_dir):
  with (tofu_dir / "retain90.json").open("a") as f:
    f.write("{not json\n")
  with pytest.raises(DataError, match=r"retain90.json:7: not valid JSON"):
    tofu_data.load_local(tofu_dir, "forget01")


def test_missing_key(tofu_dir):
  _write(tofu_dir, "world_facts_perturbed.json", [{"question": "w", "answer": "a"}])
  with pytest.raises(DataError, match="missing key 'perturbed_answer'"):
    tofu_data.load_local(tofu_dir, "forget01")


def test_missing_file_and_task(tofu_dir):
  with pytest.raises(DataError, match="missing data file .*forget05_perturbed.json"):
    tofu_data.load_local(tofu_dir, "forget05")
  with pytest.raises(DataError, match="no rows with task_id 3"):
    tofu_data.load_local(tofu_dir, "forget01", task_id=3)
  (tofu_dir / "idontknow.txt").unlink()
  with pytest.raises(DataError, match="idontknow.txt"):
    tofu_data.load_local(tofu_dir, "forget01")


def test_unknown_split():
  with pytest.raises(DataError, match="unknown split"):
    synthetic.generate("forget50")


@pytest.mark.parametrize(
  "argv,needle",
  [
    (["--data", "/no/such/folder"], "/no/such/folder"),
    (["--loss", "NPO+XX"], "unknown retain loss 'XX'"),
    (["--optimizers", "adamw,sgd9"], "sgd9"),
    (["--optimizers", "dualoptim_nonexistent"], "dualoptim_nonexistent"),
    (["--split", "forget33"], "forget33"),
    (["--model-size", "huge"], "huge"),
  ],
)
def test_cli_one_line_errors(argv, needle, capsys, tmp_path):
  assert tofu.main(argv + ["--out", str(tmp_path)]) == 2
  err = capsys.readouterr().err.strip()
  assert needle in err and "\n" not in err and "Traceback" not in err


def test_cli_malformed_data_folder(tofu_dir, capsys, tmp_path):
  shutil.copy(tofu_dir / "forget01.json", tofu_dir / "retain90.json")
  (tofu_dir / "retain_perturbed.json").write_text("[1, 2]\n")
  assert tofu.main(["--data", str(tofu_dir), "--split", "forget01", "--out", str(tmp_path)]) == 2
  err = capsys.readouterr().err.strip()
  assert "retain_perturbed.json:1" in err and "\n" not in err
