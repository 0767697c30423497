"""benchmarks/real_llm_conflict.py on a tiny HF checkpoint: the plumbing, not the figures."""

import json
import pathlib

import numpy as np
import pytest

from benchmarks import real_llm_conflict

SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"


def test_halves_are_disjoint_and_sized():
  pairs = [(str(i), str(i)) for i in range(7)]
  a, b = real_llm_conflict.halves(pairs, 5, np.random.default_rng(0))
  assert len(a) == len(b) == 3 and not set(a) & set(b)


@pytest.mark.skipif(
  not (SHARED / "hf_tiny" / "llama").is_dir() or not (SHARED / "tofu").is_dir(),
  reason="needs ../shared/data/hf_tiny/llama and ../shared/data/tofu",
)
def test_cosines_of_a_tiny_checkpoint(tmp_path):
  out = tmp_path / "conflict.json"
  args = ["--model", str(SHARED / "hf_tiny" / "llama"), "--tofu", str(SHARED / "tofu")]
  args += ["--probe", "2", "--seeds", "0", "--max-len", "64", "--prompt-format", "tofu"]
  assert real_llm_conflict.main([*args, "--out", str(out)]) == 0
  (row,) = json.loads(out.read_text())["rows"]
  assert row["setting"] == "tofu" and row["n_per_half"] == [2, 2]
  for key in ("cross", "within_a", "within_b"):
    assert -1.0 <= row[key] <= 1.0
