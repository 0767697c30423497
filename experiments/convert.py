"""``python -m experiments.convert SRC DST [--dtype f32|f16|bf16|q8_0]``: GGUF <-> HF folder.

DST ending in ``.gguf`` gets a GGUF file (tokenizer metadata and chat template included);
anything else an HF folder (``config.json``, ``model.safetensors``, ``tokenizer.json``,
``tokenizer_config.json`` with the chat template and special tokens, ``generation_config.json``).
SRC is either kind (see :func:`experiments.hf.load_model`). The model goes through the loader
and the exporters the jobs use, so every check of strict loading applies. The output is written
under a temporary name and renamed when complete: on failure nothing is left at DST. Bad input
exits with status 2 and one line on stderr.

Example:
  >>> from experiments.convert import convert
  >>> convert("SmolLM2-135M-Instruct.Q4_1.gguf", "/tmp/smol_hf")  # doctest: +SKIP
  PosixPath('/tmp/smol_hf')
"""

from __future__ import annotations

import pathlib
import shutil
import sys
import tempfile

import jax.numpy as jnp

from experiments.cli import Parser
from experiments.models.hf.config import CheckpointError
from experiments.models.hf.gguf_write import DTYPES, save_gguf, tokenizer_bundle
from experiments.models.hf.loading import load_model, save_model
from experiments.models.hf.tokenizer_files import SpecialTokens, write_tokenizer_files

HF_DTYPES = {"f32": jnp.float32, "f16": jnp.float16, "bf16": jnp.bfloat16}


def _write_hf(model, tok, special: SpecialTokens, template: str | None, folder: pathlib.Path):
  save_model(model, folder)
  write_tokenizer_files(folder, tok, special, template)  # and generation_config.json


def convert(
  src: str | pathlib.Path, dst: str | pathlib.Path, *, dtype: str = "f32"
) -> pathlib.Path:
  """Converts ``src`` (GGUF file or HF folder) into ``dst`` (``.gguf``: GGUF, else HF folder).

  Args:
    src: a GGUF file, a folder holding one, or an HF folder.
    dst: the file or folder to create (it must not exist).
    dtype: weights of the output: ``f32``, ``f16``, ``bf16``, or ``q8_0`` (GGUF only).

  Returns:
    ``dst``.

  Raises:
    CheckpointError: unreadable or unsupported input, an existing ``dst``, or a bad dtype.
    FileNotFoundError: ``src`` does not exist or is not a checkpoint.
  """
  src, dst = pathlib.Path(src), pathlib.Path(dst)
  if dst.exists():
    raise CheckpointError(f"{dst} already exists; remove it or choose another destination")
  to_gguf = dst.suffix == ".gguf"
  allowed = DTYPES if to_gguf else HF_DTYPES
  if dtype not in allowed:
    kind = "GGUF" if to_gguf else "an HF folder"
    raise CheckpointError(f"dtype {dtype!r} is not available for {kind}; use {', '.join(allowed)}")
  if not src.exists():
    raise FileNotFoundError(f"{src} does not exist")
  dst.parent.mkdir(parents=True, exist_ok=True)
  if to_gguf:
    # save_gguf writes dst.tmp and renames it when complete.
    return save_gguf(load_model(src), dst, source=src, dtype=dtype)
  tok, special, template, _ = tokenizer_bundle(src)
  model = load_model(src, dtype=HF_DTYPES[dtype])
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
  try:
    _write_hf(model, tok, special, template, tmp)
    tmp.rename(dst)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return dst


def main(argv: list[str] | None = None) -> int:
  """The CLI; returns the exit status (0, or 2 for bad input with one line on stderr)."""
  parser = Parser(
    prog="python -m experiments.convert", description="GGUF <-> HF folder, by DST's extension."
  )
  parser.add_argument("src", help="GGUF file, folder holding one, or HF folder")
  parser.add_argument("dst", help="DST.gguf for a GGUF file, anything else for an HF folder")
  parser.add_argument("--dtype", default="f32", choices=sorted(DTYPES), help="output weights")
  args = parser.parse_args(argv)
  try:
    out = convert(args.src, args.dst, dtype=args.dtype)
  except (CheckpointError, FileNotFoundError) as e:
    print(f"error: {e}".replace("\n", " "), file=sys.stderr)
    return 2
  print(out)
  return 0


if __name__ == "__main__":
  sys.exit(main())
