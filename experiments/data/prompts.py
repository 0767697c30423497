"""Prompt formats: how a question and its answer become one text (``--prompt-format``).

A format is a template with one ``{question}`` and, at its very end, one
``{answer}``. The prompt the model is asked with is the template up to
``{answer}``, minus trailing spaces; the answer (the only text any loss
scores) is those spaces plus the answer, then the checkpoint's EOS. The named
formats:

- ``tofu``: ``Question: {question}\\nAnswer: {answer}`` (TOFU's phi format; the
  in-house model's and the default);
- ``llama2``: ``[INST] {question} [/INST] {answer}`` (TOFU's Llama-2 format);
- ``llama3``, ``chatml`` (Qwen2/Qwen3) and ``gemma``: the instruct models'
  chat turns, written with their special tokens (which the checkpoint's
  tokenizer keeps as single tokens).

Any other value is a custom template; a literal ``\\n`` in it (as typed in a
shell) means a newline.
"""

from __future__ import annotations

import dataclasses

FORMATS = {
  "tofu": "Question: {question}\nAnswer: {answer}",
  "llama2": "[INST] {question} [/INST] {answer}",
  "llama3": (
    "<|start_header_id|>user<|end_header_id|>\n\n{question}<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n{answer}"
  ),
  "chatml": "<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n{answer}",
  "gemma": "<start_of_turn>user\n{question}<end_of_turn>\n<start_of_turn>model\n{answer}",
}
DEFAULT = "tofu"


@dataclasses.dataclass(frozen=True)
class PromptFormat:
  """A checked template (build it with :func:`prompt_format`).

  Example:
    >>> fmt = prompt_format("llama2")
    >>> fmt.prompt("Who?"), fmt.answer("Ann.")
    ('[INST] Who? [/INST]', ' Ann.')
  """

  name: str
  template: str

  def _head(self, question: str) -> str:
    return self.template[: -len("{answer}")].replace("{question}", question)

  def prompt(self, question: str) -> str:
    """The prompt text for ``question``."""
    return self._head(question).rstrip(" ")

  def answer(self, answer: str) -> str:
    """The answer text that follows the prompt (its leading spaces included)."""
    head = self._head("")
    return head[len(head.rstrip(" ")) :] + answer


def prompt_format(value: str = DEFAULT) -> PromptFormat:
  """The named format or a custom template, checked.

  Raises:
    ValueError: a custom template without exactly one ``{question}`` and one
      ``{answer}`` at its end (the message names the named formats too).

  Example:
    >>> prompt_format("Q: {question}\\\\nA: {answer}").prompt("hi")
    'Q: hi\\nA:'
  """
  if value in FORMATS:
    return PromptFormat(value, FORMATS[value])
  template = value.replace("\\n", "\n")
  if (
    template.count("{question}") != 1
    or template.count("{answer}") != 1
    or not template.endswith("{answer}")
  ):
    raise ValueError(
      f"--prompt-format {value!r} is neither a named format ({', '.join(FORMATS)}) nor a "
      "template with one {question} and, at its end, one {answer}"
    )
  return PromptFormat("custom", template)
