"""Fails the docs build when a public name is not documented.

The public names are the ``__all__`` of ``dualoptim_jax`` and of every public
submodule it lists (``dualoptim_jax.quantization``, ``dualoptim_jax.unlearning``).
After reading every page, each must be a documented Python object (an
``autosummary`` entry, ``autofunction`` or ``py:data``) or, for a submodule, a
``py:module``. A missing one is a warning, so ``sphinx -W`` fails: a new public
name needs an entry in one of the ``docs/api/*.rst`` group files.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from sphinx.util import logging

logger = logging.getLogger(__name__)

ROOT = "dualoptim_jax"


def public_names(root: str = ROOT) -> tuple[set[str], set[str]]:
  """``(objects, modules)``: the fully qualified public names under ``root``."""
  objects, modules, todo = set(), {root}, [root]
  while todo:
    name = todo.pop()
    module = importlib.import_module(name)
    for attr in module.__all__:
      full = f"{name}.{attr}"
      if inspect.ismodule(getattr(module, attr)):
        modules.add(full)
        todo.append(full)
      else:
        objects.add(full)
  return objects, modules


def check(app: Any, env: Any) -> None:
  """``env-check-consistency``: one warning per undocumented public name."""
  del app
  py = env.get_domain("py")
  documented = {name for name, *_ in py.get_objects()}
  objects, modules = public_names()
  for name in sorted((objects | modules) - documented):
    kind = "module" if name in modules else "name"
    logger.warning(
      f"public {kind} {name} is not in the docs: add it to a group in docs/api/*.rst",
      type="coverage_check",
    )


def setup(app: Any) -> dict[str, Any]:
  app.connect("env-check-consistency", check)
  return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
