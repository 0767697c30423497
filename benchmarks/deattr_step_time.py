"""Wall time of a de-attribution RL step against a gradient step of NPO+GD (same model, same CPU).

::

  python -m benchmarks.deattr_step_time --out results/deattr_step_time.json
  python -m benchmarks.deattr_step_time --data ../shared/data/tofu --split forget01 --batch-size 8

Every step is a forget step (``retain_steps=0``), so a run's steady-state time per step is
the forget step itself: for ``NPO+GD`` one gradient step on ``batch`` forget QA; for
``DeAttr+KL`` a rollout (sampling ``samples`` answers per question, their log-probs, the
classifier's reward on the host) plus the PPO gradient step on those ``batch x samples``
answers. The job's model shape (``small``) and tokenizer, fresh weights (the cost does not
depend on them: every answer samples the full token budget), the ``bow`` classifier, adamw.
The two losses take turns within every repeat (a shared machine slows them alike); the
table gives the median over repeats of the mean step time, and the rollout's share.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform

import jax
import numpy as np
from flax import nnx

from experiments.data import owners as ownlib
from experiments.data import synthetic
from experiments.data import tofu as tofu_data
from experiments.data.batching import Encoder
from experiments.data.tokenizer import train_tokenizer
from experiments.loops import losses, optimizers, rollout
from experiments.loops.unlearn import UnlearnBatches, Unlearner
from experiments.models import classifier as clf
from experiments.models import make_apply
from experiments.models.decoder import DecoderLM, config_for


def main(argv: list[str] | None = None) -> dict:
  """Times both losses and prints the table; writes JSON with ``--out``."""
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--data", default="synthetic", help="'synthetic' or a TOFU folder")
  p.add_argument("--split", default="forget05")
  p.add_argument("--batch-size", type=int, default=4)
  p.add_argument("--steps", type=int, default=12, help="steps per timed run (>= 2)")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--out", default=None, help="JSON file for the results")
  args = p.parse_args(argv)
  real = args.data != "synthetic"
  if real:
    corpus = tofu_data.load_local(args.data, args.split)
  else:
    corpus = synthetic.generate(args.split)
  vocab, max_len = (2048, 128) if real else (1024, 64)
  encoder = Encoder(train_tokenizer(corpus.texts(), vocab), max_len)
  cfg = config_for("small", encoder.tok.get_vocab_size(), max_len)
  graphdef, params = nnx.split(DecoderLM(cfg, nnx.Rngs(0)))
  apply = make_apply(graphdef)
  owners = ownlib.owners_of(corpus)
  data = ownlib.classifier_data(corpus, owners)
  classifier = clf.train("bow", owners, data.train, data.heldout, encoder)[0]
  rl = rollout.Rollouts(graphdef, encoder, corpus, classifier)
  recipe = optimizers.Recipe(forget_steps=1, retain_steps=0)
  unlearner = Unlearner(apply, recipe, args.steps, warmup=1)
  times: dict[str, list[float]] = {"NPO+GD": [], "DeAttr+KL": []}
  rollout_s: list[float] = []
  for repeat in range(args.repeats + 1):  # repeat 0 compiles
    for name in times:
      f, r = losses.parse_loss(name)
      if rollout.is_deattr(f):
        batches = rl.batches(f, r, args.batch_size, repeat)
      else:
        batches = UnlearnBatches(corpus, encoder, losses.roles_for(f, r), args.batch_size, repeat)
      res = unlearner.run(params, params, batches, "adamw", f, r, 1e-4, desc=name)
      if repeat:
        times[name].append(res.wall_s / args.steps)
        if rollout.is_deattr(f):
          rollout_s += [h["seconds"] for h in batches.history[1:]]
  npo, rl_step = (float(np.median(times[n])) for n in ("NPO+GD", "DeAttr+KL"))
  out = {
    "data": corpus.name,
    "batch_size": args.batch_size,
    "samples": rollout.RolloutOptions().samples,
    "answer_tokens": rl.sampler.max_new,
    "npo_gd_step_s": npo,
    "deattr_step_s": rl_step,
    "deattr_rollout_s": float(np.median(rollout_s)),
    "ratio": rl_step / npo,
    "repeats": times,
    "machine": f"{platform.machine()}, {jax.devices()[0].platform}",
  }
  print(
    f"{corpus.name}: batch {args.batch_size}, DeAttr samples {out['samples']} x "
    f"{out['answer_tokens']} tokens"
  )
  print("| step | seconds (median of repeats) |")
  print("|---|---|")
  print(f"| NPO+GD gradient step | {npo:.3f} |")
  print(f"| DeAttr+KL RL step | {rl_step:.3f} (rollout {out['deattr_rollout_s']:.3f}) |")
  print(f"| ratio | {out['ratio']:.1f}x |")
  if args.out:
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.out).write_text(json.dumps(out, indent=1))
  return out


if __name__ == "__main__":
  main()
