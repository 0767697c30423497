"""The jobs' model flags: which checkpoint, prompt format, dtype, LoRA, mesh and export.

Without any of them a job trains the in-house model as before. Values are
checked before any work: a bad number is argparse's one line (the types of
:mod:`experiments.cli`), a bad path or combination one ``ValueError`` line.
The TOFU job takes them all (:func:`options_from`); the multi-objective jobs
take ``--model`` and ``--prompt-format`` (:func:`base_options_from`).
:class:`ModelOptions` records them; :meth:`ModelOptions.checkpoint` is what the
model phase (:func:`experiments.models.setup.load`) loads.

A checkpoint is an HF-format folder, a GGUF file (or a folder holding one), or a
name of :data:`experiments.fetch.MODELS` (fetched once into the cache):
:func:`checkpoint_source` turns the flag's value into a path. The prompt format
defaults to the checkpoint's own chat template when it has one
(:func:`choose_prompt_format`).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import pathlib
import sys

import jax

from experiments import cli, fetch, hf
from experiments.data.prompts import CHAT, DEFAULT, FORMATS, PromptFormat, prompt_format
from experiments.models.hf.config import read_config
from experiments.models.hf.gguf_io import find_gguf
from experiments.models.hf.gguf_write import check_exportable
from experiments.models.hf.loading import open_checkpoint
from experiments.models.setup import Checkpoint

DTYPES = ("float32", "bfloat16")
SAVE_FORMATS = ("hf", "gguf")
_MESH_AXES = ("data", "model")


@dataclasses.dataclass(frozen=True)
class ModelOptions:
  """The job's model flags (defaults: the in-house model).

  Attributes:
    model: ``--model``: the checkpoint to fine-tune (then unlearn), as a path (HF-format
      folder or GGUF file; a known name is already resolved by :func:`checkpoint_source`).
    finetuned: ``--finetuned``: a checkpoint already fine-tuned on the data.
    oracle: ``--oracle``: its retain-only counterpart (with ``finetuned``).
    prompt_format: the prompt format chosen (:func:`choose_prompt_format`): a name of
      :data:`~experiments.data.prompts.FORMATS`, ``chat``, or a template.
    param_dtype: ``--param-dtype``: ``float32`` or ``bfloat16`` (moments stay float32).
    lora_rank: ``--lora-rank``: train rank-R adapters only (0: every parameter).
    mesh: ``--mesh``: ``(data, model)`` device counts, or None for one device.
    save_model: ``--save-model``: folder for the models (the unlearned ones, and the
      fine-tuned and oracle models when trained here).
    save_format: ``--save-format``: ``hf`` (folders) or ``gguf`` (one GGUF file per model).
  """

  model: str | None = None
  finetuned: str | None = None
  oracle: str | None = None
  prompt_format: str = DEFAULT
  param_dtype: str = "float32"
  lora_rank: int = 0
  mesh: tuple[int, int] | None = None
  save_model: str | None = None
  save_format: str = "hf"

  @property
  def checkpoint(self) -> Checkpoint | None:
    """The checkpoint the model (and its tokenizer) comes from, or None for the in-house model."""
    path = self.model or self.finetuned
    if path is None:
      return None
    return Checkpoint(pathlib.Path(path), self.param_dtype, self.lora_rank, self.mesh)

  def prompt(self) -> PromptFormat:
    """The chosen prompt format (``chat``: rendered from the checkpoint's chat template)."""
    ckpt = self.checkpoint
    template = hf.chat_template(ckpt.path) if self.prompt_format == CHAT and ckpt else None
    return prompt_format(self.prompt_format, template)

  def key_parts(self) -> list:
    """What the model adds to the checkpoint-cache key ([] for the in-house defaults).

    A checkpoint's identity (:func:`_identity`) changes when its weights are
    replaced, so the cache is invalidated.
    """
    parts: list = []
    if self.prompt_format != DEFAULT:
      parts.append(["prompt", self.prompt().template])
    if self.checkpoint is None:
      return parts
    paths = [p for p in (self.model, self.finetuned, self.oracle) if p is not None]
    ids = [_identity(pathlib.Path(p)) for p in paths]
    return [*parts, ["hf", ids, self.param_dtype, self.lora_rank]]


def _identity(path: pathlib.Path) -> str:
  """A checkpoint's identity: a fetched file's sha256 (checked when it was extracted), else the
  resolved path plus the size and modification time of the file or of every file in the folder
  (no hashing: a GGUF of a 7B model is gigabytes)."""
  known = fetch.known_sha256(path)
  if known is not None:
    return known[:16]
  files = [path] if path.is_file() else path.iterdir()
  stats = sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files)
  blob = repr((str(path.resolve()), stats)).encode()
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


