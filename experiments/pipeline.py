"""The TOFU job as phases: data, model, fine-tuned and oracle, classifier, grid, evaluation, report.

:func:`run` is the whole job. Each phase is a function of what it needs and
returns what the next needs:

1. tokenizer, encoder and model (:func:`experiments.models.setup.load`): the
   in-house decoder with the local BPE, or a checkpoint with its own;
2. the fine-tuned model and the retain-only oracle
   (:func:`experiments.loops.finetune.finetuned_and_oracle`), cached as orbax
   checkpoints under ``{out}/checkpoints/{key}`` (key = data fingerprint, model,
   fine-tuning hyperparameters: :func:`cache_key`), so re-runs and runs with
   other optimizers reuse them and an interrupted fine-tuning resumes;
3. the owner classifiers, only for DeAttr losses or ``--attribution``
   (:func:`owner_classifiers`, cached beside the models);
4. the reference evaluations of both models (:func:`experiments.evaluation.evaluate.references`);
5. the unlearning grid (:mod:`experiments.loops.unlearn_grid`): each finished run
   is written to ``{out}/runs/*.json`` and skipped when asked for again;
6. the report (:func:`write_report`): ``results.json``, ``results.md``, the plots.
"""

from __future__ import annotations

import dataclasses
import pathlib
import time

from experiments.data.corpus import Corpus
from experiments.evaluation import attribution, plots, report
from experiments.evaluation.evaluate import Evaluator, references
from experiments.loops import grid, losses, optimizers, rollout, unlearn_grid
from experiments.loops.finetune import FineTuneConfig, finetuned_and_oracle
from experiments.loops.unlearn import Unlearner
from experiments.model_flags import ModelOptions
from experiments.models import setup as model_setup
from experiments.models.setup import ModelSetup


@dataclasses.dataclass(frozen=True)
class Settings:
  """Everything the CLI controls (see ``python -m experiments.tofu --help``)."""

  out: pathlib.Path
  loss_names: tuple[str, ...]
  optimizer_names: tuple[str, ...]
  seeds: tuple[int, ...]
  lrs: tuple[float, ...]
  steps: int | None
  epochs: int
  batch_size: int
  model_size: str
  vocab_size: int
  max_len: int
  eval_size: int
  finetune: FineTuneConfig
  recipe: optimizers.Recipe
  attribution: bool = False  # owner-attribution audit (always on with a DeAttr loss)
  classifier: str = "bow"  # the owner classifier of DeAttr's reward and the audit
  model: ModelOptions = ModelOptions()  # in-house, or an HF checkpoint (dtype, LoRA, mesh)


def run(corpus: Corpus, s: Settings, log=print) -> dict:
  """Runs every phase and writes results.json, results.md and the plots to ``s.out``."""
  t_start = time.perf_counter()
  s.out.mkdir(parents=True, exist_ok=True)
  key = cache_key(corpus, s)
  cache = s.out / "checkpoints" / key
  save = pathlib.Path(s.model.save_model) if s.model.save_model else None
  fmt = s.model.save_format
  log(f"[data] {corpus.name}: {corpus.notes}")

  def tokenizer():  # the in-house BPE (a checkpoint brings its own)
    return model_setup.cached_tokenizer(corpus.texts(), s.vocab_size, cache / "tokenizer.json")

  m = model_setup.load(
    s.model.checkpoint, s.model.prompt_format, s.max_len, s.model_size, tokenizer
  )
  log(f"[model] {m.description}")
  for name in s.loss_names:  # options that depend on the model (RMU's layer), before any training
    losses.check_for_model(*losses.parse_loss(name), m.params)
  # --finetuned with --oracle: the user's two models, as they are
  given = None if s.model.oracle is None else model_setup.load_like(m, s.model.oracle)
  tuned = finetuned_and_oracle(m, corpus, s.finetune, cache, oracle=given, log=log)
  if save and given is None:  # reusable later as --finetuned / --oracle
    m.export(tuned.full, save / "finetuned", fmt)
    m.export(tuned.oracle, save / "oracle", fmt)

  deattr = unlearn_grid.needs_rollouts(s.loss_names)
  classifier = check = judged = None
  if deattr or s.attribution:  # the classifiers cost seconds: built only when asked for
    classifier, check, judged = owner_classifiers(s.classifier, corpus, m, tuned.full, cache, log)
  audit = attribution.Audit(m.tok, classifier, check)
  evaluator = Evaluator(m.graphdef, m.encoder, corpus, limit=s.eval_size, audit=audit)
  refs = references(evaluator, m.full(tuned.full), m.full(tuned.oracle))
  log(f"[before unlearning] {report.brief(refs.before)}")
  log(f"[oracle]            {report.brief(refs.oracle)}")

  steps, warmup = unlearn_grid.budget(len(corpus.forget), s.batch_size, s.recipe, s.steps, s.epochs)
  rollouts = None
  if deattr:  # on-policy batches, rewarded down to the oracle's attribution
    floor = refs.oracle["forget_attribution"]
    rollouts = rollout.Rollouts(m.graphdef, m.encoder, corpus, classifier, floor, full=m.full)
  unlearner = Unlearner(m.apply, s.recipe, steps, warmup=warmup)
  one_run = unlearn_grid.UnlearningRun(
    m, tuned.full, corpus, unlearner, s.batch_size, refs.evaluate, rollouts, save, log, fmt
  )
  run_parts = [key, dataclasses.asdict(s.recipe), steps, s.batch_size, s.eval_size]
  run_parts += [s.classifier] if classifier else []  # records with attribution per classifier
  run_key = grid.short_key(run_parts, 8)
  cells = unlearn_grid.cells(s.loss_names, s.optimizer_names, s.lrs, s.seeds, run_key)
  runs = grid.run_cached(s.out / "runs", cells, one_run)

  payload = {
    "setup": setup_record(corpus, s, m, steps, warmup, classifier is not None),
    "before": refs.before,
    "oracle": refs.oracle,
    "runs": runs,
    "finetune_seconds": tuned.seconds,
  }
  if judged is not None:
    payload["classifier"] = judged
  payload["total_seconds"] = time.perf_counter() - t_start
  write_report(s.out, payload, log)
  return payload


