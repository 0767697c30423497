"""Command line: ``python -m experiments.tofu`` (see ``--help``).

Defaults: generated data, the ~1M-parameter ``small`` model, split forget05,
losses NPO+GD and IDK+GD, optimizers adamw (alternating), dualoptim,
dualoptim_plus, dualoptim_plus_8bit, one seed and one learning rate. With
``--model PATH`` (or ``--finetuned PATH --oracle PATH``) a checkpoint (HF
folder, GGUF file, or a known name such as ``smollm2-135m-instruct``) replaces
the in-house model (see :mod:`experiments.model_flags`).
Errors in the inputs (bad paths, unknown losses or optimizers, malformed data
files, flags that do not go together) print one line naming the problem and
exit with status 2.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

from experiments import cli, model_flags
from experiments.data.corpus import DataError, check_split
from experiments.loops import losses, optimizers
from experiments.loops.finetune import FineTuneConfig
from experiments.models.classifier import KINDS

DEFAULT_LOSSES = ("NPO+GD", "IDK+GD")


POSITIVE = cli.number(int, lo=1)


def parser() -> argparse.ArgumentParser:
  """The job's flags; every numeric flag is range-checked (one-line errors)."""
  p = cli.Parser(prog="python -m experiments.tofu", description=__doc__.split("\n")[0])
  p.add_argument(
    "--data",
    default="synthetic",
    help="'synthetic' (generated, offline), a folder with TOFU json files, or 'hf'",
  )
  p.add_argument("--split", default="forget05", help="forget01 | forget05 | forget10")
  p.add_argument("--task-id", type=POSITIVE, default=1, help="forget task (TOFU task_id, >= 1)")
  p.add_argument(
    "--loss",
    action="append",
    default=None,
    help="FORGET+RETAIN, e.g. NPO+GD; repeatable or comma list "
    f"(forget: {', '.join(losses.FORGET_LOSSES)}; "
    f"retain: {', '.join(losses.RETAIN_LOSSES)})",
  )
  p.add_argument(
    "--optimizers",
    default=",".join(optimizers.DEFAULT_OPTIMIZERS),
    help="comma list: adamw and dualoptim_jax optimizer names",
  )
  p.add_argument(
    "--seeds",
    type=cli.number_list(int, lo=0, hi=2**31 - 1),
    default=[0],
    help="comma list of unlearning seeds (integers >= 0)",
  )
  p.add_argument(
    "--lrs",
    type=cli.number_list(float, lo=0, lo_open=True),
    default=None,
    help="comma list of peak unlearning learning rates (> 0; default 1e-3, checkpoints 1e-5)",
  )
  p.add_argument(
    "--steps",
    type=POSITIVE,
    default=None,
    help="unlearning steps, >= 1 (default: --epochs epochs of forget batches)",
  )
  p.add_argument(
    "--epochs", type=POSITIVE, default=5, help="unlearning epochs when --steps is unset (>= 1)"
  )
  p.add_argument("--batch-size", type=POSITIVE, default=4, help="unlearning batch size (>= 1)")
  p.add_argument(
    "--model-size",
    default=None,
    help="in-house model: tiny | small (default; ~1M, CPU) | base | large",
  )
  p.add_argument(
    "--vocab-size",
    type=cli.number(int, lo=260, hi=1_000_000),
    default=None,
    help="BPE vocabulary, >= 260 (256 bytes + specials; default 1024 / TOFU 2048)",
  )
  p.add_argument(
    "--max-len",
    type=cli.number(int, lo=16, hi=65_536),
    default=None,
    help="sequence length, >= 16 (default 64 / TOFU 128; doubled with the chat format)",
  )
  p.add_argument("--eval-size", type=POSITIVE, default=40, help="questions evaluated per set")
  p.add_argument(
    "--ft-epochs",
    type=POSITIVE,
    default=None,
    help="fine-tuning epochs, >= 1 (16 / TOFU 30 / checkpoints 5)",
  )
  p.add_argument(
    "--ft-lr",
    type=cli.number(float, lo=0, lo_open=True),
    default=None,
    help="fine-tuning peak learning rate (> 0; default 3e-3, checkpoints 1e-5)",
  )
  p.add_argument("--ft-batch-size", type=POSITIVE, default=32, help="fine-tuning batch size")
  p.add_argument(
    "--retain-limit",
    type=cli.number(int, lo=0),
    default=100,
    help="real TOFU: retain rows used (first rows of retain_perturbed; 0 = all)",
  )
  p.add_argument(
    "--n-authors",
    type=cli.number(int, lo=2, hi=10_000),
    default=20,
    help="generated data: number of authors (>= 2)",
  )
  p.add_argument("--forget-steps", type=POSITIVE, default=1, help="forget steps per cycle (>= 1)")
  p.add_argument(
    "--retain-steps", type=cli.number(int, lo=0), default=5, help="retain steps per cycle (>= 0)"
  )
  p.add_argument(
    "--attribution",
    action="store_true",
    help="owner-attribution audit of every model (always on with a DeAttr loss)",
  )
  p.add_argument(
    "--classifier",
    choices=KINDS,
    default="bow",
    help="owner classifier of DeAttr's reward and the audit: bow (token n-grams) or probe "
    "(the fine-tuned LM's trunk); the other kind is the check classifier",
  )
  model_flags.add_arguments(p)
  p.add_argument("--out", default="results", help="output folder")
  return p


