"""The TOFU job's model flags: which checkpoint, prompt format, dtype, LoRA, mesh and export.

Without any of them the job trains the in-house model as before. Values are
checked before any work: a bad number is argparse's one line (the types of
:mod:`experiments.cli`), a bad path or combination one ``ValueError`` line.
"""

from __future__ import annotations

import argparse
import pathlib

import jax

from experiments import cli
from experiments.data.prompts import DEFAULT, FORMATS, prompt_format
from experiments.models.hf.config import read_config
from experiments.models.setup import ModelOptions

DTYPES = ("float32", "bfloat16")
_MESH_AXES = ("data", "model")


def mesh_shape(text: str) -> tuple[int, int]:
  """An argparse ``type``: ``data:N,model:M`` (either part may be left out) -> ``(N, M)``.

  Example:
    >>> mesh_shape("data:4,model:2"), mesh_shape("data:8")
    ((4, 2), (8, 1))
    >>> mesh_shape("data:0")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: must be data:N,model:M with integers N, M >= 1, got 'data:0'
  """
  sizes = dict.fromkeys(_MESH_AXES, 1)
  count = cli.number(int, lo=1, hi=65_536)
  try:
    for item in cli.name_list(text):
      axis, _, n = item.partition(":")
      if axis not in sizes:
        raise ValueError(axis)
      sizes[axis] = count(n)
    if not cli.name_list(text):
      raise ValueError(text)
  except (ValueError, argparse.ArgumentTypeError):
    raise argparse.ArgumentTypeError(
      f"must be data:N,model:M with integers N, M >= 1, got {text!r}"
    ) from None
  return sizes["data"], sizes["model"]


def add_prompt_format(p: argparse.ArgumentParser) -> None:
  """Adds ``--prompt-format`` (a named format or a template; checked by :func:`options_from`)."""
  p.add_argument(
    "--prompt-format",
    default=DEFAULT,
    help=f"{', '.join(FORMATS)} or a template with {{question}} and a final {{answer}}",
  )


def check_in_house_flags(args: argparse.Namespace) -> None:
  """Raises a one-line ValueError if a checkpoint job was given in-house model flags."""
  if args.vocab_size is not None:
    raise ValueError("--vocab-size is for the in-house model (a checkpoint brings its tokenizer)")
  if args.model_size is not None:
    raise ValueError("--model-size is for the in-house model (a checkpoint brings its shape)")


def add_arguments(p: argparse.ArgumentParser) -> None:
  """Adds the model flags to the job's parser."""
  p.add_argument("--model", help="HF-format checkpoint folder to fine-tune, then unlearn")
  p.add_argument("--finetuned", help="HF-format folder already fine-tuned (skips fine-tuning)")
  p.add_argument("--oracle", help="HF-format retain-only model (with --finetuned)")
  add_prompt_format(p)
  p.add_argument(
    "--param-dtype", choices=DTYPES, default="float32", help="checkpoint weights (moments: float32)"
  )
  p.add_argument(
    "--lora-rank",
    type=cli.number(int, lo=1, hi=65_536),
    default=None,
    help="train rank-R LoRA adapters only (>= 1; checkpoints)",
  )
  p.add_argument(
    "--mesh",
    type=mesh_shape,
    default=None,
    help="shard over data:N,model:M devices (checkpoints; CPU simulates them)",
  )
  p.add_argument(
    "--save-model",
    help="folder for the models in HF format: each unlearned one, and the fine-tuned and oracle "
    "models trained here (checkpoints)",
  )


def check_folder(flag: str, value: str) -> None:
  """Raises a one-line ValueError unless ``value`` is a readable HF-format checkpoint folder."""
  folder = pathlib.Path(value)
  if not folder.is_dir():
    raise ValueError(f"{flag} {value}: no such folder (an HF-format checkpoint folder)")
  for name in ("config.json", "tokenizer.json"):
    if not (folder / name).is_file():
      raise ValueError(f"{flag} {value}: the folder has no {name}")
  read_config(folder)  # an unsupported model_type or unreadable config.json: one line


def _simulate_devices(n: int) -> None:
  """Asks the CPU backend for ``n`` devices (possible only before JAX starts its backends)."""
  try:
    jax.config.update("jax_num_cpu_devices", n)
  except RuntimeError:
    pass  # already started (e.g. in tests): the device count below decides


def options_from(args: argparse.Namespace) -> ModelOptions:
  """Checked :class:`~experiments.models.setup.ModelOptions` from parsed arguments.

  Raises:
    ValueError: a missing or unusable folder, or flags that do not go together (one line).
  """
  if args.model and (args.finetuned or args.oracle):
    raise ValueError("give --model (fine-tune it here) or --finetuned with --oracle, not both")
  if bool(args.finetuned) != bool(args.oracle):
    raise ValueError("--finetuned and --oracle go together (forget quality needs the oracle)")
  for flag, value in (("--model", args.model), ("--finetuned", args.finetuned)):
    if value:
      check_folder(flag, value)
  if args.oracle:
    check_folder("--oracle", args.oracle)
  checkpoint = args.model or args.finetuned
  needs = {
    "--lora-rank": args.lora_rank is not None,
    "--mesh": args.mesh is not None,
    "--save-model": args.save_model is not None,
    "--param-dtype bfloat16": args.param_dtype != "float32",
  }
  if not checkpoint:
    for flag, given in needs.items():
      if given:
        raise ValueError(f"{flag} needs a checkpoint (--model or --finetuned)")
  else:
    check_in_house_flags(args)
  if args.save_model and pathlib.Path(args.save_model).is_file():
    raise ValueError(f"--save-model {args.save_model}: a file is in the way (give a folder)")
  prompt_format(args.prompt_format)  # a malformed template: one line
  if args.mesh is not None:
    data, model = args.mesh
    for flag in ("--batch-size", "--ft-batch-size"):
      size = getattr(args, flag[2:].replace("-", "_"))
      if size % data:
        raise ValueError(f"{flag} {size} is not a multiple of the mesh's data axis ({data})")
    _simulate_devices(data * model)
    if len(jax.devices()) < data * model:
      raise ValueError(
        f"--mesh data:{data},model:{model} needs {data * model} devices; JAX has "
        f"{len(jax.devices())} (on CPU, start with XLA_FLAGS="
        f"--xla_force_host_platform_device_count={data * model})"
      )
  return ModelOptions(
    model=args.model,
    finetuned=args.finetuned,
    oracle=args.oracle,
    prompt_format=args.prompt_format,
    param_dtype=args.param_dtype,
    lora_rank=args.lora_rank or 0,
    mesh=args.mesh,
    save_model=args.save_model,
  )
