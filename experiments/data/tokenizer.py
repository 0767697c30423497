"""A byte-level BPE tokenizer trained locally on the corpus (HF ``tokenizers``).

Special tokens have fixed ids: ``[PAD]=0``, ``[BOS]=1``, ``[EOS]=2``. The
tokenizer is saved as one JSON file next to the model checkpoint, so a
re-run restores exactly the vocabulary the checkpoint was trained with.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

PAD, BOS, EOS = 0, 1, 2
SPECIAL_TOKENS = ["[PAD]", "[BOS]", "[EOS]"]


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> Tokenizer:
  """Trains a byte-level BPE tokenizer on ``texts`` (deterministic for fixed input).

  Args:
    texts: training strings.
    vocab_size: target vocabulary size (includes the 256 byte tokens and specials).

  Returns:
    A ``tokenizers.Tokenizer`` whose ``decode`` inverts ``encode`` on plain text.
  """
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
    vocab_size=vocab_size,
    special_tokens=SPECIAL_TOKENS,
    initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    show_progress=False,
  )
  tok.train_from_iterator(list(texts), trainer=trainer)
  return tok


def save_tokenizer(tok: Tokenizer, path: pathlib.Path) -> None:
  """Writes ``tok`` to ``path`` (JSON)."""
  path.parent.mkdir(parents=True, exist_ok=True)
  tok.save(str(path))


def load_tokenizer(path: pathlib.Path) -> Tokenizer:
  """Reads a tokenizer written by :func:`save_tokenizer`."""
  return Tokenizer.from_file(str(path))


def encode(tok: Tokenizer, text: str) -> list[int]:
  """Token ids of ``text`` without special tokens."""
  return tok.encode(text, add_special_tokens=False).ids


def decode(tok: Tokenizer, ids: Iterable[int]) -> str:
  """Text of ``ids``, stopping at the first ``[EOS]`` and dropping padding."""
  out = []
  for i in ids:
    i = int(i)
    if i == EOS:
      break
    if i not in (PAD, BOS):
      out.append(i)
  return tok.decode(out).strip()
