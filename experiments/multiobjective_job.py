"""The multi-objective jobs (multitask, safety): their shared flags, settings and phases.

Both jobs run the same phases around their own data, evaluation and tables:

1. tokenizer, encoder and model (:func:`experiments.models.setup.load`) and the
   base model every run starts from, trained once with AdamW (:func:`base_model`;
   a checkpoint is its own base model), cached under ``{out}/checkpoints/{key}``;
2. the grid (:func:`train_grid`): every (seed, optimizer, lr) trains all
   objectives on the same budget (:class:`Plan`) with
   :class:`~experiments.loops.multiobjective.MultiObjectiveTrainer`, is evaluated
   and is written to ``{out}/runs/*.json`` (skipped when asked for again);
3. the report (:func:`write_report`): ``results.json``, ``results.md``, plots.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable, Sequence

from experiments import cli, model_flags
from experiments.data.corpus import QA
from experiments.evaluation import multiobjective_plots as plots
from experiments.evaluation import multiobjective_report as report
from experiments.loops import grid, optimizers
from experiments.loops import multiobjective as mo
from experiments.loops.finetune import FineTuneConfig, fine_tune_model
from experiments.model_flags import ModelOptions
from experiments.models import setup as model_setup
from experiments.models.decoder import MODEL_SIZES
from experiments.models.setup import ModelSetup


@dataclasses.dataclass(frozen=True)
class Plan:
  """The runs of a grid: every (seed, optimizer, lr) on the same budget.

  Seeds change the batch order only (every run starts from the same base
  model); ``run_lengths`` is the objective cycle (one entry per objective).
  """

  optimizer_names: tuple[str, ...]
  seeds: tuple[int, ...]
  lrs: tuple[float, ...]
  steps: int
  batch_size: int
  run_lengths: tuple[int, ...]
  diag_every: int


@dataclasses.dataclass(frozen=True)
class JobSettings:
  """What the multi-task and safety CLIs control (see their ``--help``).

  ``base`` is the base model's AdamW training, checkpointed and shared; the
  grid's fields are those of :class:`Plan` (:attr:`plan`).
  """

  out: pathlib.Path
  optimizer_names: tuple[str, ...]
  seeds: tuple[int, ...]
  lrs: tuple[float, ...]
  steps: int
  batch_size: int
  model_size: str
  vocab_size: int
  max_len: int
  run_lengths: tuple[int, ...]
  base: FineTuneConfig
  diag_every: int
  model: ModelOptions = ModelOptions()

  @property
  def plan(self) -> Plan:
    """The grid these settings ask for."""
    fields = [f.name for f in dataclasses.fields(Plan)]
    return Plan(**{name: getattr(self, name) for name in fields})

  def record(self) -> dict:
    """The settings as ``results.json`` records them (paths as strings)."""
    return {
      k: (str(v) if isinstance(v, pathlib.Path) else v) for k, v in dataclasses.asdict(self).items()
    }


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
    help=f"checkpoint to train instead of the in-house model: {model_flags.CHECKPOINT_HELP}; "
    "it is the base model (no copy pretraining unless --base-epochs)",
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


def job_settings(args, *, k: int, vocab: int, max_len: int, base_epochs: int) -> JobSettings:
  """Validated :class:`JobSettings` from parsed flags.

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
  model = model_flags.base_options_from(args)
  if model.checkpoint is not None:
    base_epochs = 0  # the checkpoint is the (pretrained) base model
  return JobSettings(
    out=pathlib.Path(args.out),
    optimizer_names=tuple(dict.fromkeys(args.optimizers)),
    seeds=tuple(dict.fromkeys(args.seeds)),
    lrs=tuple(dict.fromkeys(args.lrs)),
    steps=args.steps,
    batch_size=args.batch_size,
    model_size=args.model_size or "small",
    vocab_size=args.vocab_size or vocab,
    max_len=model_flags.default_max_len(max_len, model.prompt_format),
    run_lengths=tuple(args.run_lengths),
    base=FineTuneConfig(
      epochs=args.base_epochs or base_epochs, batch_size=16, lr=args.base_lr, save_every=1
    ),
    diag_every=args.diag_every or max(args.steps // 10, 1),
    model=model,
  )


@dataclasses.dataclass
class Base:
  """The base model every run starts from.

  Attributes:
    params: its parameters.
    seconds: its training time (~0 when cached or a checkpoint as is).
    key: its cache key (also in every run's record name).
  """

  params: object
  seconds: float
  key: str


def base_model(
  texts: list[str], base_pairs: Sequence[tuple[str, str]], s: JobSettings, log=print
) -> tuple[ModelSetup, Base]:
  """The model (tokenizer trained on ``texts``) and its base model (trained on ``base_pairs``).

  Both are cached under ``{out}/checkpoints/{key}`` (key = the texts, the base
  data, the model and the base hyperparameters), so later runs reuse them and
  an interrupted base training resumes. A checkpoint (``s.model``) brings its
  own tokenizer and weights, and is the base model unless ``s.base.epochs``
  asks for copy pretraining on top.
  """
  parts = [texts, list(base_pairs), s.model_size, s.vocab_size, s.max_len]
  parts += [dataclasses.asdict(s.base), *s.model.key_parts()]  # [] for the in-house model
  key = grid.short_key(parts, 12)
  cache = s.out / "checkpoints" / key

  def tokenizer():  # the in-house BPE (a checkpoint brings its own)
    return model_setup.cached_tokenizer(texts, s.vocab_size, cache / "tokenizer.json")

  m = model_setup.load(
    s.model.checkpoint, s.model.prompt_format, s.max_len, s.model_size, tokenizer
  )
  log(f"[model] {m.description}")
  params, hist, seconds = m.params, [], 0.0
  if s.base.epochs > 0:
    data = tuple(QA(q, a) for q, a in base_pairs)
    params, hist, seconds = fine_tune_model(m, data, s.base, cache / "base", desc="base model")
  done = f" (final epoch loss {hist[-1]:.3f})" if hist else " (cached)"
  log(f"[base model] {seconds:.0f}s" + (done if s.base.epochs > 0 else " (the checkpoint as is)"))
  return m, Base(params, seconds, key)


def train_grid(
  m: ModelSetup,
  base: Base,
  names: Sequence[str],
  objectives: Sequence[Sequence[tuple[str, str]]],
  plan: Plan,
  runs_dir: pathlib.Path,
  evaluate: Callable[..., dict],
  brief: Callable[[dict], str],
  log=print,
  key_parts: Sequence = (),
) -> list[dict]:
  """Trains and evaluates every (seed, optimizer, lr) of ``plan``; returns the run records.

  ``key_parts`` join the runs' cache key: what else changes a run's record (e.g. the
  safety job's ``--eval-limit``), so a cached run evaluated otherwise is not reused.

  Each record (``optimizer``, ``lr``, ``seed``, ``steps``, ``wall_s``,
  ``state_bytes``, ``log``, ``diagnostics`` and what ``evaluate(params)``
  returns) is written to ``runs_dir`` and reused when the same run is asked
  for again. Seed-major order: an interrupted job has whole seeds.
  """
  warmup = max(plan.steps // 10, 1)
  trainer = mo.MultiObjectiveTrainer(
    m.apply, names, optimizers.Recipe(), plan.run_lengths, plan.steps, warmup, plan.diag_every
  )
  run_key = grid.short_key(
    [base.key, plan.steps, plan.batch_size, plan.run_lengths, plan.diag_every, *key_parts], 8
  )
  cells = [
    (f"{opt}-lr{lr:g}-s{seed}-{run_key}", (seed, opt, lr))
    for seed in plan.seeds
    for opt in plan.optimizer_names
    for lr in plan.lrs
  ]

  def one_run(cell, name, position) -> dict:
    seed, opt, lr = cell
    batches = mo.ObjectiveBatches(objectives, m.encoder, plan.batch_size, seed)
    tag = f"{position} {opt} lr={lr:g} seed={seed}"
    res = trainer.run(base.params, batches, opt, lr, desc=tag)
    rec = {
      "optimizer": opt,
      "lr": lr,
      "seed": seed,
      "steps": plan.steps,
      "wall_s": res.wall_s,
      "state_bytes": res.state_bytes,
      **evaluate(res.params),
      "log": res.log,
      "diagnostics": res.diagnostics,
    }
    log(f"{tag}: {brief(rec)} | {res.wall_s:.1f}s | state {res.state_bytes:,} B")
    return rec

  return grid.run_cached(runs_dir, cells, one_run)


def write_report(
  out: pathlib.Path,
  payload: dict,
  sections: list[tuple[str, str]],
  names: Sequence[str],
  plot: tuple[str, Callable[[pathlib.Path], None]],
  table: str,
  log=print,
) -> None:
  """Writes results.json, results.md (``sections``) and the plots; logs ``table``.

  ``plot`` is the job's own figure, ``(file name, draw(path))``; the conflict
  diagnostics and the per-objective loss curves of ``names`` follow it.
  """
  report.write(out, payload, sections)
  runs = payload["runs"]
  figure, draw = plot
  if runs:
    draw(out / figure)
    plots.conflict(runs, out / "conflict.png")
    plots.loss_curves(runs, list(names), out / "loss_curves.png")
  log("\n" + table)
  log(
    f"\n[done] {payload['total_seconds']:.0f}s total; wrote {out}/results.json, results.md, "
    f"{figure}, conflict.png, loss_curves.png"
  )
