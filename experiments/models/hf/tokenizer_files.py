"""A checkpoint's tokenizer beyond ``tokenizer.json``: special ids, BOS/EOS policy, chat template.

HF folders spread these over ``config.json`` (ids), ``tokenizer_config.json`` (token strings,
``chat_template``), ``chat_template.jinja`` (transformers 5 writes the template there) and the
tokenizer's post-processor (whether BOS is added). A GGUF file keeps them as
``tokenizer.ggml.*`` metadata. :class:`SpecialTokens` is the one record both sides convert to.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

from tokenizers import Tokenizer

from experiments.models.hf.config import CheckpointError

TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"


@dataclasses.dataclass(frozen=True)
class SpecialTokens:
  """Special token ids (None: the checkpoint names none) and what encoding adds by itself.

  Example:
    >>> SpecialTokens(bos_id=1, eos_id=2).add_bos
    False
  """

  bos_id: int | None = None
  eos_id: int | None = None
  pad_id: int | None = None
  unk_id: int | None = None
  add_bos: bool = False
  add_eos: bool = False


def _first_id(value: Any) -> int | None:
  # config.json may list several EOS ids; GGUF and tokenizer_config.json hold one.
  if isinstance(value, list):
    return int(value[0]) if value else None
  return None if value is None else int(value)


def adds_bos_eos(tok: Tokenizer, bos_id: int | None, eos_id: int | None) -> tuple[bool, bool]:
  """Whether ``tok.encode`` adds BOS first / EOS last (asked of its post-processor).

  Example:
    >>> from tokenizers import Tokenizer, models
    >>> adds_bos_eos(Tokenizer(models.BPE({"a": 0, "<s>": 1}, [])), 1, None)
    (False, False)
  """
  plain = tok.encode("a", add_special_tokens=False).ids
  full = tok.encode("a", add_special_tokens=True).ids
  add_bos = bos_id is not None and len(full) > len(plain) and full[0] == bos_id
  add_eos = eos_id is not None and len(full) > len(plain) and full[-1] == eos_id
  return add_bos, add_eos


def read_tokenizer_config(folder: str | pathlib.Path) -> dict[str, Any]:
  """``tokenizer_config.json`` of an HF folder as a dict (empty when the file is absent)."""
  file = pathlib.Path(folder) / TOKENIZER_CONFIG
  if not file.is_file():
    return {}
  try:
    return json.loads(file.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise CheckpointError(f"{file} is not valid JSON: {e}") from None


def read_chat_template(folder: str | pathlib.Path) -> str | None:
  """The chat template of an HF folder: ``chat_template.jinja``, else ``tokenizer_config.json``.

  A list of named templates (some checkpoints ship several) gives the one named ``default``.

  Example:
    >>> import tempfile
    >>> read_chat_template(tempfile.mkdtemp()) is None
    True
  """
  folder = pathlib.Path(folder)
  if (folder / CHAT_TEMPLATE_FILE).is_file():
    return (folder / CHAT_TEMPLATE_FILE).read_text()
  template = read_tokenizer_config(folder).get("chat_template")
  if isinstance(template, list):
    named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
    template = named.get("default")
  return template if isinstance(template, str) else None


def special_tokens_of(
  tok: Tokenizer, raw_config: dict[str, Any], tokenizer_config: dict[str, Any]
) -> SpecialTokens:
  """Special ids of an HF checkpoint: ``config.json``'s ids, else the token strings of
  ``tokenizer_config.json``; ``add_bos``/``add_eos`` from what the tokenizer does.

  Example:
    >>> from tokenizers import Tokenizer, models
    >>> tok = Tokenizer(models.BPE({"a": 0, "<s>": 1, "</s>": 2}, []))
    >>> special_tokens_of(tok, {"eos_token_id": [2, 0]}, {"bos_token": "<s>"})
    SpecialTokens(bos_id=1, eos_id=2, pad_id=None, unk_id=None, add_bos=False, add_eos=False)
  """

  def token_id(name: str) -> int | None:
    found = _first_id(raw_config.get(f"{name}_id"))
    if found is None:
      token = tokenizer_config.get(name)
      if isinstance(token, dict):  # {"content": "<s>", ...} in older tokenizer_config.json
        token = token.get("content")
      found = tok.token_to_id(token) if isinstance(token, str) else None
    return found

  bos, eos = token_id("bos_token"), token_id("eos_token")
  add_bos, add_eos = adds_bos_eos(tok, bos, eos)
  return SpecialTokens(bos, eos, token_id("pad_token"), token_id("unk_token"), add_bos, add_eos)


def write_tokenizer_files(
  folder: str | pathlib.Path,
  tok: Tokenizer,
  special: SpecialTokens,
  chat_template: str | None = None,
) -> None:
  """Writes ``tokenizer.json``, a ``tokenizer_config.json`` that transformers reads, and
  ``generation_config.json`` (:func:`write_generation_config`).

  The config names the special tokens by string and carries the chat template, so
  ``AutoTokenizer.from_pretrained(folder).apply_chat_template`` works without the GGUF file.

  Example:
    >>> import tempfile, pathlib
    >>> from tokenizers import Tokenizer, models
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> write_tokenizer_files(d, Tokenizer(models.BPE({"a": 0}, [])), SpecialTokens(eos_id=0))
    >>> read_tokenizer_config(d)["eos_token"]
    'a'
  """
  folder = pathlib.Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  tok.save(str(folder / TOKENIZER_JSON))
  config: dict[str, Any] = {
    # PreTrainedTokenizerFast: tokenizer.json is the whole tokenizer (transformers 4 and 5).
    "tokenizer_class": "PreTrainedTokenizerFast",
    "clean_up_tokenization_spaces": False,
    "add_bos_token": special.add_bos,
    "add_eos_token": special.add_eos,
  }
  for name, token_id in (
    ("bos_token", special.bos_id),
    ("eos_token", special.eos_id),
    ("pad_token", special.pad_id),
    ("unk_token", special.unk_id),
  ):
    if token_id is not None:
      config[name] = tok.id_to_token(token_id)
  if chat_template is not None:
    config["chat_template"] = chat_template
  (folder / TOKENIZER_CONFIG).write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
  write_generation_config(folder, special)


def write_generation_config(folder: str | pathlib.Path, special: SpecialTokens) -> None:
  """Writes ``generation_config.json`` with the BOS, EOS and pad ids (where there are ones).

  Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> write_generation_config(d, SpecialTokens(bos_id=1, eos_id=2))
    >>> json.loads((d / "generation_config.json").read_text())
    {'bos_token_id': 1, 'eos_token_id': 2}
  """
  ids = {"bos_token_id": special.bos_id, "eos_token_id": special.eos_id}
  ids["pad_token_id"] = special.pad_id
  generation = {k: v for k, v in ids.items() if v is not None}
  (pathlib.Path(folder) / "generation_config.json").write_text(
    json.dumps(generation, indent=2) + "\n"
  )
