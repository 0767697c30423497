"""Parity of ``experiments.hf`` with HF transformers on ``../shared/data/hf_tiny``.

::

  python -m benchmarks.hf_parity --out benchmarks/results/hf_parity.json

For each family: the largest float32 logit error on real tokens against transformers' reference
logits, on one device and on a 4x2 mesh of simulated CPU devices; whether the greedy
continuations (8 tokens, left-padded prompts, KV cache) equal transformers'; the KL divergence
KL(p_float32_reference || p_bf16) per real token of bfloat16 weights and compute; and whether
``save_model`` -> ``load_model`` gives back every parameter bit for bit. The pass bars are those of
``tests/test_hf_models.py``; this script prints the measured values behind them.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

FAMILIES = ("llama", "qwen2", "qwen3", "phi", "gemma")
DEFAULT_DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "hf_tiny"


def _logits(model, ids, mask) -> np.ndarray:
  return np.asarray(jax.jit(lambda i, m: model(i, m))(ids, mask), np.float32)


def _case(hf, folder: pathlib.Path, mesh) -> dict:
  ref = dict(np.load(folder / "reference.npz"))
  real = ref["mask"].astype(bool)
  row = {}
  for name, m in (("one_device", None), ("mesh_4x2", mesh)):
    model = hf.load_model(folder, mesh=m)
    err = np.abs(_logits(model, ref["ids"], ref["mask"]) - ref["logits"])[real].max()
    out = np.asarray(hf.greedy_generate(model, ref["gen_ids"], ref["gen_mask"], 8))
    row[f"max_logit_error_{name}"] = float(err)
    row[f"greedy_identical_{name}"] = bool(np.array_equal(out, ref["gen_out"]))
  low = _logits(hf.load_model(folder, dtype=jnp.bfloat16), ref["ids"], ref["mask"])
  log_p = jax.nn.log_softmax(ref["logits"])
  kl = np.sum(np.exp(log_p) * (log_p - jax.nn.log_softmax(low)), axis=-1)[real]
  row["bf16_kl_mean"], row["bf16_kl_max"] = float(kl.mean()), float(kl.max())
  model = hf.load_model(folder)
  with tempfile.TemporaryDirectory() as tmp:
    hf.save_model(model, tmp)
    back = hf.load_model(tmp)
  params = [jax.tree.leaves(nnx.state(m, nnx.Param)) for m in (model, back)]
  pairs = zip(*params, strict=True)
  row["round_trip_bit_exact"] = all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in pairs)
  return row


def main(argv=None) -> None:
  """Measures every family and prints the table; ``--out`` also writes it as JSON."""
  p = argparse.ArgumentParser(prog="python -m benchmarks.hf_parity", description=__doc__)
  p.add_argument("--data", type=pathlib.Path, default=DEFAULT_DATA, help="the hf_tiny folder")
  p.add_argument("--out", type=pathlib.Path, default=None, help="JSON file to write")
  args = p.parse_args(argv)
  if not args.data.is_dir():
    p.error(f"{args.data}: no such folder (the tiny HF checkpoints)")
  jax.config.update("jax_num_cpu_devices", 8)  # a 4x2 mesh on CPU; before JAX starts its backend
  from experiments import hf

  mesh = hf.make_mesh(4, 2, devices=jax.devices()[:8])
  rows = {f: _case(hf, args.data / f, mesh) for f in FAMILIES}
  print(
    "| family | max logit err (1 dev) | max logit err (4x2 mesh) | greedy = HF (1 dev / mesh) "
    "| bf16 KL mean | bf16 KL max | save -> load bit-exact |"
  )
  print("|---|---|---|---|---|---|---|")
  for f, r in rows.items():
    greedy = f"{r['greedy_identical_one_device']} / {r['greedy_identical_mesh_4x2']}"
    print(
      f"| {f} | {r['max_logit_error_one_device']:.2e} | {r['max_logit_error_mesh_4x2']:.2e} | "
      f"{greedy} | {r['bf16_kl_mean']:.1e} | {r['bf16_kl_max']:.1e} | {r['round_trip_bit_exact']} |"
    )
  if args.out:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"families": rows, "jax": jax.__version__}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
