"""Tokenizers and their special ids: the in-house BPE, or a checkpoint's own.

The in-house tokenizer is a byte-level BPE trained locally on the corpus and
saved as one JSON file next to the model checkpoint, so a re-run restores
exactly the vocabulary the checkpoint was trained with. Its special tokens
have fixed ids: ``[PAD]=0``, ``[BOS]=1``, ``[EOS]=2``.

An HF-format checkpoint brings its tokenizer and its ids instead
(:func:`checkpoint_ids`): BOS, EOS (possibly several) and padding come from
its ``config.json``, and BOS is written only where the checkpoint's
post-processor writes it (llama and gemma do; qwen and phi-1.5 do not).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

PAD, BOS, EOS = 0, 1, 2
SPECIAL_TOKENS = ["[PAD]", "[BOS]", "[EOS]"]


@dataclasses.dataclass(frozen=True)
class SpecialIds:
  """The ids a sequence is built and cut with.

  Attributes:
    pad: the padding id (never a target: masks exclude it).
    bos: the beginning-of-sequence id, or None.
    eos: end-of-sequence ids; the first ends every training answer, any of
      them ends a generation.
    add_bos: whether sequences start with ``bos`` (the checkpoint's post-processor's choice).
  """

  pad: int = PAD
  bos: int | None = BOS
  eos: tuple[int, ...] = (EOS,)
  add_bos: bool = True


IN_HOUSE = SpecialIds()


def _ids(value) -> tuple[int, ...]:
  if value is None:
    return ()
  return tuple(int(v) for v in value) if isinstance(value, list | tuple) else (int(value),)


def checkpoint_ids(tok: Tokenizer, bos, eos, pad, folder: pathlib.Path | None = None) -> SpecialIds:
  """A checkpoint's :class:`SpecialIds` from its ``config.json`` ids and its tokenizer.

  EOS ids of ``generation_config.json`` (e.g. chat models' end-of-turn) also end
  generations. A checkpoint without a pad id (phi-1.5) pads with its EOS: padding
  is masked out of every loss and cut from every generation.

  Args:
    tok: the checkpoint's tokenizer (its post-processor decides ``add_bos``).
    bos, eos, pad: ``bos_token_id``, ``eos_token_id`` (an int or a list) and
      ``pad_token_id`` of ``config.json`` (each may be None).
    folder: the checkpoint folder, to read ``generation_config.json`` from.

  Raises:
    ValueError: no EOS id anywhere (answers could not be ended).

  Example:
    >>> tok = train_tokenizer(["a b c"], 260)
    >>> checkpoint_ids(tok, bos=1, eos=[2, 5], pad=None)
    SpecialIds(pad=2, bos=1, eos=(2, 5), add_bos=False)
  """
  stops = _ids(eos)
  file = folder / "generation_config.json" if folder is not None else None
  if file is not None and file.is_file():
    extra = _ids(json.loads(file.read_text()).get("eos_token_id"))
    stops += tuple(i for i in extra if i not in stops)
  if not stops:
    raise ValueError("the checkpoint's config.json names no eos_token_id")
  plain = tok.encode("a", add_special_tokens=False).ids
  full = tok.encode("a").ids
  add_bos = bos is not None and full[:1] == [bos] and full[1:] == plain
  return SpecialIds(pad=stops[0] if pad is None else int(pad), bos=bos, eos=stops, add_bos=add_bos)


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


def decode(tok: Tokenizer, ids: Iterable[int], specials: SpecialIds = IN_HOUSE) -> str:
  """Text of ``ids``, stopping at the first EOS and dropping padding and BOS.

  Example:
    >>> tok = train_tokenizer(["hello world"], 270)
    >>> decode(tok, [BOS, *encode(tok, "hello"), EOS, *encode(tok, " world")])
    'hello'
  """
  skip = {specials.pad, specials.bos}
  out = []
  for i in ids:
    i = int(i)
    if i in specials.eos:
      break
    if i not in skip:
      out.append(i)
  return tok.decode(out).strip()
