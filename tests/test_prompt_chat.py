"""``--prompt-format chat``: a checkpoint's Jinja chat template as a question/answer template."""

import json
import pathlib

import pytest

from experiments.data.prompts import CHAT, chat_template_format, prompt_format

SMOLLM2 = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data" / "smollm2"

CHATML = (
  "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
  "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Gemma's shape: roles renamed, a template that refuses a system turn via raise_exception.
GEMMA = (
  "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}"
  "{{ raise_exception('System role not supported') }}{% endif %}"
  "{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
  "{{ '<start_of_turn>' + role + '\n' + m['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
  "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)


def test_chatml_gives_the_named_chatml_format():
  fmt = prompt_format(CHAT, CHATML)
  assert fmt.name == CHAT and fmt.template == prompt_format("chatml").template
  assert fmt.prompt("Who?") == "<|im_start|>user\nWho?<|im_end|>\n<|im_start|>assistant\n"
  assert fmt.answer("Ann.") == "Ann."


def test_gemma_template_renders_turns_and_keeps_raise_exception():
  assert chat_template_format(GEMMA) == prompt_format("gemma").template


@pytest.mark.skipif(not SMOLLM2.is_dir(), reason=f"{SMOLLM2} (SmolLM2 reference data) is absent")
def test_smollm2_template_keeps_its_default_system_prompt():
  template = json.loads((SMOLLM2 / "reference.json").read_text())["chat_template"]
  fmt = prompt_format(CHAT, template)
  system = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
  system += "Hugging Face"
  assert fmt.prompt("Hi?") == (
    f"{system}<|im_end|>\n<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\n"
  )


@pytest.mark.parametrize(
  "template, message",
  [
    (None, "needs a checkpoint with a chat template"),
    ("{% for m in messages %}{{ m.content ", "does not render"),
    ("{% for m in messages %}[{{ m['role'] }}]{% endfor %}", "does not render one user turn"),
    ("{{ raise_exception('no') }}", "does not render: no"),
  ],
)
def test_unusable_chat_templates_are_one_line_errors(template, message):
  with pytest.raises(ValueError, match=message):
    prompt_format(CHAT, template)
