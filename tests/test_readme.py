"""The README's quickstart runs as printed (the docs pages' examples: ``tests/test_docs.py``)."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_quickstart_runs(capsys):
  text = README.read_text()
  code = re.search(r"## Quickstart\n\n```python\n(.*?)```", text, re.S).group(1)
  exec(compile(code, "README.md", "exec"), {})
  assert "delta_cosine" in capsys.readouterr().out


def test_readme_is_a_front_page():
  """At most 300 lines, and the two commands first, exactly as ``.ci/run`` runs the second."""
  text = README.read_text()
  assert len(text.splitlines()) <= 300
  blocks = re.findall(r"```bash\n(.*?)\n```", text, re.S)
  assert blocks[:2] == [
    'pip install -e ".[experiments]" && python -m experiments.tofu --out results',
    'pip install -q -e ".[test]" && python -m pytest -q',
  ]
  assert blocks[1] in (README.parent / ".ci" / "run").read_text()
