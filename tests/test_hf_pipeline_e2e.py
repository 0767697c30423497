"""``python -m experiments.tofu`` end to end on a loaded checkpoint, with tiny budgets.

First run: ``--model`` (hf_tiny llama) fine-tuned and unlearned with LoRA rank 8, bf16 weights,
a 4x2 mesh of simulated devices and ``--save-model``. Second run: the exported fine-tuned and
oracle models as ``--finetuned`` and ``--oracle`` (no fine-tuning), with another prompt format.
"""

import json
import pathlib

import jax.numpy as jnp
import pytest

from experiments import hf, tofu

HF_TINY = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data" / "hf_tiny"
pytestmark = pytest.mark.skipif(
  not HF_TINY.is_dir(), reason=f"{HF_TINY} (tiny HF checkpoints with reference outputs) is absent"
)
TINY = ["--n-authors", "4", "--eval-size", "4", "--loss", "NPO+GD", "--lrs", "1e-3"]
TINY += ["--optimizers", "dualoptim_plus", "--max-len", "96", "--ft-batch-size", "8"]


def test_checkpoint_pipeline_end_to_end(tmp_path, capsys):
  export = tmp_path / "export"
  argv = [
    *TINY,
    *["--model", str(HF_TINY / "llama"), "--ft-epochs", "1", "--ft-lr", "3e-3", "--steps", "2"],
    *["--lora-rank", "8", "--param-dtype", "bfloat16", "--mesh", "data:4,model:2"],
    *["--save-model", str(export), "--out", str(tmp_path / "a")],
  ]
  assert tofu.main(argv) == 0
  out = capsys.readouterr().out
  assert "| NPO+GD | dualoptim_plus |" in out and "LoRA rank 8" in out and "data:4,model:2" in out
  res = json.loads((tmp_path / "a" / "results.json").read_text())
  model = res["setup"]["model"]
  assert (model["lora_rank"], model["param_dtype"]) == (8, "bfloat16")
  assert model["mesh"] == {"data": 4, "model": 2} and model["special_ids"]["add_bos"]
  planned = model["state_bytes"]["dualoptim_plus"]
  (run,) = res["runs"]
  assert run["state_bytes"] == planned["trained"] < planned["full"] / 5
  assert [e["objective"] for e in run["log"]] == ["forget", "retain"]
  (folder,) = [f for f in export.iterdir() if f.name not in ("finetuned", "oracle")]
  assert (folder / "tokenizer.json").is_file() and (folder / "generation_config.json").is_file()
  assert json.loads((folder / "config.json").read_text())["torch_dtype"] == "bfloat16"
  assert not hf.has_lora(hf.load_model(folder, dtype=jnp.bfloat16))  # adapters merged

  argv = [
    *TINY,
    *["--finetuned", str(export / "finetuned"), "--oracle", str(export / "oracle")],
    "--steps",
    "1",
    *["--prompt-format", "llama2", "--out", str(tmp_path / "b")],
  ]
  assert tofu.main(argv) == 0
  out = capsys.readouterr().out
  assert "fine-tune (all data)" not in out and "prompt format llama2" in out
  res = json.loads((tmp_path / "b" / "results.json").read_text())
  assert res["setup"]["model"]["prompt_format"].startswith("[INST]")
  assert res["oracle"]["forget_quality"] == 1.0 and len(res["runs"]) == 1
