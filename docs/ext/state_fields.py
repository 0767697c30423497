"""Lists a NamedTuple state's fields with the comments written beside them.

The optimizer states follow optax's convention: one field per line, its shape and
meaning in a trailing ``# ...`` comment. autodoc shows NamedTuple fields as
"Alias for field number N"; this hook appends a "Fields" list built from those
comments to the class docstring instead, so the source stays the single place
where a field is described.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

FIELD = re.compile(r"^\s+(\w+): (.+?)\s+# (.+)$")


def fields_of(cls: type) -> list[tuple[str, str, str]]:
  """``(name, annotation, comment)`` for each commented field of a NamedTuple class."""
  try:
    lines = inspect.getsource(cls).splitlines()
  except (OSError, TypeError):
    return []
  found = {}
  for line in lines:
    m = FIELD.match(line)
    if m and m.group(1) in cls._fields:
      found[m.group(1)] = (m.group(1), m.group(2), m.group(3))
  return [found[f] for f in cls._fields if f in found]


def escape(comment: str) -> str:
  """The comment as plain reST text (``*``, ``|`` and a trailing ``_`` are markup there)."""
  comment = re.sub(r"([*|`\\])", r"\\\1", comment)
  return re.sub(r"(\w)_(?!\w)", r"\1\\_", comment)


def add_fields(app, what, name, obj, options, lines) -> None:
  """``autodoc-process-docstring``: append the field list to NamedTuple classes."""
  del app, name, options
  if what != "class" or not (isinstance(obj, type) and issubclass(obj, tuple)):
    return
  if not hasattr(obj, "_fields"):
    return
  fields = fields_of(obj)
  if not fields:
    return
  lines += ["", ".. rubric:: Fields", ""]
  for field, annotation, comment in fields:
    lines += [f"* ``{field}`` (``{annotation}``): {escape(comment)}"]
  lines.append("")


def setup(app: Any) -> dict[str, Any]:
  app.connect("autodoc-process-docstring", add_fields)
  return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
