"""GGUF tokenizer metadata <-> a ``tokenizers.Tokenizer`` (byte-level BPE).

A GGUF file stores the vocabulary (``tokenizer.ggml.tokens``, HF's byte-level spelling), the
merges, a type per token (control tokens are the special ones), the special ids, whether BOS/EOS
are added, and *a name* for how text is split before BPE (``tokenizer.ggml.pre``): llama.cpp keeps
one hard-coded splitting rule per name. :data:`PRE_TOKENIZERS` is that table for the names we
rebuild; it is data, one row per name. Writing goes the other way: the tokenizer's normalizer and
pre-tokenizer are matched against the same rows to find the name.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, processors
from tokenizers import pre_tokenizers as pre

from experiments.models.hf.config import CheckpointError
from experiments.models.hf.tokenizer_files import SpecialTokens

# llama.cpp's token types (gguf.TokenType).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# The published splitting expressions of Llama 3 and Qwen 2 (as in their tokenizer.json files).
LLAMA3_SPLIT = (
  r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
  r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPLIT = (
  r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
  r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


@dataclasses.dataclass(frozen=True)
class PreTokenizer:
  """How one ``tokenizer.ggml.pre`` name splits text before BPE.

  Attributes:
    split: a regex whose matches are the pieces, then byte-level spelling without GPT-2's
      regex; None: GPT-2's regex (byte-level ``use_regex=True``).
    digits: each digit is its own piece first (llama.cpp's ``\\p{N}`` rule).
    nfc: NFC-normalise the text first (Qwen2's own tokenizer does).
    ignore_merges: a piece that is a whole vocabulary entry is not merged (Llama 3).
  """

  split: str | None = None
  digits: bool = False
  nfc: bool = False
  ignore_merges: bool = False


_GPT2 = PreTokenizer()
_DIGITS_GPT2 = PreTokenizer(digits=True)
_LLAMA3 = PreTokenizer(split=LLAMA3_SPLIT, ignore_merges=True)
_QWEN2 = PreTokenizer(split=QWEN2_SPLIT, nfc=True)

# tokenizer.ggml.pre -> splitting rule (the names llama.cpp's converter writes for these rules).
PRE_TOKENIZERS: dict[str, PreTokenizer] = {
  "gpt-2": _GPT2,
  "smollm": _DIGITS_GPT2,
  "starcoder": _DIGITS_GPT2,
  "refact": _DIGITS_GPT2,
  "llama-bpe": _LLAMA3,
  "llama3": _LLAMA3,
  "llama-v3": _LLAMA3,
  "smaug-bpe": _LLAMA3,
  "dbrx": _LLAMA3,
  "qwen2": _QWEN2,
  "deepseek-r1-qwen": _QWEN2,
}
# The name written for each rule (the first in the table).
_NAME_OF = {rule: name for name, rule in reversed(PRE_TOKENIZERS.items())}


def _pre_tokenizer(rule: PreTokenizer) -> pre.PreTokenizer:
  steps: list[pre.PreTokenizer] = []
  if rule.digits:
    steps.append(pre.Digits(individual_digits=True))
  if rule.split is not None:
    steps.append(pre.Split(Regex(rule.split), behavior="isolated", invert=False))
  steps.append(pre.ByteLevel(add_prefix_space=False, use_regex=rule.split is None))
  return steps[0] if len(steps) == 1 else pre.Sequence(steps)


def _signature(tok: Tokenizer) -> str:
  """Normalizer + pre-tokenizer as canonical JSON, offsets bookkeeping left out."""

  def strip(node):
    if isinstance(node, dict):
      return {k: strip(v) for k, v in node.items() if k != "trim_offsets"}
    if isinstance(node, list):
      return [strip(v) for v in node]
    return node

  data = json.loads(tok.to_str())
  return json.dumps([strip(data.get("normalizer")), strip(data.get("pre_tokenizer"))])


def _rule_tokenizer(rule: PreTokenizer) -> Tokenizer:
  tok = Tokenizer(models.BPE({}, []))
  if rule.nfc:
    tok.normalizer = normalizers.NFC()
  tok.pre_tokenizer = _pre_tokenizer(rule)
  return tok


def pre_tokenizer_name(tok: Tokenizer) -> str:
  """The ``tokenizer.ggml.pre`` name whose splitting rule ``tok`` has.

  Raises:
    CheckpointError: no row of :data:`PRE_TOKENIZERS` splits text as ``tok`` does.

  Example:
    >>> from tokenizers import Tokenizer, models, pre_tokenizers
    >>> tok = Tokenizer(models.BPE({}, []))
    >>> tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    >>> pre_tokenizer_name(tok)
    'gpt-2'
  """
  signature = _signature(tok)
  for rule, name in _NAME_OF.items():
    if _signature(_rule_tokenizer(rule)) == signature:
      return name
  data = json.loads(tok.to_str())
  raise CheckpointError(
    "the tokenizer's normalizer/pre-tokenizer match no GGUF pre-tokenizer name "
    f"(normalizer {data.get('normalizer')}, pre_tokenizer {data.get('pre_tokenizer')}); "
    f"supported: {', '.join(PRE_TOKENIZERS)}"
  )


def tokenizer_from_metadata(value: Callable[..., Any], where: str) -> Tokenizer:
  """Builds the byte-level BPE tokenizer a GGUF file's ``tokenizer.ggml.*`` metadata describes.

  Args:
    value: ``value(key[, default])`` -> the metadata value (raising ``CheckpointError`` that
      names the file and key when a required one is missing).
    where: the file, for messages.

  Returns:
    The tokenizer: control tokens are special added tokens, user-defined ones plain added
    tokens; BOS (EOS) is added by the post-processor when ``add_bos_token`` (``add_eos_token``).

  Raises:
    CheckpointError: a tokenizer model other than ``gpt2``, an unknown pre-tokenizer name, or
      missing or inconsistent metadata.
  """
  model = value("tokenizer.ggml.model")
  if model != "gpt2":
    raise CheckpointError(
      f"{where}: tokenizer.ggml.model is {model!r}; only 'gpt2' (byte-level BPE) is supported"
    )
  name = value("tokenizer.ggml.pre")
  if name not in PRE_TOKENIZERS:
    raise CheckpointError(
      f"{where}: tokenizer.ggml.pre {name!r} is not supported; supported: "
      f"{', '.join(PRE_TOKENIZERS)}"
    )
  rule = PRE_TOKENIZERS[name]
  tokens = value("tokenizer.ggml.tokens")
  merges = value("tokenizer.ggml.merges")
  types = value("tokenizer.ggml.token_type", None) or [NORMAL] * len(tokens)
  if len(types) != len(tokens):
    raise CheckpointError(
      f"{where}: tokenizer.ggml.token_type has {len(types)} entries for {len(tokens)} tokens"
    )
  vocab = {token: i for i, token in enumerate(tokens)}
  try:
    pairs = [tuple(m.split(" ")) for m in merges]
    bpe = models.BPE(vocab, pairs, fuse_unk=False, ignore_merges=rule.ignore_merges)
  except Exception as e:  # malformed merges: tokenizers raises its own exception type
    raise CheckpointError(f"{where}: tokenizer.ggml.merges are not valid BPE merges: {e}") from None
  tok = Tokenizer(bpe)
  if rule.nfc:
    tok.normalizer = normalizers.NFC()
  tok.pre_tokenizer = _pre_tokenizer(rule)
  tok.decoder = decoders.ByteLevel()
  for kind, special in ((CONTROL, True), (USER_DEFINED, False)):
    added = [
      AddedToken(t, special=special, normalized=False)
      for t, ty in zip(tokens, types, strict=True)
      if ty == kind
    ]
    if added:
      (tok.add_special_tokens if special else tok.add_tokens)(added)
  ids = special_from_metadata(value)
  tok.post_processor = _post_processor(tokens, ids)
  return tok


def _post_processor(tokens: list[str], ids: SpecialTokens) -> processors.PostProcessor:
  first = [tokens[ids.bos_id]] if ids.add_bos and ids.bos_id is not None else []
  last = [tokens[ids.eos_id]] if ids.add_eos and ids.eos_id is not None else []
  if not first and not last:
    return processors.ByteLevel(trim_offsets=False)
  single = " ".join([*first, "$A:0", *last])
  pair = " ".join([*first, "$A:0", *last, *first, "$B:1", *last])
  specials = [(t, tokens.index(t)) for t in dict.fromkeys(first + last)]
  return processors.TemplateProcessing(single=single, pair=pair, special_tokens=specials)


def special_from_metadata(value: Callable[..., Any]) -> SpecialTokens:
  """The special ids and BOS/EOS policy of ``tokenizer.ggml.*`` metadata.

  ``add_bos_token`` absent: False (llama.cpp's default for ``gpt2`` vocabularies).
  """
  return SpecialTokens(
    bos_id=value("tokenizer.ggml.bos_token_id", None),
    eos_id=value("tokenizer.ggml.eos_token_id", None),
    pad_id=value("tokenizer.ggml.padding_token_id", None),
    unk_id=value("tokenizer.ggml.unknown_token_id", None),
    add_bos=bool(value("tokenizer.ggml.add_bos_token", False)),
    add_eos=bool(value("tokenizer.ggml.add_eos_token", False)),
  )


def tokenizer_metadata(
  tok: Tokenizer, special: SpecialTokens, vocab_size: int, chat_template: str | None = None
) -> dict[str, Any]:
  """``tokenizer.*`` GGUF metadata for ``tok`` (a byte-level BPE ``tokenizers.Tokenizer``).

  The vocabulary is padded to ``vocab_size`` (the embedding's rows) with unused ``[PADn]``
  tokens, as llama.cpp's converter does; special added tokens become control tokens, the
  other added tokens user-defined ones.

  Raises:
    CheckpointError: not a BPE model, a vocabulary with holes or larger than ``vocab_size``,
      or a splitting rule without a GGUF name.

  Example:
    >>> from tokenizers import Tokenizer, models, pre_tokenizers
    >>> tok = Tokenizer(models.BPE({"a": 0, "b": 1, "ab": 2}, [("a", "b")]))
    >>> tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    >>> meta = tokenizer_metadata(tok, SpecialTokens(eos_id=2), 4)
    >>> meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.merges"]
    (['a', 'b', 'ab', '[PAD3]'], ['a b'])
  """
  data = json.loads(tok.to_str())
  if data["model"]["type"] != "BPE":
    raise CheckpointError(
      f"GGUF export needs a byte-level BPE tokenizer; this one is {data['model']['type']}"
    )
  pre_name = pre_tokenizer_name(tok)
  by_id = {i: t for t, i in tok.get_vocab(with_added_tokens=True).items()}
  if len(by_id) > vocab_size:
    raise CheckpointError(f"the tokenizer has {len(by_id)} tokens, the model only {vocab_size}")
  holes = [i for i in range(len(by_id)) if i not in by_id]
  if holes:
    raise CheckpointError(f"the tokenizer's ids are not contiguous (missing id {holes[0]})")
  tokens = [by_id[i] for i in range(len(by_id))]
  types = [NORMAL] * len(tokens)
  for i, added in tok.get_added_tokens_decoder().items():
    types[i] = CONTROL if added.special else USER_DEFINED
  pad = range(len(tokens), vocab_size)
  tokens += [f"[PAD{i}]" for i in pad]
  types += [UNUSED] * len(pad)
  merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
  meta: dict[str, Any] = {
    "tokenizer.ggml.model": "gpt2",
    "tokenizer.ggml.pre": pre_name,
    "tokenizer.ggml.tokens": tokens,
    "tokenizer.ggml.token_type": types,
    "tokenizer.ggml.merges": merges,
  }
  for key, token_id in (
    ("bos_token_id", special.bos_id),
    ("eos_token_id", special.eos_id),
    ("unknown_token_id", special.unk_id),
    ("padding_token_id", special.pad_id),
  ):
    if token_id is not None:
      meta[f"tokenizer.ggml.{key}"] = token_id
  meta["tokenizer.ggml.add_bos_token"] = special.add_bos
  meta["tokenizer.ggml.add_eos_token"] = special.add_eos
  if chat_template is not None:
    meta["tokenizer.chat_template"] = chat_template
  return meta
