"""``flag-table``: a job's command-line flags, read from its argparse parser.

Usage in a Markdown page::

  ```{flag-table} experiments.tofu:parser
  ```

renders one row per flag (name, default, help) from the parser the job itself
uses, so the docs cannot drift from the code's flags and defaults.
"""

from __future__ import annotations

import argparse
import importlib
from typing import Any

from docutils import nodes
from docutils.parsers.rst import Directive


def describe_default(action: argparse.Action) -> str:
  if isinstance(action, argparse._StoreTrueAction):
    return "off"
  default = action.default
  if default is None or default == argparse.SUPPRESS:
    return ""
  if isinstance(default, list | tuple):
    return ",".join(str(x) for x in default)
  return str(default)


def rows(spec: str) -> list[tuple[str, str, str]]:
  """``(flags, default, help)`` per option of ``module:function``'s parser."""
  module, _, func = spec.partition(":")
  parser = getattr(importlib.import_module(module), func or "parser")()
  out = []
  for action in parser._actions:  # argparse has no public iterator
    if isinstance(action, argparse._HelpAction) or not action.option_strings:
      continue
    flag = ", ".join(action.option_strings)
    if action.choices is not None:
      flag += " {" + ",".join(str(c) for c in action.choices) + "}"
    help_text = (action.help or "").replace("%%", "%")
    out.append((flag, describe_default(action), help_text))
  return out


def literal(text: str) -> nodes.Node:
  return nodes.literal(text=text) if text else nodes.Text("")


class FlagTable(Directive):
  required_arguments = 1
  has_content = False

  def run(self) -> list[nodes.Node]:
    table = nodes.table(classes=["flag-table"])
    group = nodes.tgroup(cols=3)
    table += group
    for width in (30, 14, 56):
      group += nodes.colspec(colwidth=width)
    head = nodes.thead()
    group += head
    body = nodes.tbody()
    group += body
    row = nodes.row()
    for text in ("flag", "default", "what it does"):
      row += nodes.entry("", nodes.paragraph(text=text))
    head += row
    for flag, default, help_text in rows(self.arguments[0]):
      row = nodes.row()
      row += nodes.entry("", nodes.paragraph("", "", literal(flag)))
      row += nodes.entry("", nodes.paragraph("", "", literal(default)))
      row += nodes.entry("", nodes.paragraph(text=help_text))
      body += row
    return [table]


def setup(app: Any) -> dict[str, Any]:
  app.add_directive("flag-table", FlagTable)
  return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
