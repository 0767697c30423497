"""Wall time of one jitted forward+backward step: loaded HF checkpoints vs the in-house decoder.

Run: ``python -m experiments.models.hf.step_time [--hf-tiny ../shared/data/hf_tiny]``. Prints
one line per model (parameters, median and best milliseconds over ``--repeats`` steps after
a warm-up) for a (batch, seq) batch of random tokens and a token-mean cross-entropy.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from experiments.models.decoder import MODEL_SIZES, DecoderLM, ModelConfig
from experiments.models.hf.loading import load_model
from experiments.models.hf.lora import add_lora


def _loss(model, ids, mask):
  logp = jax.nn.log_softmax(model(ids, mask)[:, :-1])
  picked = jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1)[..., 0]
  return -jnp.mean(picked)


def time_step(model, ids, mask, repeats: int, wrt=nnx.Param) -> tuple[int, float, float]:
  """(trainable parameters, median ms, best ms) of a jitted value-and-grad step w.r.t. ``wrt``."""
  graphdef, params, rest = nnx.split(model, wrt, ...)

  @jax.jit
  def step(params, ids, mask):
    return jax.value_and_grad(lambda p: _loss(nnx.merge(graphdef, p, rest), ids, mask))(params)

  jax.block_until_ready(step(params, ids, mask))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(step(params, ids, mask))
    times.append(1e3 * (time.perf_counter() - start))
  n = sum(x.size for x in jax.tree.leaves(params))
  return n, statistics.median(times), min(times)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  default = pathlib.Path(__file__).resolve().parents[4] / "shared" / "data" / "hf_tiny"
  parser.add_argument("--hf-tiny", type=pathlib.Path, default=default)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--seq", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=30)
  args = parser.parse_args(argv)
  rng = np.random.default_rng(0)
  ids = jnp.asarray(rng.integers(3, 512, (args.batch, args.seq)), jnp.int32)
  mask = jnp.ones_like(ids)
  rows = []
  for family in ("llama", "qwen2", "qwen3", "phi", "gemma"):
    model = load_model(args.hf_tiny / family)
    rows.append((f"hf {family}", time_step(model, ids, mask, args.repeats)))
  lora = add_lora(load_model(args.hf_tiny / "llama"), rank=8)
  rows.append(
    ("hf llama + LoRA r8 (adapters)", time_step(lora, ids, mask, args.repeats, nnx.LoRAParam))
  )
  # The in-house decoder at llama tiny's shape (64 wide, 2 layers, 4 heads, 128 MLP) and "small".
  shapes = {
    "in-house, llama-tiny shape": dict(d_model=64, n_layers=2, n_heads=4, d_ff=128),
    "in-house small": MODEL_SIZES["small"],
  }
  for name, shape in shapes.items():
    model = DecoderLM(ModelConfig(vocab_size=512, max_len=args.seq, **shape), nnx.Rngs(0))
    rows.append((name, time_step(model, ids, mask, args.repeats)))
  print(f"forward+backward, batch {args.batch} x {args.seq} tokens, {jax.devices()[0].platform}")
  for name, (n, median, best) in rows:
    print(f"{name:32s} {n:>9,d} params  median {median:7.2f} ms  best {best:7.2f} ms")


if __name__ == "__main__":
  main()
