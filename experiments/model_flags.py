"""The jobs' model flags: which checkpoint, prompt format, dtype, LoRA, mesh and export.

Without any of them a job trains the in-house model as before. Values are
checked before any work: a bad number is argparse's one line (the types of
:mod:`experiments.cli`), a bad path or combination one ``ValueError`` line.
The TOFU job takes them all (:func:`options_from`); the multi-objective jobs
take ``--model`` and ``--prompt-format`` (:func:`base_options_from`).
:class:`ModelOptions` records them; :meth:`ModelOptions.checkpoint` is what the
model phase (:func:`experiments.models.setup.load`) loads.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import pathlib

import jax

from experiments import cli
from experiments.data.prompts import DEFAULT, FORMATS, prompt_format
from experiments.models.hf.config import read_config
from experiments.models.setup import Checkpoint

DTYPES = ("float32", "bfloat16")
_MESH_AXES = ("data", "model")


@dataclasses.dataclass(frozen=True)
class ModelOptions:
  """The job's model flags (defaults: the in-house model).

  Attributes:
    model: ``--model``: an HF-format folder to fine-tune (then unlearn).
    finetuned: ``--finetuned``: an HF-format folder already fine-tuned on the data.
    oracle: ``--oracle``: its retain-only counterpart (with ``finetuned``).
    prompt_format: ``--prompt-format``: a name of :data:`~experiments.data.prompts.FORMATS`
      or a template.
    param_dtype: ``--param-dtype``: ``float32`` or ``bfloat16`` (moments stay float32).
    lora_rank: ``--lora-rank``: train rank-R adapters only (0: every parameter).
    mesh: ``--mesh``: ``(data, model)`` device counts, or None for one device.
    save_model: ``--save-model``: folder for the models in HF format (the unlearned ones, and
      the fine-tuned and oracle models when trained here).
  """

  model: str | None = None
  finetuned: str | None = None
  oracle: str | None = None
  prompt_format: str = DEFAULT
  param_dtype: str = "float32"
  lora_rank: int = 0
  mesh: tuple[int, int] | None = None
  save_model: str | None = None

  @property
  def checkpoint(self) -> Checkpoint | None:
    """The checkpoint the model (and its tokenizer) comes from, or None for the in-house model."""
    path = self.model or self.finetuned
    if path is None:
      return None
    return Checkpoint(pathlib.Path(path), self.param_dtype, self.lora_rank, self.mesh)

  def key_parts(self) -> list:
    """What the model adds to the checkpoint-cache key ([] for the in-house defaults).

    A checkpoint's identity is its resolved path plus the size and modification
    time of every file in it, so replacing the weights invalidates the cache.
    """
    parts: list = []
    if self.prompt_format != DEFAULT:
      parts.append(["prompt", prompt_format(self.prompt_format).template])
    if self.checkpoint is None:
      return parts
    folders = [p for p in (self.model, self.finetuned, self.oracle) if p is not None]
    ids = [_identity(pathlib.Path(p)) for p in folders]
    return [*parts, ["hf", ids, self.param_dtype, self.lora_rank]]


def _identity(folder: pathlib.Path) -> str:
  stats = sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in folder.iterdir())
  blob = repr((str(folder.resolve()), stats)).encode()
  return hashlib.sha256(blob).hexdigest()[:16]


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


def checkpoint_source(flag: str, value: str | None) -> str | None:
  """What a ``--model``, ``--finetuned`` or ``--oracle`` value names, checked (None: not given).

  The one place a flag's value becomes the checkpoint a job loads, for every job.

  Raises:
    ValueError: not a usable checkpoint (one line naming the flag).
  """
  if value:
    check_folder(flag, value)
  return value


def _simulate_devices(n: int) -> None:
  """Asks the CPU backend for ``n`` devices (possible only before JAX starts its backends)."""
  try:
    jax.config.update("jax_num_cpu_devices", n)
  except RuntimeError:
    pass  # already started (e.g. in tests): the device count below decides


def options_from(args: argparse.Namespace) -> ModelOptions:
  """The TOFU job's checked :class:`ModelOptions` from parsed arguments.

  Raises:
    ValueError: a missing or unusable folder, or flags that do not go together (one line).
  """
  if args.model and (args.finetuned or args.oracle):
    raise ValueError("give --model (fine-tune it here) or --finetuned with --oracle, not both")
  if bool(args.finetuned) != bool(args.oracle):
    raise ValueError("--finetuned and --oracle go together (forget quality needs the oracle)")
  model = checkpoint_source("--model", args.model)
  finetuned = checkpoint_source("--finetuned", args.finetuned)
  oracle = checkpoint_source("--oracle", args.oracle)
  checkpoint = model or finetuned
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
    n_data, n_model = args.mesh
    for flag in ("--batch-size", "--ft-batch-size"):
      size = getattr(args, flag[2:].replace("-", "_"))
      if size % n_data:
        raise ValueError(f"{flag} {size} is not a multiple of the mesh's data axis ({n_data})")
    _simulate_devices(n_data * n_model)
    if len(jax.devices()) < n_data * n_model:
      raise ValueError(
        f"--mesh data:{n_data},model:{n_model} needs {n_data * n_model} devices; JAX has "
        f"{len(jax.devices())} (on CPU, start with XLA_FLAGS="
        f"--xla_force_host_platform_device_count={n_data * n_model})"
      )
  return ModelOptions(
    model=model,
    finetuned=finetuned,
    oracle=oracle,
    prompt_format=args.prompt_format,
    param_dtype=args.param_dtype,
    lora_rank=args.lora_rank or 0,
    mesh=args.mesh,
    save_model=args.save_model,
  )


def base_options_from(args: argparse.Namespace) -> ModelOptions:
  """The multi-objective jobs' ``--model`` and ``--prompt-format`` as checked :class:`ModelOptions`.

  Raises:
    ValueError: a malformed template, an unusable checkpoint, or in-house flags with one.
  """
  prompt_format(args.prompt_format)  # a malformed template: one line
  if args.model is None:
    return ModelOptions(prompt_format=args.prompt_format)
  model = checkpoint_source("--model", args.model)
  check_in_house_flags(args)
  return ModelOptions(model=model, prompt_format=args.prompt_format)
