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
import sys
import time

import numpy as np

from experiments import cli
from experiments import multiobjective_job as job
from experiments.data import multitask as data
from experiments.data.batching import round_up
from experiments.evaluation import generation
from experiments.evaluation import multiobjective_plots as plots
from experiments.evaluation import multiobjective_report as report
from experiments.loops import multiobjective as mo
from experiments.models.setup import ModelSetup


def parser() -> cli.Parser:
  p = job.common_parser(
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


def make_evaluate(m: ModelSetup, tasks: tuple[data.Task, ...]):
  """``evaluate(params) -> {"tasks", "average", "samples"}`` on the held-out items."""
  longest = max(len(m.encoder.pair("", a)[0]) for t in tasks for _, a in t.eval)
  gen = generation.Generator(m.graphdef, m.encoder, max_new_tokens=round_up(longest, 8))

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


def _single_task(m, base, tasks, plan: job.Plan, runs_dir, evaluate, log) -> list[dict]:
  """AdamW on one task at a time (same steps, batch and lr grid): the no-conflict reference."""
  one = dataclasses.replace(plan, optimizer_names=(mo.ALTERNATING,), run_lengths=(1,))
  out = []
  for t in tasks:
    for rec in job.train_grid(m, base, (t.name,), [t.train], one, runs_dir, evaluate, brief, log):
      out.append({**rec, "optimizer": f"single-task {t.name}"})
  return out


def settings(args) -> job.JobSettings:
  """The job's settings (raises ValueError on bad flags)."""
  return job.job_settings(args, k=3, vocab=1024, max_len=128, base_epochs=3)


def run(args, s: job.JobSettings, log=print) -> dict:
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
  m, base = job.base_model(texts, base_pairs, s, log)
  evaluate = make_evaluate(m, tasks)
  base_ev = evaluate(base.params)
  log(f"[base model] {brief(base_ev)}")
  runs_dir = s.out / "runs"
  runs = job.train_grid(
    m, base, names, [t.train for t in tasks], s.plan, runs_dir, evaluate, brief, log
  )
  singles = []
  if args.single_task:
    singles = _single_task(m, base, tasks, s.plan, runs_dir, evaluate, log)
  setup = setup_record(s, tasks, m.n_params, base.seconds)
  payload = {"setup": setup, "base": base_ev, "runs": runs, "single_task": singles}
  payload["total_seconds"] = time.perf_counter() - t_start
  write_report(s.out, payload, names, s.model.checkpoint is None, log)
  return payload


def setup_record(
  s: job.JobSettings, tasks: tuple[data.Task, ...], n_params: int, base_seconds: float
) -> dict:
  """What ``results.json`` records of the job's setup."""
  return {
    "title": "Multi-task learning: qa, json, reverse (K = 3)",
    "notes": (
      f"Held-out metrics (qa: ROUGE-L recall, json/reverse: exact match), mean ± std over seeds "
      f"{', '.join(map(str, s.seeds))}; {s.steps} steps of {s.batch_size} sequences (joint: "
      f"{s.batch_size // 3} per task), cycle {s.run_lengths}; base model = "
      + ("copy-only pretraining." if s.model.checkpoint is None else f"{s.model.model}.")
    ),
    **s.record(),
    "tasks": {
      t.name: {"train": len(t.train), "eval": len(t.eval), "metric": t.metric} for t in tasks
    },
    "n_params": n_params,
    "base_seconds": base_seconds,
  }


def write_report(out, payload: dict, names: tuple[str, ...], copy_base: bool, log=print) -> None:
  """The per-task, conflict and cost tables and the plots (``copy_base``: the in-house base)."""
  runs, base_ev = payload["runs"], payload["base"]
  labels = [*names, "average"]
  cols = [(n, lambda r, n=n: r["tasks"][n]) for n in names] + [("average", lambda r: r["average"])]
  rows = report.aggregate(runs, cols)
  base_name = "base model (copy only)" if copy_base else "base model (checkpoint)"
  base_line = {base_name: {**base_ev["tasks"], "average": base_ev["average"]}}
  single_line = {}
  for srow in report.aggregate(payload["single_task"], cols):
    task = srow["optimizer"].removeprefix("single-task ")
    single_line[f"{srow['optimizer']} (lr {srow['lr']:g})"] = {task: srow[task][0]}
  table = report.markdown_table(rows, labels, {**base_line, **single_line})
  cost = [("wall s", lambda r: r["wall_s"]), ("state MB", lambda r: r["state_bytes"] / 1e6)]
  sections = [
    ("Per-task held-out metrics", table),
    ("Conflict diagnostics (mean over training)", report.diagnostics_table(runs)),
    ("Cost", report.markdown_table(report.aggregate(runs, cost), ["wall s", "state MB"])),
  ]
  draw = lambda path: plots.bars(rows, labels, path, "held-out metric per task")
  job.write_report(out, payload, sections, names, ("tasks.png", draw), table, log)


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
