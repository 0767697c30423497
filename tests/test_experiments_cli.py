"""Every numeric flag of the TOFU job: a bad value is one line naming the flag and its range."""

import pathlib

import pytest

from experiments import tofu

BAD = [
  ("--seeds", "-1", "integers >= 0"),
  ("--seeds", "1,x", "integers >= 0"),
  ("--seeds", ",", "integers >= 0"),
  ("--lrs", "0", "numbers > 0"),
  ("--lrs", "nan", "numbers > 0"),
  ("--lrs", "1e-3,-1", "numbers > 0"),
  ("--steps", "0", "integer >= 1"),
  ("--steps", "-5", "integer >= 1"),
  ("--epochs", "1.5", "integer >= 1"),
  ("--batch-size", "0", "integer >= 1"),
  ("--task-id", "0", "integer >= 1"),
  ("--vocab-size", "100", "integer >= 260"),
  ("--max-len", "8", "integer >= 16"),
  ("--eval-size", "0", "integer >= 1"),
  ("--ft-epochs", "0", "integer >= 1"),
  ("--ft-lr", "-3", "number > 0"),
  ("--ft-lr", "inf", "number > 0"),
  ("--ft-batch-size", "0", "integer >= 1"),
  ("--retain-limit", "-1", "integer >= 0"),
  ("--n-authors", "1", "integer >= 2"),
  ("--forget-steps", "0", "integer >= 1"),
  ("--retain-steps", "-1", "integer >= 0"),
  ("--lora-rank", "0", "integer >= 1"),
  ("--mesh", "data:0", "data:N,model:M"),
]


@pytest.mark.parametrize("flag,value,allowed", BAD, ids=[f"{f}={v}" for f, v, _ in BAD])
def test_bad_numeric_flag_is_one_line(flag, value, allowed, capsys, tmp_path):
  assert tofu.main([flag, value, "--out", str(tmp_path)]) == 2
  err = capsys.readouterr().err.strip()
  assert flag in err and allowed in err and repr(value) in err
  assert "\n" not in err and "Traceback" not in err
  assert not (tmp_path / "results.json").exists()


def test_every_numeric_flag_is_checked():
  numeric = {
    a.option_strings[0]
    for a in tofu.parser()._actions
    if a.option_strings and a.type is not None and a.type not in (str,)
  }
  assert numeric == {f for f, _, _ in BAD}


def test_good_lists_parse_and_deduplicate():
  args = tofu.parser().parse_args(["--seeds", "0,1,1", "--lrs", "1e-3 3e-4"])
  assert args.seeds == [0, 1, 1] and args.lrs == [1e-3, 3e-4]
  s = tofu.settings_from(args, real=False)
  assert s.seeds == (0, 1) and s.lrs == (1e-3, 3e-4)


def test_help_exits_zero(capsys):
  assert tofu.main(["--help"]) == 0
  assert "--seeds" in capsys.readouterr().out


def test_model_size_with_a_checkpoint_is_refused(capsys, tmp_path):
  llama = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "hf_tiny" / "llama"
  if not llama.is_dir():
    pytest.skip(f"{llama} is absent (the shared hf_tiny checkpoints)")
  argv = ["--model", str(llama), "--model-size", "tiny", "--out", str(tmp_path)]
  assert tofu.main(argv) == 2
  err = capsys.readouterr().err.strip()
  assert "--model-size is for the in-house model" in err and "\n" not in err
