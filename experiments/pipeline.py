"""The whole experiment: data, tokenizer, fine-tune + oracle, unlearning grid, evaluation, report.

Fine-tuned and oracle models are cached as orbax checkpoints under
``{out}/checkpoints/{key}`` (key = data fingerprint, model size, fine-tuning
hyperparameters), so re-runs and runs with other optimizers reuse them, and an
interrupted fine-tuning resumes. Each finished unlearning run is written to
``{out}/runs/*.json`` (metrics plus the per-step log) and skipped when the
same configuration is asked for again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import pathlib
import sys
import time

import numpy as np

from experiments.data import tokenizer as toklib
from experiments.data.corpus import Corpus
from experiments.evaluation import attribution, plots, report
from experiments.evaluation.evaluate import Evaluator
from experiments.loops import losses, optimizers, rollout
from experiments.loops.checkpoint import read_json, set_aside, write_json
from experiments.loops.finetune import FineTuneConfig, fine_tune, make_finetune_step
from experiments.loops.unlearn import UnlearnBatches, Unlearner
from experiments.models import setup as model_setup
from experiments.models.setup import ModelOptions


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


def _key(corpus: Corpus, s: Settings) -> str:
  blob = json.dumps(
    [
      corpus.fingerprint(),
      s.model_size,
      s.vocab_size,
      s.max_len,
      dataclasses.asdict(s.finetune),
      *s.model.key_parts(),  # nothing for the in-house model: its keys are unchanged
    ],
    sort_keys=True,
  )
  return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _tokenizer(corpus: Corpus, s: Settings, cache: pathlib.Path):
  path = cache / "tokenizer.json"
  if path.is_file():
    try:
      return toklib.load_tokenizer(path)
    except Exception as e:  # tokenizers raises a plain Exception for unreadable JSON
      moved = set_aside(path)
      print(
        f"[cache] {path} is damaged ({e}); moved it to {moved.name}; training it again",
        file=sys.stderr,
      )
  # Training is deterministic, so a retrained tokenizer matches the checkpoints' vocabulary.
  tok = toklib.train_tokenizer(corpus.texts(), s.vocab_size)
  toklib.save_tokenizer(tok, path)
  return tok


def _brief(ev: dict) -> str:
  fq = ev["forget_quality"]
  return (
    f"forget ROUGE {ev['forget']['rouge']:.3f} prob {ev['forget']['prob']:.3f} | "
    f"retain ROUGE {ev['retain']['rouge']:.3f} | MU {ev['model_utility']:.3f} | "
    f"FE {ev['forget_efficacy']:.3f}"
    + ("" if fq is None else f" | FQ {fq:.3g}")
    + ("" if not ev.get("mia") else f" | MIA AUC {ev['mia']['min_k_pp_auc']:.3f}")
    + ("" if "tug_of_war" not in ev else f" | ToW {ev['tug_of_war']:.3f}")
    + ("" if "forget_attribution" not in ev else f" | attr {ev['forget_attribution']:.3f}")
  )


def run(corpus: Corpus, s: Settings, log=print) -> dict:
  """Runs every phase and writes results.json, results.md and the plots to ``s.out``."""
  t_start = time.perf_counter()
  s.out.mkdir(parents=True, exist_ok=True)
  cache = s.out / "checkpoints" / _key(corpus, s)
  m = model_setup.prepare(s.model, s.max_len, lambda: _tokenizer(corpus, s, cache), s.model_size)
  tok, encoder, graphdef, init_params, apply = m.tok, m.encoder, m.graphdef, m.params, m.apply
  n_params = m.n_params
  log(f"[data] {corpus.name}: {corpus.notes}")
  log(f"[model] {m.description}")

  t0 = time.perf_counter()
  step_fn = make_finetune_step(apply, init_params, s.finetune.weight_decay)
  placement = dict(frozen=m.frozen, place_batch=m.place_batch)
  full, ft_hist = m.finetuned or fine_tune(  # --finetuned: the user's model as is
    apply,
    init_params,
    corpus.full_train(),
    encoder,
    s.finetune,
    cache / "full",
    desc="fine-tune (all data)",
    step_fn=step_fn,
    **placement,
  )
  t_ft = time.perf_counter() - t0
  t0 = time.perf_counter()
  oracle, or_hist = m.oracle or fine_tune(  # --oracle: the user's model as is
    apply,
    init_params,
    corpus.oracle_train(),
    encoder,
    s.finetune,
    cache / "oracle",
    desc="fine-tune (retain-only oracle)",
    step_fn=step_fn,
    **placement,
  )
  t_or = time.perf_counter() - t0
  log(
    f"[fine-tune] {t_ft:.0f}s (final epoch loss {ft_hist[-1] if ft_hist else 'cached'}); "
    f"oracle {t_or:.0f}s"
  )
  if s.model.save_model and m.finetuned is None:  # reusable later as --finetuned / --oracle
    for name, state in (("finetuned", full), ("oracle", oracle)):
      m.export(state, pathlib.Path(s.model.save_model) / name)

  # The owner classifier costs seconds: built only for DeAttr runs or the attribution audit.
  deattr = any(rollout.is_deattr(losses.parse_loss(n)[0]) for n in s.loss_names)
  classifier = check = None
  if deattr or s.attribution:
    classifier, check, clf_reports = attribution.classifiers(
      s.classifier, corpus, encoder, cache, apply, m.full(full)
    )
    for role, r in clf_reports.items():
      log(
        f"[{role}] {r['kind']}: held-out accuracy {r['heldout_accuracy']:.3f} "
        f"(train {r['train_accuracy']:.3f}), temperature {r['temperature']:.2f}"
      )
  audit = attribution.Audit(tok, classifier, check)
  evaluator = Evaluator(graphdef, encoder, corpus, limit=s.eval_size, audit=audit)
  oracle_ev = evaluator(m.full(oracle))
  oracle_r = np.asarray(oracle_ev["forget"]["r"])
  oracle_ev["forget_quality"] = 1.0
  before = evaluator(m.full(full), oracle_r, oracle_ev["mia"])
  for ev in (oracle_ev, before):
    ev["tug_of_war"] = attribution.tug_of_war_rouge(ev, oracle_ev)
  rollouts = None
  if deattr:
    floor = oracle_ev["forget_attribution"]
    rollouts = rollout.Rollouts(graphdef, encoder, corpus, classifier, floor, full=m.full)
  log(f"[before unlearning] {_brief(before)}")
  log(f"[oracle]            {_brief(oracle_ev)}")

  n_forget_batches = math.ceil(len(corpus.forget) / s.batch_size)
  period = s.recipe.forget_steps + s.recipe.retain_steps
  steps_per_epoch = period * n_forget_batches // s.recipe.forget_steps
  steps = s.steps if s.steps is not None else s.epochs * steps_per_epoch
  unlearner = Unlearner(apply, s.recipe, steps, warmup=steps_per_epoch)
  setup = {
    "corpus": corpus.name,
    "notes": corpus.notes,
    "model_size": s.model_size,
    "n_params": n_params,
    "vocab_size": m.vocab_size,
    "max_len": s.max_len,
    "finetune": dataclasses.asdict(s.finetune),
    "recipe": dataclasses.asdict(s.recipe),
    "steps": steps,
    "warmup_steps": steps_per_epoch,
    "batch_size": s.batch_size,
    "lrs": list(s.lrs),
    "seeds": list(s.seeds),
    "losses": list(s.loss_names),
    "optimizers": list(s.optimizer_names),
    "eval_size": s.eval_size,
    "schedule": "linear warm-up (1 epoch of forget batches) then linear decay to 0",
    "classifier": s.classifier if classifier is not None else None,
  }
  if m.info:  # a checkpoint: where it came from; state bytes of what is trained vs everything
    planned = model_setup.state_bytes(m, s.optimizer_names, s.recipe)
    setup["model"] = {**m.info, "state_bytes": planned}
  runs_dir = s.out / "runs"
  runs_dir.mkdir(exist_ok=True)
  payload = {
    "setup": setup,
    "before": before,
    "oracle": oracle_ev,
    "runs": [],
    "finetune_seconds": {"full": t_ft, "oracle": t_or},
  }
  if classifier is not None:
    payload["classifier"] = clf_reports
  key_parts = [_key(corpus, s), setup["recipe"], steps, s.batch_size, s.eval_size]
  if classifier is not None:  # records with attribution (and DeAttr's reward) per classifier
    key_parts.append(s.classifier)
  run_key = hashlib.sha256(json.dumps(key_parts).encode()).hexdigest()[:8]
  # Seed-major order: an interrupted job still has whole grids for its first seeds
  # (each step function is compiled once per optimizer and loss pair either way).
  grid = [
    (lo, o, lr, seed)
    for seed in s.seeds
    for lo in s.loss_names
    for o in s.optimizer_names
    for lr in s.lrs
  ]
  for i, (loss, opt, lr, seed) in enumerate(grid):
    name = f"{loss.replace('+', '_')}-{opt}-lr{lr:g}-s{seed}-{run_key}"
    path = runs_dir / f"{name}.json"
    cached = read_json(path)  # a damaged record is reported, set aside and run again
    if cached is not None:
      payload["runs"].append(cached)
      continue
    f_name, r_name = losses.parse_loss(loss)
    if rollout.is_deattr(f_name):
      batches = rollouts.batches(f_name, r_name, s.batch_size, seed)
    else:
      roles = losses.roles_for(f_name, r_name)
      batches = UnlearnBatches(corpus, encoder, roles, s.batch_size, seed)
    res = unlearner.run(
      full,
      full,
      m.placed(batches),
      opt,
      f_name,
      r_name,
      lr,
      desc=f"[{i + 1}/{len(grid)}] {loss} {opt} lr={lr:g} seed={seed}",
      frozen=m.frozen,
    )
    ev = evaluator(m.full(res.params), oracle_r, oracle_ev["mia"])
    if s.model.save_model:
      m.export(res.params, pathlib.Path(s.model.save_model) / name)
    ev["tug_of_war"] = attribution.tug_of_war_rouge(ev, oracle_ev)
    rec = {
      "loss": loss,
      "optimizer": opt,
      "lr": lr,
      "seed": seed,
      "steps": steps,
      "wall_s": res.wall_s,
      "state_bytes": res.state_bytes,
      "eval": ev,
      "log": res.log,
    }
    if isinstance(batches, rollout.RolloutBatches):
      rec["rollouts"] = batches.history  # per forget step: reward, attribution, seconds
    write_json(path, rec)
    payload["runs"].append(rec)
    log(
      f"[{i + 1}/{len(grid)}] {loss:8s} {opt:20s} lr={lr:<7g} seed={seed}: {_brief(ev)} | "
      f"{res.wall_s:.1f}s | state {res.state_bytes:,} B"
    )

  payload["total_seconds"] = time.perf_counter() - t_start
  report.write(s.out, payload)
  refs = {"fine-tuned (before)": before, "retain-only oracle": oracle_ev}
  if payload["runs"]:
    plots.loss_curves(payload["runs"], s.out / "loss_curves.png")
    plots.tradeoff(payload["runs"], refs, s.out / "tradeoff.png")
    plots.loss_comparison(payload["runs"], refs, s.out / "loss_comparison.png")
    if classifier is not None:
      plots.attribution(payload["runs"], refs, s.out / "attribution.png")
  log("")
  log(report.markdown_table(report.aggregate(payload["runs"]), refs))
  log(
    f"\n[done] {payload['total_seconds']:.0f}s total; wrote {s.out}/results.json, results.md, "
    "loss_curves.png, tradeoff.png, loss_comparison.png"
  )
  return payload
