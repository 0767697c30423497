"""Tables of the multi-objective jobs: mean ± std over seeds per (optimizer, lr), as markdown.

A job describes its numbers as *columns*: ``(label, getter)`` pairs where the
getter reads one float from a run record. The same aggregation then serves
the multi-task table (one column per task and the average), the safety table
(safety, over-refusal, utility) and the per-category refusal tables, and the
conflict diagnostics (their last logged values).
"""

from __future__ import annotations

import collections
import json
import pathlib
from collections.abc import Callable

import numpy as np

Column = tuple[str, Callable[[dict], float]]


def aggregate(runs: list[dict], columns: list[Column]) -> list[dict]:
  """Rows per (optimizer, lr) in first-seen order: ``seeds`` and ``(mean, std)`` per column.

  Example:
    >>> runs = [{"optimizer": "a", "lr": 1e-3, "seed": s, "x": float(s)} for s in (0, 1)]
    >>> aggregate(runs, [("x", lambda r: r["x"])])[0]["x"]
    (0.5, 0.5)
  """
  groups: dict[tuple, list[dict]] = collections.defaultdict(list)
  for r in runs:
    groups[(r["optimizer"], r["lr"])].append(r)
  out = []
  for (opt, lr), rs in groups.items():
    row: dict = {"optimizer": opt, "lr": lr, "seeds": sorted(r["seed"] for r in rs)}
    for label, get in columns:
      vals = np.array([get(r) for r in rs], np.float64)
      vals = vals[~np.isnan(vals)]
      row[label] = (float(vals.mean()), float(vals.std())) if vals.size else (np.nan, np.nan)
    out.append(row)
  return out


def fmt(ms: tuple[float, float], n: int) -> str:
  """``mean ± std`` (3 decimals; the std only with more than one seed); ``-`` for NaN.

  Example:
    >>> fmt((0.5, 0.1), 3), fmt((0.5, 0.0), 1), fmt((float("nan"), 0.0), 1)
    ('0.500 ± 0.100', '0.500', '-')
  """
  m, s = ms
  if np.isnan(m):
    return "-"
  return f"{m:.3f} ± {s:.3f}" if n > 1 else f"{m:.3f}"


def markdown_table(
  rows: list[dict], labels: list[str], extra: dict[str, dict] | None = None
) -> str:
  """One line per (optimizer, lr); ``extra`` adds reference lines (name -> {label: value}).

  Example:
    >>> rows = [{"optimizer": "a", "lr": 0.001, "seeds": [0], "x": (0.5, 0.0)}]
    >>> print(markdown_table(rows, ["x"]))
    | optimizer | lr | x |
    |---|---|---|
    | a | 0.001 | 0.500 |
  """
  lines = ["| optimizer | lr | " + " | ".join(labels) + " |", "|---|---|" + "---|" * len(labels)]
  for name, values in (extra or {}).items():
    cells = [fmt((values[k], 0.0), 1) if k in values else "-" for k in labels]
    lines.append(f"| {name} | - | " + " | ".join(cells) + " |")
  for r in rows:
    cells = [fmt(r[k], len(r["seeds"])) for k in labels]
    lines.append(f"| {r['optimizer']} | {r['lr']:g} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def category_table(runs: list[dict], key: str, title: str) -> str:
  """Rows = categories of ``run[key]`` (category -> rate), columns = (optimizer, lr) means.

  A reference run (the base model) may have ``lr`` 0: its column is its name.

  Example:
    >>> runs = [{"optimizer": "a", "lr": 0.1, "seed": 0, "cat": {"x": 0.25}}]
    >>> print(category_table(runs, "cat", "type"))
    | type | a 0.1 |
    |---|---|
    | x | 0.250 |
  """
  cats = list(dict.fromkeys(c for r in runs for c in r[key]))
  cols = [(c, lambda r, c=c: r[key].get(c, np.nan)) for c in cats]
  rows = aggregate(runs, cols)
  head = [f"{r['optimizer']} {r['lr']:g}" if r["lr"] else r["optimizer"] for r in rows]
  lines = [f"| {title} | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]
  for c in cats:
    lines.append(f"| {c} | " + " | ".join(fmt(r[c], len(r["seeds"])) for r in rows) + " |")
  return "\n".join(lines)


def last_diagnostics(run: dict, kind: str) -> dict[str, float]:
  """The last logged ``kind`` (``grad_cosine``, ``delta_cosine``, ``base_share``) of a run."""
  logged = [d[kind] for d in run.get("diagnostics", []) if kind in d]
  return logged[-1] if logged else {}


def diagnostics_table(runs: list[dict]) -> str:
  """Mean over training of the logged conflict diagnostics, per (optimizer, lr)."""
  kinds = ("grad_cosine", "delta_cosine", "base_share")
  names = {
    k: list(dict.fromkeys(n for r in runs for d in r["diagnostics"] for n in d.get(k, {})))
    for k in kinds
  }

  def mean_of(kind, name):
    def get(r):
      vals = [d[kind][name] for d in r["diagnostics"] if kind in d]
      return float(np.mean(vals)) if vals else np.nan

    return get

  short = {"grad_cosine": "grad cos", "delta_cosine": "delta cos", "base_share": "base share"}
  cols = [(f"{short[k]} {n}", mean_of(k, n)) for k in kinds for n in names[k]]
  return markdown_table(aggregate(runs, cols), [c for c, _ in cols])


def write(out: pathlib.Path, payload: dict, sections: list[tuple[str, str]]) -> None:
  """Writes ``results.json`` and ``results.md`` (title, notes, the sections, the setup)."""
  out.mkdir(parents=True, exist_ok=True)
  (out / "results.json").write_text(json.dumps(payload, indent=1))
  setup = payload["setup"]
  md = [f"# {setup['title']}", "", setup["notes"], ""]
  for heading, body in sections:
    md += [f"## {heading}", "", body, ""]
  md += ["## Setup", "", "```", json.dumps(setup, indent=1), "```"]
  (out / "results.md").write_text("\n".join(md) + "\n")
