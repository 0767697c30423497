"""Command line: ``python -m experiments.multitask`` (see ``--help``).

Multi-task learning with K = 3 objectives on one small decoder: reading
comprehension over generated author bios (``qa``, ROUGE-L recall), the same
questions answered in JSON (``json``, exact match) and list reversal
(``reverse``, exact match), all on held-out items (:mod:`experiments.data.multitask`).
A base model that has only learned to copy (``Repeat: x`` -> ``x``) is trained
once and cached; every optimizer then trains the three tasks from it on the
same budget: ``joint`` AdamW (sum of the three losses), ``alternating`` AdamW
and the DualOptim family with one delta pair per task (same cycle).
Writes ``results.json`` (each run: ``optimizer``, ``tasks``, ``average``, the
per-step log and the conflict diagnostics), ``results.md`` and plots to ``--out``.
"""

from __future__ import annotations

import dataclasses
import pathlib
import sys
import time

import numpy as np

from experiments import cli, model_flags
from experiments.data import multitask as data
from experiments.data.batching import round_up
from experiments.data.prompts import prompt_format
from experiments.evaluation import generation
from experiments.evaluation import multiobjective_plots as plots
from experiments.evaluation import multiobjective_report as report
from experiments.loops import multiobjective as mo
from experiments.loops.finetune import FineTuneConfig
from experiments.models.decoder import MODEL_SIZES
from experiments.models.setup import ModelOptions


def common_parser(
  prog: str, doc: str, *, out: str, steps: int, lrs: str, k: int, base_epochs: int = 3
) -> cli.Parser:
  """The flags both multi-objective jobs share (each range-checked, one-line errors)."""
  p = cli.Parser(prog=prog, description=doc)
  p.add_argument("--out", default=out, help=f"output folder (default {out})")
  p.add_argument(
    "--optimizers",
    type=cli.name_list,
    default=list(mo.DEFAULT_OPTIMIZERS),
    help="comma list: joint, alternating and dualoptim_jax optimizer names "
    f"(default {','.join(mo.DEFAULT_OPTIMIZERS)})",
  )
  p.add_argument("--seeds", type=cli.number_list(int, lo=0), default=[0], help="comma list")
  p.add_argument(
    "--lrs",
    type=cli.number_list(float, lo=0, lo_open=True),
    default=[float(x) for x in lrs.split(",")],
    help=f"comma list of peak learning rates (default {lrs})",
  )
  p.add_argument("--steps", type=cli.number(int, lo=1), default=steps, help="optimizer steps")
  p.add_argument("--batch-size", type=cli.number(int, lo=k), default=12, help="sequences per step")
  p.add_argument(
    "--run-lengths",
    type=cli.number_list(int, lo=1),
    default=[1] * k,
    help=f"the objective cycle, {k} run lengths (default {','.join(['1'] * k)})",
  )
  p.add_argument(
    "--model",
    help="HF-format checkpoint folder (llama, qwen2, qwen3, phi, gemma) to train instead of the "
    "in-house model; it is the base model (no copy pretraining unless --base-epochs)",
  )
  model_flags.add_prompt_format(p)
  p.add_argument("--model-size", choices=list(MODEL_SIZES), default=None, help="(default small)")
  p.add_argument("--vocab-size", type=cli.number(int, lo=300), default=None, help="BPE vocabulary")
  p.add_argument(
    "--base-epochs",
    type=cli.number(int, lo=1),
    default=None,
    help=f"base model epochs (default {base_epochs}; 0 with --model)",
  )
  p.add_argument("--base-lr", type=cli.number(float, lo=0, lo_open=True), default=3e-3)
  p.add_argument(
    "--diag-every", type=cli.number(int, lo=1), default=None, help="steps between diagnostics"
  )
  return p