CHECKPOINT_HELP = (
  "an HF-format folder, a .gguf file (or a folder holding one), or a name fetched once: "
  + ", ".join(fetch.MODELS)
)


def add_prompt_format(p: argparse.ArgumentParser) -> None:
  """Adds ``--prompt-format`` (a named format, ``chat`` or a template; checked by
  :func:`choose_prompt_format`)."""
  p.add_argument(
    "--prompt-format",
    default=None,
    help=f"{', '.join(FORMATS)}, {CHAT} (the checkpoint's chat template) or a template with "
    f"{{question}} and a final {{answer}} (default: {CHAT} for a checkpoint with a chat "
    f"template, else {DEFAULT})",
  )


def choose_prompt_format(value: str | None, checkpoint: str | None) -> str:
  """The prompt format of a job: ``value`` checked, or (None) the model's default.

  The default is ``chat`` for a checkpoint with a chat template (such a checkpoint is taken
  to be instruction-tuned), else ``tofu`` (the in-house model, base checkpoints). A template
  that does not render a question/answer turn falls back to ``tofu`` with a warning.

  Raises:
    ValueError: a malformed template, or ``chat`` for a model without a chat template (one line).

  Example:
    >>> choose_prompt_format(None, None), choose_prompt_format("llama2", None)
    ('tofu', 'llama2')
    >>> choose_prompt_format("chat", None)
    Traceback (most recent call last):
    ...
    ValueError: --prompt-format chat: the in-house model has no chat template
  """
  try:
    template = hf.chat_template(checkpoint) if checkpoint else None
  except hf.CheckpointError as e:  # an unreadable tokenizer_config.json
    raise ValueError(str(e)) from None
  if value is None:
    if template is None:
      return DEFAULT
    try:
      prompt_format(CHAT, template)
    except ValueError as e:
      print(f"[warning] {e}; prompt format {DEFAULT}", file=sys.stderr)
      return DEFAULT
    return CHAT
  if value == CHAT and template is None:
    who = checkpoint or "the in-house model"
    raise ValueError(f"--prompt-format chat: {who} has no chat template")
  prompt_format(value, template)  # a malformed template: one line
  return value


def default_max_len(base: int, prompt: str) -> int:
  """The job's default ``max_len``: ``base``, doubled with the ``chat`` format.

  Prompts get half of ``max_len``; a chat template's system prompt and turn markers take
  ~30 of SmolLM2's tokens, which would leave a question at ``base`` a few tokens.

  Example:
    >>> default_max_len(128, "tofu"), default_max_len(128, "chat")
    (128, 256)
  """
  return base * 2 if prompt == CHAT else base


def check_in_house_flags(args: argparse.Namespace) -> None:
  """Raises a one-line ValueError if a checkpoint job was given in-house model flags."""
  if args.vocab_size is not None:
    raise ValueError("--vocab-size is for the in-house model (a checkpoint brings its tokenizer)")
  if args.model_size is not None:
    raise ValueError("--model-size is for the in-house model (a checkpoint brings its shape)")


