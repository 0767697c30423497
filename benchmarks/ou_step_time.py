"""Wall time of a forget step of each open-unlearning loss against NPO's (same model, same CPU).

::

  python -m benchmarks.ou_step_time --out results/ou_step_time.json
  python -m benchmarks.ou_step_time --data ../shared/data/tofu --split forget01 --batch-size 8

Every step is a forget step (``retain_steps=0``): the retain step (GD here) is the same
gradient step for every pair, so the forget step is where the losses differ. The job's
model shape (``small``) and tokenizer, fresh weights (the cost does not depend on them),
the job's compiled step with ``--optimizer``. The losses take turns within every repeat (a
shared machine slows them alike); the table gives the median over repeats of the mean step
time and its ratio to NPO+GD's.
"""

from __future__ import annotations

import argparse
import pathlib
import platform

import jax
import numpy as np

from experiments.data import synthetic
from experiments.data import tofu as tofu_data
from experiments.data.tokenizer import train_tokenizer
from experiments.loops import losses, optimizers
from experiments.loops.checkpoint import write_json
from experiments.loops.unlearn import UnlearnBatches, Unlearner
from experiments.models import setup

LOSSES = ("NPO+GD", "CEU+GD", "WGA+GD", "SatImp+GD", "UNDIAL+GD", "RMU+GD")


def main(argv: list[str] | None = None) -> dict:
  """Times every loss and prints the table; writes JSON with ``--out``."""
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--data", default="synthetic", help="'synthetic' or a TOFU folder")
  p.add_argument("--split", default="forget05")
  p.add_argument("--batch-size", type=int, default=4)
  p.add_argument("--optimizer", default="adamw")
  p.add_argument("--steps", type=int, default=20, help="steps per timed run (>= 2)")
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--out", default=None, help="JSON file for the results")
  args = p.parse_args(argv)
  real = args.data != "synthetic"
  corpus = tofu_data.load_local(args.data, args.split) if real else synthetic.generate(args.split)
  vocab, max_len = (2048, 128) if real else (1024, 64)
  m = setup.in_house(train_tokenizer(corpus.texts(), vocab), "small", max_len)
  recipe = optimizers.Recipe(forget_steps=1, retain_steps=0)
  unlearner = Unlearner(m.apply, recipe, args.steps, warmup=1)
  times: dict[str, list[float]] = {name: [] for name in LOSSES}
  for repeat in range(args.repeats + 1):  # repeat 0 compiles
    for name in LOSSES:
      f, r = losses.parse_loss(name)
      batches = UnlearnBatches(corpus, m.encoder, losses.roles_for(f, r), args.batch_size, repeat)
      res = unlearner.run(m.params, m.params, batches, args.optimizer, f, r, 1e-4, desc=name)
      if repeat:
        times[name].append(res.wall_s / args.steps)
  median = {name: float(np.median(t)) for name, t in times.items()}
  out = {
    "data": corpus.name,
    "batch_size": args.batch_size,
    "optimizer": args.optimizer,
    "step_s": median,
    "ratio_to_npo": {name: s / median["NPO+GD"] for name, s in median.items()},
    "repeats": times,
    "machine": f"{platform.machine()}, {jax.devices()[0].platform}",
  }
  print(f"{corpus.name}: batch {args.batch_size}, {args.optimizer}, forget steps only")
  print("| loss | ms per step (median of repeats) | x NPO+GD |")
  print("|---|---|---|")
  for name, s in median.items():
    print(f"| {name} | {1000 * s:.1f} | {out['ratio_to_npo'][name]:.2f} |")
  if args.out:
    path = pathlib.Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, out)
  return out


if __name__ == "__main__":
  main()