def job_settings(args, *, k: int, vocab: int, max_len: int, base_epochs: int) -> mo.JobSettings:
  """Validated :class:`~experiments.loops.multiobjective.JobSettings` from parsed flags.

  Raises:
    ValueError: an unknown optimizer or a cycle without ``k`` run lengths.
  """
  for name in args.optimizers:
    if not mo.available(name):
      raise ValueError(
        f"--optimizers: unknown optimizer {name!r} (use {mo.JOINT}, {mo.ALTERNATING} or a "
        "dualoptim_jax name)"
      )
  if len(args.run_lengths) != k:
    raise ValueError(f"--run-lengths: needs {k} run lengths, got {len(args.run_lengths)}")
  model = _model_options(args)
  if model.checkpoint is not None:
    base_epochs = 0  # the checkpoint is the (pretrained) base model
  return mo.JobSettings(
    out=pathlib.Path(args.out),
    optimizer_names=tuple(dict.fromkeys(args.optimizers)),
    seeds=tuple(dict.fromkeys(args.seeds)),
    lrs=tuple(dict.fromkeys(args.lrs)),
    steps=args.steps,
    batch_size=args.batch_size,
    model_size=args.model_size or "small",
    vocab_size=args.vocab_size or vocab,
    max_len=max_len,
    run_lengths=tuple(args.run_lengths),
    base=FineTuneConfig(
      epochs=args.base_epochs or base_epochs, batch_size=16, lr=args.base_lr, save_every=1
    ),
    diag_every=args.diag_every or max(args.steps // 10, 1),
    model=model,
  )


def _model_options(args) -> ModelOptions:
  """``--model`` / ``--prompt-format`` as checked model options (one-line ValueErrors)."""
  prompt_format(args.prompt_format)  # a malformed template: one line
  if args.model is None:
    return ModelOptions(prompt_format=args.prompt_format)
  model_flags.check_folder("--model", args.model)
  model_flags.check_in_house_flags(args)
  return ModelOptions(model=args.model, prompt_format=args.prompt_format)


def parser() -> cli.Parser:
  p = common_parser(
    "python -m experiments.multitask",
    __doc__.split("\n")[0],
    out="results/multitask",
    steps=400,
    lrs="3e-3",
    k=3,
  )
  p.add_argument("--copy-size", type=cli.number(int, lo=2), default=3000, help="base model pairs")
  p.add_argument("--n-authors", type=cli.number(int, lo=2), default=200, help="training authors")
  p.add_argument("--eval-size", type=cli.number(int, lo=1), default=120, help="held-out per task")
  p.add_argument(
    "--single-task",
    action="store_true",
    help="also train each task alone (AdamW, same steps): the single-task vs joint gap",
  )
  return p


def make_evaluate(prep: mo.Prepared, tasks: tuple[data.Task, ...]):
  """``evaluate(params) -> {"tasks", "average", "samples"}`` on the held-out items."""
  longest = max(len(prep.encoder.pair("", a)[0]) for t in tasks for _, a in t.eval)
  gen = generation.Generator(prep.graphdef, prep.encoder, max_new_tokens=round_up(longest, 8))

  def evaluate(params) -> dict:
    scores, samples = {}, {}
    for t in tasks:
      outs = gen(params, [q for q, _ in t.eval])
      scores[t.name] = float(np.mean(generation.score(t.metric, [a for _, a in t.eval], outs)))
      samples[t.name] = [
        {"prompt": q, "target": a, "output": o} for (q, a), o in zip(t.eval[:2], outs, strict=False)
      ]
    return {"tasks": scores, "average": float(np.mean(list(scores.values()))), "samples": samples}

  return evaluate


def brief(rec: dict) -> str:
  """One log line of a run's metrics."""
  return " ".join(f"{k} {v:.3f}" for k, v in rec["tasks"].items()) + f" | avg {rec['average']:.3f}"


def _single_task(prep, tasks, s: mo.JobSettings, evaluate, log) -> list[dict]:
  """AdamW on one task at a time (same steps, batch and lr grid): the no-conflict reference."""
  out = []
  for t in tasks:
    one = dataclasses.replace(s, optimizer_names=(mo.ALTERNATING,), run_lengths=(1,))
    for rec in mo.run_grid(prep, (t.name,), [t.train], one, evaluate, brief, log):
      out.append({**rec, "optimizer": f"single-task {t.name}"})
  return out


def settings(args) -> mo.JobSettings:
  """The job's settings (raises ValueError on bad flags)."""
  return job_settings(args, k=3, vocab=1024, max_len=128, base_epochs=3)


def run(args, s: mo.JobSettings, log=print) -> dict:
  """Runs the job and writes results.json, results.md and the plots."""
  t_start = time.perf_counter()
  tasks = data.generate(n_train_authors=args.n_authors, n_eval=args.eval_size)
  base_pairs = data.copy_pairs(args.copy_size)
  texts = [x for t in tasks for p in t.train for x in p] + [x for p in base_pairs for x in p]
  names = tuple(t.name for t in tasks)
  described = [
    f"{t.name} ({len(t.train)} train, {len(t.eval)} held out, {t.metric})" for t in tasks
  ]
  log(f"[data] {'; '.join(described)}; base model: {len(base_pairs)} copy pairs")
  prep = mo.prepare(texts, base_pairs, s, log)
  evaluate = make_evaluate(prep, tasks)
  base_ev = evaluate(prep.params)
  log(f"[base model] {brief(base_ev)}")
  runs = mo.run_grid(prep, names, [t.train for t in tasks], s, evaluate, brief, log)
  singles = _single_task(prep, tasks, s, evaluate, log) if args.single_task else []

  labels = [*names, "average"]
  cols = [(n, lambda r, n=n: r["tasks"][n]) for n in names] + [("average", lambda r: r["average"])]
  rows = report.aggregate(runs, cols)
  base_name = "base model (copy only)" if s.model.checkpoint is None else "base model (checkpoint)"
  base_line = {base_name: {**base_ev["tasks"], "average": base_ev["average"]}}
  single_line = {}
  for srow in report.aggregate(singles, cols):
    task = srow["optimizer"].removeprefix("single-task ")
    single_line[f"{srow['optimizer']} (lr {srow['lr']:g})"] = {task: srow[task][0]}
  table = report.markdown_table(rows, labels, {**base_line, **single_line})
  setup = {
    "title": "Multi-task learning: qa, json, reverse (K = 3)",
    "notes": (
      f"Held-out metrics (qa: ROUGE-L recall, json/reverse: exact match), mean ± std over seeds "
      f"{', '.join(map(str, s.seeds))}; {s.steps} steps of {s.batch_size} sequences (joint: "
      f"{s.batch_size // 3} per task), cycle {s.run_lengths}; base model = "
      + ("copy-only pretraining." if s.model.checkpoint is None else f"{s.model.model}.")
    ),
    **{k: (str(v) if isinstance(v, pathlib.Path) else v) for k, v in dataclasses.asdict(s).items()},
    "tasks": {
      t.name: {"train": len(t.train), "eval": len(t.eval), "metric": t.metric} for t in tasks
    },
    "n_params": prep.n_params,
    "base_seconds": prep.base_seconds,
  }
  payload = {"setup": setup, "base": base_ev, "runs": runs, "single_task": singles}
  payload["total_seconds"] = time.perf_counter() - t_start
  wall = report.markdown_table(
    report.aggregate(
      runs, [("wall s", lambda r: r["wall_s"]), ("state MB", lambda r: r["state_bytes"] / 1e6)]
    ),
    ["wall s", "state MB"],
  )
  report.write(
    s.out,
    payload,
    [
      ("Per-task held-out metrics", table),
      ("Conflict diagnostics (mean over training)", report.diagnostics_table(runs)),
      ("Cost", wall),
    ],
  )
  if runs:
    plots.bars(rows, labels, s.out / "tasks.png", "held-out metric per task")
    plots.conflict(runs, s.out / "conflict.png")
    plots.loss_curves(runs, list(names), s.out / "loss_curves.png")
  log("\n" + table)
  log(
    f"\n[done] {payload['total_seconds']:.0f}s total; wrote {s.out}/results.json, results.md, "
    "tasks.png, conflict.png, loss_curves.png"
  )
  return payload


def main(argv: list[str] | None = None) -> int:
  """Parses flags and runs; bad input ends with one line naming the problem (status 2)."""
  args = parser().parse_args(argv)
  try:
    s = settings(args)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  run(args, s)
  return 0


if __name__ == "__main__":
  sys.exit(main())
