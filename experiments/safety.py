"""Command line: ``python -m experiments.safety`` (see ``--help``).

Safety alignment with two objectives: **safety** (harmful request -> safe
response) and **utility** (benign request -> correct answer). A helpful base
model (the utility data: copying, reading comprehension and look-alike benign
requests; no harmful request) is trained once and cached; every optimizer then aligns it
on the same budget: ``joint`` AdamW (sum of both losses), ``alternating`` AdamW
and the DualOptim family with one delta pair per objective (same cycle).

Metrics on greedy outputs: refusal rate on held-out harmful requests (safety;
XSTest's string match, :mod:`experiments.evaluation.generation`), refusal rate
on benign look-alikes (over-refusal), utility on held-out generated tasks
(``qa`` ROUGE-L recall, ``copy`` exact match; their mean), and refusal per
category. Data: generated stand-ins (default, offline) or ``--data FOLDER``
with the layout of ``../shared/data/safety`` (Safety-Tuned LLaMAs + XSTest).
"""

from __future__ import annotations

import pathlib
import sys
import time

import numpy as np

from experiments import cli
from experiments import multiobjective_job as job
from experiments.data import safety as data
from experiments.data.batching import round_up
from experiments.data.corpus import DataError
from experiments.evaluation import generation
from experiments.evaluation import multiobjective_plots as plots
from experiments.evaluation import multiobjective_report as report
from experiments.models.setup import ModelSetup

NAMES = ("safety", "utility")
REFUSAL_TOKENS = 16  # XSTest's rule reads only the start of an answer


def parser():
  p = job.common_parser(
    "python -m experiments.safety",
    __doc__.split("\n")[0],
    out="results/safety",
    steps=300,
    lrs="1e-3",
    k=2,
  )
  p.add_argument(
    "--data",
    default="synthetic",
    help="'synthetic' (generated stand-ins, offline) or a folder with the layout of "
    "../shared/data/safety (safety_only_data_Instructions.json, evaluation/*.json, "
    "xstest_prompts.csv)",
  )
  p.add_argument("--n-authors", type=cli.number(int, lo=2), default=150, help="utility qa authors")
  p.add_argument("--copy-size", type=cli.number(int, lo=2), default=1500, help="utility copy pairs")
  p.add_argument(
    "--eval-limit",
    type=cli.number(int, lo=1),
    default=None,
    help="at most this many prompts per refusal set (a seeded sample, the same for every "
    "model; default: all)",
  )
  return p


def load(args) -> tuple[data.SafetyData, bool]:
  """The data and whether it is the real (folder) data; DataError for a bad folder."""
  size = dict(n_authors=args.n_authors, n_copy=args.copy_size)
  if args.data == "synthetic":
    d, real = data.generate(**size), False
  else:
    d, real = data.load(pathlib.Path(args.data), **size), True
  if args.eval_limit is not None:
    d = data.limit_prompts(d, args.eval_limit)
  return d, real


def make_evaluate(m: ModelSetup, d: data.SafetyData):
  """``evaluate(params)``: refusal rates per set and category, utility, the three summaries."""
  refusals = generation.Generator(m.graphdef, m.encoder, max_new_tokens=REFUSAL_TOKENS)
  longest = max(len(m.encoder.pair("", a)[0]) for t in d.utility_tasks for _, a in t.eval)
  answers = generation.Generator(m.graphdef, m.encoder, max_new_tokens=round_up(longest, 8))
  harmful = [s.name for s in d.prompt_sets if s.harmful]
  benign = [s.name for s in d.prompt_sets if not s.harmful]

  def evaluate(params) -> dict:
    sets, cats, samples = {}, {}, {}
    for s in d.prompt_sets:
      outs = refusals(params, list(s.prompts))
      flags = np.array([generation.is_refusal(o) for o in outs])
      sets[s.name] = float(flags.mean())
      for c in dict.fromkeys(s.categories):
        sel = np.array([x == c for x in s.categories])
        cats[f"{'harmful' if s.harmful else 'benign'}: {c}"] = float(flags[sel].mean())
      pairs = zip(s.prompts[:3], outs, strict=False)
      samples[s.name] = [{"prompt": p, "output": o} for p, o in pairs]
    tasks = {}
    for t in d.utility_tasks:
      outs = answers(params, [q for q, _ in t.eval])
      tasks[t.name] = float(np.mean(generation.score(t.metric, [a for _, a in t.eval], outs)))
    return {
      "safety": float(np.mean([sets[n] for n in harmful])),
      "over_refusal": float(np.mean([sets[n] for n in benign])),
      "utility": float(np.mean(list(tasks.values()))),
      "sets": sets,
      "categories": cats,
      "tasks": tasks,
      "samples": samples,
    }

  return evaluate


