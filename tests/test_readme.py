"""The README's usage example runs as printed."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_usage_example_runs(capsys):
  text = README.read_text()
  code = re.search(r"## Usage\n\n```python\n(.*?)```", text, re.S).group(1)
  exec(compile(code, "README.md", "exec"), {})
  assert "delta_cosine" in capsys.readouterr().out


def test_unlearning_example_runs(capsys):
  text = README.read_text()
  block = r"### Unlearning objectives and audits.*?```python\n(.*?)```"
  code = re.search(block, text, re.S).group(1)
  exec(compile(code, "README.md", "exec"), {})
  assert "MIA AUC" in capsys.readouterr().out
