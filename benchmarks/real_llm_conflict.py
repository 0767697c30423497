"""Do the paper's objectives conflict on a real pretrained LLM? Gradient cosines on SmolLM2.

DualOptim+ separates what two objectives' gradients disagree on; on the from-scratch models of
this project they barely disagree (cosines within +-0.04 in the safety job). This script takes
the gradients of the two objectives of each setting at the shipped checkpoint (no training) and
prints their cosines, beside the cosine between two disjoint halves of the *same* objective
(what "aligned" looks like for these data at this probe size):

- ``tofu``: the answer cross-entropy of TOFU's forget set (forget01, task 1) and of the retain
  set, in the checkpoint's chat format. Gradient ascent / NPO *descends* the negative of the
  forget gradient, so a positive forget/retain cosine here is a conflict there.
- ``safety``: the answer cross-entropy of Safety-Tuned LLaMAs' harmful requests -> safe
  responses and of the safety job's utility pairs (generated QA and copying), as the safety job
  trains them.

Each objective's probe is split into two disjoint halves of ``--probe`` sequences (``A1``,
``A2``, ``B1``, ``B2``, drawn with ``--seed``): ``cross`` is the mean of the four A/B cosines,
``within A`` the A1/A2 cosine. The gradients are the multi-objective jobs' probe
(:func:`experiments.loops.multiobjective.probe_gradient`, sliced to 256 MB of logits).

Run from the repository root (it fetches the model once, like the jobs)::

  python -m benchmarks.real_llm_conflict --tofu ../shared/data/tofu --safety ../shared/data/safety
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import sys
import time

import jax
import numpy as np

from experiments import fetch
from experiments.data import safety as safety_data
from experiments.data import tofu as tofu_data
from experiments.evaluation.multiobjective_diagnostics import cosine_matrix
from experiments.loops.multiobjective import probe_gradient
from experiments.models import setup as model_setup

OUT = pathlib.Path("benchmarks/results/real_llm_conflict_cpu.json")


def halves(pairs, n: int, rng: np.random.Generator) -> tuple[list, list]:
  """Two disjoint random halves of ``n`` pairs each (fewer when ``pairs`` is short)."""
  idx = rng.permutation(len(pairs))
  n = min(n, len(pairs) // 2)
  return [pairs[i] for i in idx[:n]], [pairs[i] for i in idx[n : 2 * n]]


def cosines(m, grad, a_pairs, b_pairs, n: int, seed: int) -> dict:
  """Cross and within-objective gradient cosines of two objectives' halves.

  ``grad(params, batch)`` is the jitted probe gradient, shared by every call so that a batch
  shape seen before is not compiled again.
  """
  rng = np.random.default_rng(seed)
  a1, a2 = halves(a_pairs, n, rng)
  b1, b2 = halves(b_pairs, n, rng)
  grads, t0 = [], time.perf_counter()
  for part in (a1, a2, b1, b2):
    batch = m.encoder.batch(part)
    grads.append(jax.block_until_ready(grad(m.params, batch)))
  c = np.asarray(cosine_matrix(grads))
  return {
    "cross": float(np.mean([c[0, 2], c[0, 3], c[1, 2], c[1, 3]])),
    "cross_all": [float(c[i, j]) for i in (0, 1) for j in (2, 3)],
    "within_a": float(c[0, 1]),
    "within_b": float(c[2, 3]),
    "n_per_half": [len(a1), len(b1)],
    "seconds": time.perf_counter() - t0,
  }


def settings(args) -> dict[str, tuple[str, str, list, list]]:
  """Per setting: (name of A, name of B, A's pairs, B's pairs)."""
  out = {}
  if args.tofu:
    c = tofu_data.load_local(args.tofu, "forget01", task_id=1)
    out["tofu"] = (
      "forget",
      "retain",
      [(q.question, q.answer) for q in c.forget],
      [(q.question, q.answer) for q in c.retain],
    )
  if args.safety:
    d = safety_data.load(pathlib.Path(args.safety))
    out["safety"] = ("safety", "utility", list(d.safety_train), list(d.utility_train))
  return out


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog="python -m benchmarks.real_llm_conflict", description=__doc__)
  p.add_argument("--model", default="smollm2-135m-instruct", help="a name or checkpoint path")
  p.add_argument("--tofu", help="TOFU folder (../shared/data/tofu); omit to skip")
  p.add_argument("--safety", help="safety folder (../shared/data/safety); omit to skip")
  p.add_argument("--probe", type=int, default=16, help="sequences per half")
  p.add_argument("--seeds", default="0,1", help="probe draws (comma list)")
  p.add_argument("--max-len", type=int, default=256, help="tokens per sequence")
  p.add_argument("--prompt-format", default="chat", help="chat (the checkpoint's template) or tofu")
  p.add_argument("--out", type=pathlib.Path, default=OUT)
  args = p.parse_args(argv)
  if not (args.tofu or args.safety):
    p.error("give --tofu and/or --safety")
  path = fetch.resolve_model(args.model)
  m = model_setup.from_checkpoint(model_setup.Checkpoint(path), args.max_len, args.prompt_format)
  print(f"[model] {m.description}", flush=True)
  grad = jax.jit(lambda p, b: probe_gradient(m.apply, p, b))
  rows = []
  for name, (a, b, a_pairs, b_pairs) in settings(args).items():
    for seed in (int(s) for s in args.seeds.split(",")):
      r = {"setting": name, "a": a, "b": b, "seed": seed}
      r |= cosines(m, grad, a_pairs, b_pairs, args.probe, seed)
      rows.append(r)
      print(
        f"[{name} seed {seed}] cos({a}, {b}) {r['cross']:+.3f} | within {a} "
        f"{r['within_a']:+.3f} | within {b} {r['within_b']:+.3f} | {r['seconds']:.0f}s",
        flush=True,
      )
  print("\n| setting | A | B | seed | cos(A, B) | cos(A1, A2) | cos(B1, B2) | s |")
  print("|---|---|---|---:|---:|---:|---:|---:|")
  for r in rows:
    print(
      f"| {r['setting']} | {r['a']} | {r['b']} | {r['seed']} | {r['cross']:+.3f} | "
      f"{r['within_a']:+.3f} | {r['within_b']:+.3f} | {r['seconds']:.0f} |"
    )
  payload = {
    "conditions": {
      "model": str(args.model),
      "checkpoint": str(path),
      "probe_per_half": args.probe,
      "max_len": args.max_len,
      "prompt_format": args.prompt_format,
      "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
      "machine": platform.machine(),
      "cpu_count": os.cpu_count(),
      "jax": jax.__version__,
    },
    "rows": rows,
  }
  args.out.parent.mkdir(parents=True, exist_ok=True)
  tmp = args.out.with_suffix(".tmp")
  tmp.write_text(json.dumps(payload, indent=1))
  tmp.replace(args.out)
  print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