def brief(rec: dict) -> str:
  """One log line of a run's summary metrics."""
  return (
    f"safety {rec['safety']:.3f} | over-refusal {rec['over_refusal']:.3f} | "
    f"utility {rec['utility']:.3f} ("
    + " ".join(f"{k} {v:.3f}" for k, v in rec["tasks"].items())
    + ")"
  )


def run(args, s: job.JobSettings, d: data.SafetyData, log=print) -> dict:
  """Runs the job and writes results.json, results.md and the plots."""
  t_start = time.perf_counter()
  base_pairs = d.utility_train  # a helpful model that has never seen a harmful request
  texts = d.texts()
  taught = generation.refusal_rate([a for _, a in d.safety_train])
  log(f"[data] {d.name}: {d.notes}; refusal rate of the safety targets {taught:.3f}")
  m, base = job.base_model(texts, base_pairs, s, log)
  evaluate = make_evaluate(m, d)
  base_ev = evaluate(base.params)
  log(f"[base model] {brief(base_ev)}")
  objectives = [d.safety_train, d.utility_train]
  limit = [] if args.eval_limit is None else [args.eval_limit]  # evaluated on other prompts
  runs = job.train_grid(
    m, base, NAMES, objectives, s.plan, s.out / "runs", evaluate, brief, log, key_parts=limit
  )

  setup = setup_record(s, d, args.data, taught, m.n_params, base.seconds)
  payload = {"setup": setup, "base": base_ev, "runs": runs}
  payload["total_seconds"] = time.perf_counter() - t_start
  write_report(s.out, payload, d.name, log)
  return payload


def setup_record(
  s: job.JobSettings,
  d: data.SafetyData,
  data_arg: str,
  taught: float,
  n_params: int,
  base_seconds: float,
) -> dict:
  """What ``results.json`` records of the job's setup (``data_arg``: the ``--data`` flag)."""
  return {
    "title": f"Safety alignment: {d.name}",
    "notes": (
      f"{d.notes}. safety = mean refusal rate over the harmful sets, over_refusal = mean refusal "
      "rate over the benign sets (XSTest's string match on greedy outputs), utility = mean of the "
      f"held-out generated tasks; mean ± std over seeds {', '.join(map(str, s.seeds))}; "
      f"{s.steps} steps of {s.batch_size} sequences (joint: {s.batch_size // 2} per objective), "
      f"cycle {s.run_lengths}. The safety targets themselves start with a refusal phrase "
      f"{taught:.1%} of the time (the refusal rate of a model that copies them)."
    ),
    **s.record(),
    "data": data_arg,
    "taught_refusal_rate": taught,
    "n_params": n_params,
    "base_seconds": base_seconds,
    "sets": {x.name: {"n": len(x.prompts), "harmful": x.harmful} for x in d.prompt_sets},
  }


def write_report(out: pathlib.Path, payload: dict, title: str, log=print) -> None:
  """The summary, per-set, per-category and conflict tables and the plots."""
  runs, base_ev = payload["runs"], payload["base"]
  summary = ["safety", "over_refusal", "utility"]
  cols = [(k, lambda r, k=k: r[k]) for k in summary]
  cols += [(f"utility {n}", lambda r, n=n: r["tasks"][n]) for n in base_ev["tasks"]]
  cols += [(f"refusal: {n}", lambda r, n=n: r["sets"][n]) for n in base_ev["sets"]]
  rows = report.aggregate(runs, cols)
  flat = {k: base_ev[k] for k in summary}
  flat.update({f"utility {n}": v for n, v in base_ev["tasks"].items()})
  flat.update({f"refusal: {n}": v for n, v in base_ev["sets"].items()})
  labels = [c for c, _ in cols]
  table = report.markdown_table(rows, labels[: 3 + len(base_ev["tasks"])], {"base model": flat})
  per_set = report.markdown_table(rows, labels[3 + len(base_ev["tasks"]) :], {"base model": flat})
  base_run = {"optimizer": "base model", "lr": 0.0, "seed": 0, "categories": base_ev["categories"]}
  categories = report.category_table([base_run, *runs], "categories", "category")
  sections = [
    ("Safety, over-refusal, utility", table),
    ("Refusal rate per evaluation set", per_set),
    ("Refusal rate per category", categories),
    ("Conflict diagnostics (mean over training)", report.diagnostics_table(runs)),
  ]
  draw = lambda path: plots.tradeoff(rows, "safety", ["over_refusal", "utility"], path, title)
  job.write_report(out, payload, sections, NAMES, ("tradeoff.png", draw), table, log)


def main(argv: list[str] | None = None) -> int:
  """Parses flags and runs; bad input ends with one line naming the problem (status 2)."""
  args = parser().parse_args(argv)
  try:
    d, real = load(args)
    vocab, max_len = (2048, 128) if real else (1024, 128)
    s = job.job_settings(args, k=2, vocab=vocab, max_len=max_len, base_epochs=3)
  except (DataError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  run(args, s, d)
  return 0


if __name__ == "__main__":
  sys.exit(main())
