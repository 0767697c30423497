"""Grids of runs whose records are cached: one JSON file per finished run, skipped when present.

Shared by the TOFU job (a run per loss, optimizer, learning rate and seed) and
the multi-objective jobs (per optimizer, learning rate and seed). A record is
written atomically once its run ends, so an interrupted job loses at most the
run it was in, and a rerun of the same grid reads what is done and runs the rest.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
from collections.abc import Callable, Sequence
from typing import TypeVar

from experiments.loops.checkpoint import read_json, write_json

Cell = TypeVar("Cell")


def short_key(parts, length: int, *, sort_keys: bool = False) -> str:
  """The first ``length`` hex digits of the SHA-256 of ``parts`` as JSON (a cache key).

  Example:
    >>> short_key(["a", 1], 8)
    '2657442b'
  """
  return hashlib.sha256(json.dumps(parts, sort_keys=sort_keys).encode()).hexdigest()[:length]


def run_cached(
  runs_dir: pathlib.Path,
  cells: Sequence[tuple[str, Cell]],
  run: Callable[[Cell, str, str], dict],
) -> list[dict]:
  """Every cell's record, in order: read from ``{runs_dir}/{name}.json``, or run and written.

  Args:
    runs_dir: where the records live (created if missing).
    cells: ``(name, cell)`` pairs; the name is the record's file name (without ``.json``).
    run: ``run(cell, name, tag) -> record`` for a cell without a record; ``tag`` is its
      place in the grid, ``[i/n]``, for the log.

  A damaged record is reported, set aside and run again.
  """
  runs_dir.mkdir(parents=True, exist_ok=True)
  records = []
  for i, (name, cell) in enumerate(cells):
    path = runs_dir / f"{name}.json"
    record = read_json(path)
    if record is None:
      record = run(cell, name, f"[{i + 1}/{len(cells)}]")
      write_json(path, record)
    records.append(record)
  return records