def _load(args):
  check_split(args.split)
  if args.data == "synthetic":
    from experiments.data import synthetic

    return synthetic.generate(args.split, task_id=args.task_id, n_authors=args.n_authors), False
  from experiments.data import tofu as tofu_data

  limit = args.retain_limit or None
  if args.data == "hf":
    return tofu_data.load_hf(args.split, task_id=args.task_id, retain_limit=limit), True
  path = pathlib.Path(args.data)
  if not path.exists():
    raise DataError(f"--data {args.data}: no such folder (use 'synthetic', 'hf' or a TOFU folder)")
  return tofu_data.load_local(path, args.split, task_id=args.task_id, retain_limit=limit), True


def settings_from(args, real: bool):
  """Validated :class:`~experiments.pipeline.Settings` from parsed arguments."""
  from experiments.models.decoder import MODEL_SIZES
  from experiments.pipeline import Settings

  model = model_flags.options_from(args)
  ckpt = model.checkpoint is not None  # pretrained: the reference's lr 1e-5 and 5 epochs
  names = [n for item in (args.loss or list(DEFAULT_LOSSES)) for n in cli.name_list(item)]
  for n in names:
    losses.parse_loss(n)
  opts = cli.name_list(args.optimizers)
  explicit = args.optimizers != ",".join(optimizers.DEFAULT_OPTIMIZERS)
  for o in list(opts):
    if not optimizers.available(o):
      if explicit:
        raise optimizers.OptimizerUnavailable(
          f"optimizer {o!r} is not available (adamw or a dualoptim_jax name that exists)"
        )
      print(
        f"[warning] skipping default optimizer {o!r}: not in the installed dualoptim_jax",
        file=sys.stderr,
      )
      opts.remove(o)
  model_size = args.model_size or "small"
  if model_size not in MODEL_SIZES:
    choices = ", ".join(MODEL_SIZES)
    raise ValueError(f"unknown --model-size {args.model_size!r}; choose from {choices}")
  seeds = list(dict.fromkeys(args.seeds))
  lrs = list(dict.fromkeys(args.lrs or [1e-5 if ckpt else 1e-3]))
  ft_epochs = args.ft_epochs or (5 if ckpt else 30 if real else 16)
  ft_lr = args.ft_lr or (1e-5 if ckpt else 3e-3)
  return Settings(
    out=pathlib.Path(args.out),
    loss_names=tuple(names),
    optimizer_names=tuple(opts),
    seeds=tuple(seeds),
    lrs=tuple(lrs),
    steps=args.steps,
    epochs=args.epochs,
    batch_size=args.batch_size,
    model_size=model_size,
    vocab_size=args.vocab_size or (2048 if real else 1024),
    max_len=args.max_len or model_flags.default_max_len(128 if real else 64, model.prompt_format),
    eval_size=args.eval_size,
    finetune=FineTuneConfig(epochs=ft_epochs, batch_size=args.ft_batch_size, lr=ft_lr),
    recipe=optimizers.Recipe(forget_steps=args.forget_steps, retain_steps=args.retain_steps),
    attribution=args.attribution,
    classifier=args.classifier,
    model=model,
  )


def main(argv: list[str] | None = None) -> int:
  """Parses arguments, runs the pipeline; one-line errors for bad input."""
  try:
    args = parser().parse_args(argv)
  except SystemExit as e:  # a bad flag (one line printed) or --help
    return int(e.code or 0)
  try:
    corpus, real = _load(args)
    s = settings_from(args, real)
  except (DataError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  from experiments.loops.rmu import ModelMismatch
  from experiments.pipeline import run

  try:
    run(corpus, s)
  except ModelMismatch as e:  # a loss option the loaded model cannot take (RMU's layer)
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
