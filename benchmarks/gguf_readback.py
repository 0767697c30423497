"""Do HF transformers read our exports back with the same logits? (SmolLM2 and hf_tiny)

::

  /work/benchvenv/bin/python -m benchmarks.gguf_readback --out benchmarks/results/gguf_readback.json

Run from the repository root with a Python that has torch, transformers and gguf (never a
dependency of this project). It first runs ``--stage export`` under ``--ours-python`` (the
project's venv), which fetches SmolLM2-135M-Instruct, writes with ``experiments.convert`` /
``experiments.hf.save_gguf``

- ``smollm_hf/``: GGUF -> HF folder (float32),
- ``smollm_f32.gguf``: that folder -> GGUF (so GGUF -> HF -> GGUF),
- ``smollm_{f16,bf16,q8_0}.gguf``: the loaded model saved at those dtypes,
- ``tiny_{llama,qwen2,qwen3}.gguf``: ``../shared/data/hf_tiny`` checkpoints as GGUF,

and records our logits of each export (``experiments.hf.load_model``) on SmolLM2's reference
texts, and our token ids of the reference strings. Then each export is loaded by transformers
(``from_pretrained(folder)`` or ``from_pretrained(dir, gguf_file=...)``): the table gives the
largest |logit difference| against our model on real tokens (and its scale), and whether
transformers' tokenizer gives our ids.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
TINY = ("llama", "qwen2", "qwen3")
TINY_IDS = [[1, 5, 9, 100, 200, 7, 3, 2]]


def export(work: pathlib.Path) -> None:
  """Our side (project venv): write the exports and our logits/ids into ``work``."""
  import jax.numpy as jnp

  from experiments import convert, fetch, hf

  ref = np.load(SHARED / "smollm2" / "reference.npz")
  meta = json.loads((SHARED / "smollm2" / "reference.json").read_text())
  src = fetch.fetch("smollm2-135m-instruct")
  exports = {"smollm_hf": convert.convert(src, work / "smollm_hf")}
  exports["smollm_f32.gguf"] = convert.convert(exports["smollm_hf"], work / "smollm_f32.gguf")
  model = hf.load_model(src)
  for dtype in ("f16", "bf16", "q8_0"):
    out = work / f"smollm_{dtype}.gguf"
    exports[out.name] = hf.save_gguf(model, out, source=src, dtype=dtype)
  for family in TINY:
    if (SHARED / "hf_tiny" / family).is_dir():
      exports[f"tiny_{family}.gguf"] = convert.convert(
        SHARED / "hf_tiny" / family, work / f"tiny_{family}.gguf"
      )
  arrays, ids = {}, {}
  for name, path in exports.items():
    tiny = name.startswith("tiny")
    x = np.asarray(TINY_IDS) if tiny else ref["ids"]
    m = np.ones_like(x) if tiny else ref["mask"]
    ours = hf.load_model(path)
    arrays[name] = np.asarray(ours(jnp.asarray(x, jnp.int32), jnp.asarray(m, jnp.int32)))
    arrays[f"{name}__ids"], arrays[f"{name}__mask"] = x, m
    strings = [] if tiny else meta["tokenizer_strings"]
    ids[name] = [hf.load_tokenizer(path).encode(s).ids for s in strings]
  np.savez(work / "ours.npz", **arrays)
  (work / "ours.json").write_text(json.dumps({"exports": list(exports), "ids": ids}))


def readback(work: pathlib.Path) -> list[dict]:
  """transformers' side: load every export, compare logits and token ids with ours."""
  import torch
  from transformers import AutoModelForCausalLM, AutoTokenizer

  ours = np.load(work / "ours.npz")
  info = json.loads((work / "ours.json").read_text())
  meta = json.loads((SHARED / "smollm2" / "reference.json").read_text())
  rows = []
  for name in info["exports"]:
    kw = {"gguf_file": name} if name.endswith(".gguf") else {}
    where = str(work) if kw else str(work / name)
    row = {"export": name}
    try:
      model = AutoModelForCausalLM.from_pretrained(where, dtype=torch.float32, **kw).eval()
      x, m = ours[f"{name}__ids"], ours[f"{name}__mask"]
      with torch.no_grad():
        out = model(input_ids=torch.tensor(x), attention_mask=torch.tensor(m)).logits.numpy()
      real = m.astype(bool)
      row["max_abs_logit_diff"] = float(np.abs(out - ours[name])[real].max())
      row["logit_scale"] = float(np.abs(ours[name][real]).max())
      if info["ids"][name]:
        tok = AutoTokenizer.from_pretrained(where, **kw)
        theirs = [tok(s)["input_ids"] for s in meta["tokenizer_strings"]]
        row["tokenizer_ids_identical"] = theirs == info["ids"][name]
    except Exception as e:  # a transformers limitation is a result here, not a crash
      row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
    rows.append(row)
  return rows


def main(argv=None) -> None:
  """Exports with ``--ours-python``, reads back here, prints the table; ``--out`` writes JSON."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--stage", choices=["all", "export"], default="all")
  parser.add_argument("--work", type=pathlib.Path, help="folder for the exports (default: temp)")
  parser.add_argument("--ours-python", default="/work/main/.venv/bin/python")
  parser.add_argument("--out", type=pathlib.Path)
  args = parser.parse_args(argv)
  if args.stage == "export":
    export(args.work)
    return
  with tempfile.TemporaryDirectory() as tmp:
    work = args.work or pathlib.Path(tmp)
    work.mkdir(parents=True, exist_ok=True)
    command = [args.ours_python, "-m", "benchmarks.gguf_readback", "--stage", "export"]
    subprocess.run([*command, "--work", str(work)], cwd=ROOT, check=True)
    rows = readback(work)
  print(f"{'export':<20} {'max |dlogit|':>12} {'scale':>8} {'relative':>9}  tokenizer ids")
  for r in rows:
    if "error" in r:
      print(f"{r['export']:<20} transformers cannot load it: {r['error']}")
      continue
    rel = r["max_abs_logit_diff"] / r["logit_scale"]
    same = {True: "identical", False: "DIFFER", None: "-"}[r.get("tokenizer_ids_identical")]
    print(f"{r['export']:<20} {r['max_abs_logit_diff']:>12.2e} {r['logit_scale']:>8.2f} "
          f"{rel:>9.1e}  {same}")  # fmt: skip
  if args.out:
    import torch
    import transformers

    versions = {"torch": torch.__version__, "transformers": transformers.__version__}
    args.out.write_text(json.dumps({"made_with": versions, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
  sys.exit(main())
