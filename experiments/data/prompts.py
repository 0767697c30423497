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

``chat`` renders the checkpoint's own chat template (Jinja, as transformers'
``apply_chat_template`` does): the question as the one user turn, the answer as
the assistant turn (:func:`chat_template_format` turns it into a template of the
form above, so everything downstream is unchanged).

Any other value is a custom template; a literal ``\\n`` in it (as typed in a
shell) means a newline.
"""

from __future__ import annotations

import dataclasses

import jinja2
import jinja2.ext
import jinja2.sandbox

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
CHAT = "chat"

# Stand-ins rendered through a chat template, then replaced by the placeholders.
_Q, _A = "\x00question\x00", "\x00answer\x00"


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

  def after_question(self) -> str:
    """The prompt's text after the question (e.g. a chat template's assistant header).

    Example:
      >>> prompt_format("chatml").after_question()
      '<|im_end|>\\n<|im_start|>assistant\\n'
    """
    return self.prompt("{question}").split("{question}", 1)[1]

  def answer(self, answer: str) -> str:
    """The answer text that follows the prompt (its leading spaces included)."""
    head = self._head("")
    return head[len(head.rstrip(" ")) :] + answer


def chat_template_format(chat_template: str) -> str:
  """A ``{question} ... {answer}`` template from a checkpoint's Jinja chat template.

  The template is rendered (sandboxed, as transformers does) once with the generation prompt
  for one user turn, and once with a user and an assistant turn; the prompt is the first
  rendering, the answer what the assistant turn adds up to its end-of-turn text (which the
  checkpoint's EOS token, appended after every answer, stands for). A system prompt the
  template inserts by default is kept.

  Raises:
    ValueError: the template does not render, or does not render a user turn followed by an
      assistant turn that starts with the answer (the message says which).

  Example:
    >>> chatml = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\\n{{ m['content'] }}"
    ...           "<|im_end|>\\n{% endfor %}{% if add_generation_prompt %}"
    ...           "<|im_start|>assistant\\n{% endif %}")
    >>> chat_template_format(chatml)
    '<|im_start|>user\\n{question}<|im_end|>\\n<|im_start|>assistant\\n{answer}'
  """
  # transformers' apply_chat_template environment: sandboxed, trimmed blocks, loop controls,
  # and a raise_exception() that templates call on messages they refuse.
  env = jinja2.sandbox.ImmutableSandboxedEnvironment(
    trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
  )

  def raise_exception(message):
    raise jinja2.TemplateError(message)

  env.globals["raise_exception"] = raise_exception

  def render(messages, generation_prompt: bool) -> str:
    try:
      return env.from_string(chat_template).render(
        messages=messages, add_generation_prompt=generation_prompt, bos_token="", eos_token=""
      )
    except jinja2.TemplateError as e:
      raise ValueError(f"the checkpoint's chat template does not render: {e}") from None

  user = {"role": "user", "content": _Q}
  prompt = render([user], True)
  full = render([user, {"role": "assistant", "content": _A}], False)
  answer_follows = full.startswith(prompt) and full[len(prompt) :].startswith(_A)
  if prompt.count(_Q) != 1 or not answer_follows:
    raise ValueError(
      "the checkpoint's chat template does not render one user turn followed by an assistant "
      "turn that starts with the answer; give --prompt-format a template instead"
    )
  return prompt.replace(_Q, "{question}") + "{answer}"


def prompt_format(value: str = DEFAULT, chat_template: str | None = None) -> PromptFormat:
  """The named format, the checkpoint's chat template (``chat``) or a custom template, checked.

  Args:
    value: a name of :data:`FORMATS`, ``chat``, or a template.
    chat_template: the checkpoint's Jinja chat template (needed for ``chat``).

  Raises:
    ValueError: a custom template without exactly one ``{question}`` and one
      ``{answer}`` at its end (the message names the named formats too); ``chat``
      without a chat template, or one that does not render a turn pair.

  Example:
    >>> prompt_format("Q: {question}\\\\nA: {answer}").prompt("hi")
    'Q: hi\\nA:'
  """
  if value in FORMATS:
    return PromptFormat(value, FORMATS[value])
  if value == CHAT:
    if not chat_template:
      raise ValueError(
        "--prompt-format chat needs a checkpoint with a chat template (this one has none)"
      )
    return PromptFormat(CHAT, chat_template_format(chat_template))
  template = value.replace("\\n", "\n")
  if (
    template.count("{question}") != 1
    or template.count("{answer}") != 1
    or not template.endswith("{answer}")
  ):
    raise ValueError(
      f"--prompt-format {value!r} is neither a named format ({', '.join(FORMATS)}), "
      f"{CHAT!r} nor a "
      "template with one {question} and, at its end, one {answer}"
    )
  return PromptFormat("custom", template)