def cache_key(corpus: Corpus, s: Settings) -> str:
  """The fine-tuned models' cache key: the data, the model, and the fine-tuning settings."""
  parts = [corpus.fingerprint(), s.model_size, s.vocab_size, s.max_len]
  parts += [dataclasses.asdict(s.finetune), *s.model.key_parts()]  # [] for the in-house model
  return grid.short_key(parts, 12, sort_keys=True)


def owner_classifiers(
  kind: str, corpus: Corpus, m: ModelSetup, finetuned, cache: pathlib.Path, log=print
) -> tuple:
  """``(classifier, check, reports)``: DeAttr's reward and audit classifier, and the other kind."""
  classifier, check, reports = attribution.classifiers(
    kind, corpus, m.encoder, cache, m.apply, m.full(finetuned)
  )
  for role, r in reports.items():
    log(
      f"[{role}] {r['kind']}: held-out accuracy {r['heldout_accuracy']:.3f} "
      f"(train {r['train_accuracy']:.3f}), temperature {r['temperature']:.2f}"
    )
  return classifier, check, reports


def setup_record(
  corpus: Corpus, s: Settings, m: ModelSetup, steps: int, warmup: int, classifier: bool
) -> dict:
  """What ``results.json`` records of the job's setup."""
  setup = {
    "corpus": corpus.name,
    "notes": corpus.notes,
    "model_size": s.model_size,
    "n_params": m.n_params,
    "vocab_size": m.vocab_size,
    "max_len": s.max_len,
    "finetune": dataclasses.asdict(s.finetune),
    "recipe": dataclasses.asdict(s.recipe),
    "steps": steps,
    "warmup_steps": warmup,
    "batch_size": s.batch_size,
    "lrs": list(s.lrs),
    "seeds": list(s.seeds),
    "losses": list(s.loss_names),
    "optimizers": list(s.optimizer_names),
    "eval_size": s.eval_size,
    "schedule": "linear warm-up (1 epoch of forget batches) then linear decay to 0",
    "classifier": s.classifier if classifier else None,
  }
  if m.info:  # a checkpoint: where it came from; state bytes of what is trained vs everything
    planned = model_setup.state_bytes(m, s.optimizer_names, s.recipe)
    info = {"source": m.info["source"], "oracle": s.model.oracle, **m.info}  # oracle 2nd
    setup["model"] = {**info, "state_bytes": planned}
  return setup


def write_report(out: pathlib.Path, payload: dict, log=print) -> None:
  """Writes results.json, results.md and the plots; logs the table."""
  report.write(out, payload)
  refs = {"fine-tuned (before)": payload["before"], "retain-only oracle": payload["oracle"]}
  runs = payload["runs"]
  if runs:
    plots.loss_curves(runs, out / "loss_curves.png")
    plots.tradeoff(runs, refs, out / "tradeoff.png")
    plots.loss_comparison(runs, refs, out / "loss_comparison.png")
    if "classifier" in payload:
      plots.attribution(runs, refs, out / "attribution.png")
  log("")
  log(report.markdown_table(report.aggregate(runs), refs))
  log(
    f"\n[done] {payload['total_seconds']:.0f}s total; wrote {out}/results.json, results.md, "
    "loss_curves.png, tradeoff.png, loss_comparison.png"
  )