def add_arguments(p: argparse.ArgumentParser) -> None:
  """Adds the model flags to the job's parser."""
  p.add_argument("--model", help=f"checkpoint to fine-tune, then unlearn: {CHECKPOINT_HELP}")
  p.add_argument("--finetuned", help="checkpoint already fine-tuned (skips fine-tuning)")
  p.add_argument("--oracle", help="retain-only checkpoint (with --finetuned)")
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
    help="folder for the models: each unlearned one, and the fine-tuned and oracle "
    "models trained here (checkpoints)",
  )
  p.add_argument(
    "--save-format",
    choices=SAVE_FORMATS,
    default="hf",
    help="--save-model's format: hf (a folder per model) or gguf (a folder per model holding "
    "one .gguf with the checkpoint's tokenizer and chat template; llama, qwen2, qwen3)",
  )


def parser() -> cli.Parser:
  """The model flags alone, as the TOFU job takes them (for the docs' flag tables)."""
  p = cli.Parser(prog="python -m experiments.tofu", description="The model flags.")
  add_arguments(p)
  return p


def check_folder(flag: str, value: str) -> None:
  """Raises a one-line ValueError unless ``value`` is a readable HF-format checkpoint folder."""
  folder = pathlib.Path(value)
  if not folder.is_dir():
    raise ValueError(f"{flag} {value}: no such folder (an HF-format checkpoint folder)")
  for name in ("config.json", "tokenizer.json"):
    if not (folder / name).is_file():
      raise ValueError(f"{flag} {value}: the folder has no {name}")
  read_config(folder)  # an unsupported model_type or unreadable config.json: one line


def check_checkpoint(flag: str, value: str) -> None:
  """Raises a one-line ValueError unless ``value`` is a readable checkpoint: an HF-format
  folder, a GGUF file of a supported architecture with its tokenizer, or a folder holding one."""
  path = pathlib.Path(value)
  if not path.exists():
    raise ValueError(f"{flag} {value}: no such folder or file ({CHECKPOINT_HELP})")
  try:
    file = find_gguf(path)
    if file is None:
      check_folder(flag, value)
      return
    _, _, source = open_checkpoint(file)  # magic, architecture, tensor types, config
    with source as gguf_file:
      gguf_file.value("tokenizer.ggml.tokens")  # loading builds the tokenizer from it
  except hf.CheckpointError as e:
    raise ValueError(f"{flag}: {e}".replace("\n", " ")) from None


def checkpoint_source(flag: str, value: str | None) -> str | None:
  """The checkpoint a ``--model``, ``--finetuned`` or ``--oracle`` value names, checked, as a
  path (None: not given).

  The one place a flag's value becomes the checkpoint a job loads, for every job. A name of
  :data:`experiments.fetch.MODELS` is fetched into the cache the first time (later: found
  there); anything else is a path.

  Raises:
    ValueError: a failed fetch (the fetch's one line), or not a usable checkpoint (one line
      naming the flag).
  """
  if not value:
    return value
  try:
    path = fetch.resolve_model(value)
  except fetch.FetchError as e:
    raise ValueError(str(e)) from None
  check_checkpoint(flag, str(path))
  return str(path)


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
  if args.save_format == "gguf":
    if not args.save_model:
      raise ValueError("--save-format gguf needs --save-model DIR")
    try:
      check_exportable(checkpoint)  # before hours of training, not after
    except hf.CheckpointError as e:
      raise ValueError(f"--save-format gguf: {e}") from None
  prompt = choose_prompt_format(args.prompt_format, checkpoint)
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
    prompt_format=prompt,
    param_dtype=args.param_dtype,
    lora_rank=args.lora_rank or 0,
    mesh=args.mesh,
    save_model=args.save_model,
    save_format=args.save_format,
  )


def base_options_from(args: argparse.Namespace) -> ModelOptions:
  """The multi-objective jobs' ``--model`` and ``--prompt-format`` as checked :class:`ModelOptions`.

  Raises:
    ValueError: a malformed template, an unusable checkpoint, or in-house flags with one.
  """
  model = checkpoint_source("--model", args.model)
  if model is not None:
    check_in_house_flags(args)
  return ModelOptions(model=model, prompt_format=choose_prompt_format(args.prompt_format, model))
