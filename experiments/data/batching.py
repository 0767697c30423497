"""Tokenised question/answer sequences as fixed-shape arrays.

A sequence is ``[BOS] prompt answer [EOS]`` (right-padded), with the prompt and
answer texts from a :mod:`~experiments.data.prompts` format (default
``"Question: q\\nAnswer:"`` and ``" a"``) and the ids from
:class:`~experiments.data.tokenizer.SpecialIds` (BOS only where the tokenizer
writes one). The target mask is 1 on the answer tokens and the final EOS and 0
on the question and padding, so every loss sees only the answer (questions
masked out). Prompts for generation are left-padded ``[BOS] prompt``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from tokenizers import Tokenizer

from experiments.data import tokenizer as toklib
from experiments.data.prompts import CHAT, PromptFormat, prompt_format


class Batch(NamedTuple):
  """A batch of sequences (all arrays ``(batch, seq)``).

  Attributes:
    ids: int32 token ids.
    mask: int32 1 for real tokens, 0 for padding.
    targets: float32 1 where the token is an answer target (answer + EOS).
  """

  ids: np.ndarray
  mask: np.ndarray
  targets: np.ndarray


def round_up(n: int, multiple: int) -> int:
  """``n`` rounded up to a multiple of ``multiple``."""
  return -(-n // multiple) * multiple


class Encoder:
  """Tokenises (question, answer) pairs with caching and length limits.

  Args:
    tok: the tokenizer.
    max_len: longest sequence; longer answers are truncated (EOS kept).
    specials: the special ids (default: the in-house tokenizer's).
    prompt: the prompt format (default ``tofu``).

  Example:
    >>> tok = toklib.train_tokenizer(["Question: Who?\\nAnswer: Ann."], 300)
    >>> enc = Encoder(tok, 32)
    >>> ids, n_prompt = enc.pair("Who?", "Ann.")
    >>> enc.decode(ids[n_prompt:])
    'Ann.'
  """

  def __init__(
    self,
    tok: Tokenizer,
    max_len: int,
    specials: toklib.SpecialIds = toklib.IN_HOUSE,
    prompt: PromptFormat | None = None,
  ):
    self.tok, self.max_len, self.specials = tok, max_len, specials
    self.format = prompt or prompt_format()
    self._bos = [specials.bos] if specials.add_bos else []
    self._cache: dict[str, list[int]] = {}

  def _ids(self, text: str) -> list[int]:
    if text not in self._cache:
      self._cache[text] = toklib.encode(self.tok, text)
    return self._cache[text]

  def prompt(self, question: str) -> list[int]:
    """``[BOS]`` (where the tokenizer writes one) + prompt tokens (at most ``max_len // 2``).

    A longer prompt loses its end; a ``chat`` prompt loses the end of its question instead,
    so that it still ends with the assistant header the model answers after.
    """
    text = self._ids(self.format.prompt(question))
    budget = self.max_len // 2 - len(self._bos)
    if len(text) > budget and self.format.name == CHAT:
      # The other formats keep their cut, so that results recorded with them reproduce.
      tail = self._ids(self.format.after_question())
      text = text[: max(budget - len(tail), 0)] + tail
    return self._bos + text[:budget]

  def pair(self, question: str, answer: str) -> tuple[list[int], int]:
    """Token ids of the full sequence and the number of prompt tokens."""
    p = self.prompt(question)
    a = self._ids(self.format.answer(answer))[: self.max_len - len(p) - 1]
    return p + a + [self.specials.eos[0]], len(p)

  def decode(self, ids) -> str:
    """Text of generated ``ids``, cut at the first EOS (any of the checkpoint's)."""
    return toklib.decode(self.tok, ids, self.specials)

  def batch(self, pairs: list[tuple[str, str]], length: int | None = None) -> Batch:
    """Right-padded :class:`Batch` of (question, answer) pairs.

    Args:
      pairs: (question, answer) strings.
      length: padded length; default the longest sequence rounded up to 16.
    """
    seqs = [self.pair(q, a) for q, a in pairs]
    if length is None:
      length = round_up(max(len(s) for s, _ in seqs), 16)
    ids = np.full((len(seqs), length), self.specials.pad, np.int32)
    mask = np.zeros((len(seqs), length), np.int32)
    targets = np.zeros((len(seqs), length), np.float32)
    for i, (s, n_prompt) in enumerate(seqs):
      s = s[:length]
      ids[i, : len(s)] = s
      mask[i, : len(s)] = 1
      targets[i, n_prompt : len(s)] = 1.0
    return Batch(ids, mask, targets)

  def max_pair_len(self, pairs: list[tuple[str, str]]) -> int:
    """Longest sequence length of ``pairs`` rounded up to 16."""
    return round_up(max(len(self.pair(q, a)[0]) for q, a in pairs), 16)

  def prompts(self, questions: list[str], length: int) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded prompt ids and mask, shape ``(len(questions), length)``."""
    ids = np.full((len(questions), length), self.specials.pad, np.int32)
    mask = np.zeros((len(questions), length), np.int32)
    for i, q in enumerate(questions):
      p = self.prompt(q)[-length:]
      ids[i, length - len(p) :] = p
      mask[i, length - len(p) :] = 1
    return ids, mask


def stack(batches: list[Batch]) -> Batch:
  """Concatenates batches of equal length along the batch axis."""
  return Batch(*(np.concatenate(x, axis=0) for x in zip(*batches, strict=True)))
