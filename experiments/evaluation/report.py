"""Aggregation over seeds, the comparison table (markdown / terminal) and results.json."""

from __future__ import annotations

import collections
import json
import pathlib

import numpy as np

# Audits an evaluation may lack (NaN then): Tug-of-War (ROUGE-L vs the oracle), fluency (token
# entropy of the forget answers), owner attribution (experiments/evaluation/attribution.py).
AUDIT_COLUMNS = (
  ("tug_of_war", "ToW"),
  ("fluency", "fluency"),
  ("forget_attribution", "forget attr"),
  ("retain_attribution", "retain attr"),
  ("forget_attribution_check", "forget attr (check)"),
)
# Forget-set memorization (EOS left out) and the other membership-inference audits: AUC of
# forget vs holdout answers and PrivLeak against the oracle (NaN in evaluations without them).
MIA_COLUMNS = (
  ("forget_em", "forget EM"),
  ("forget_es", "forget ES"),
  ("zlib_auc", "ZLib AUC"),
  ("privleak_zlib", "PrivLeak ZLib %"),
  ("reference_auc", "Ref AUC"),
  ("privleak_reference", "PrivLeak Ref %"),
  ("gradnorm_auc", "GradNorm AUC"),
  ("privleak_gradnorm", "PrivLeak GradNorm %"),
)
COLUMNS = (
  (
    ("forget_quality", "FQ"),
    ("model_utility", "MU"),
    ("forget_efficacy", "FE"),
    ("forget_rouge", "forget ROUGE"),
    ("forget_prob", "forget prob"),
    ("retain_rouge", "retain ROUGE"),
    ("mia_auc", "MIA AUC"),
    ("privleak", "PrivLeak %"),
  )
  + MIA_COLUMNS
  + AUDIT_COLUMNS
)


def _number(x) -> float:
  return float("nan") if x is None else float(x)


def summary_row(ev: dict) -> dict[str, float]:
  """The flat numbers of one evaluation (NaN where a number is absent).

  ``mia_auc`` is the Min-K%++ AUC of forget vs holdout answers and ``privleak`` its
  relative gap to the oracle's, in percent (evaluations without a holdout: NaN).
  The :data:`MIA_COLUMNS` and :data:`AUDIT_COLUMNS` are NaN where an evaluation lacks them.
  """
  mia = ev.get("mia") or {}
  forget = ev["forget"]
  return {
    "forget_quality": _number(ev["forget_quality"]),
    "model_utility": ev["model_utility"],
    "forget_efficacy": ev["forget_efficacy"],
    "forget_rouge": ev["forget"]["rouge"],
    "forget_prob": ev["forget"]["prob"],
    "retain_rouge": ev["retain"]["rouge"],
    "mia_auc": _number(mia.get("min_k_pp_auc")),
    "privleak": _number(mia.get("privleak")),
    "forget_em": _number(forget.get("em")),
    "forget_es": _number(forget.get("es")),
    **{k: _number(mia.get(k)) for k, _ in MIA_COLUMNS[2:]},
    "privleak_min_k": _number(mia.get("privleak_min_k")),  # results.md's audit summary
    "privleak_loss": _number(mia.get("privleak_loss")),
    **{k: _number(ev.get(k)) for k, _ in AUDIT_COLUMNS},
  }


def aggregate(runs: list[dict]) -> list[dict]:
  """Groups runs by (loss, optimizer, lr); mean and std over seeds of every number."""
  groups: dict[tuple, list[dict]] = collections.defaultdict(list)
  for r in runs:
    groups[(r["loss"], r["optimizer"], r["lr"])].append(r)
  out = []
  for (loss, opt, lr), rs in groups.items():
    row = {"loss": loss, "optimizer": opt, "lr": lr, "seeds": sorted(r["seed"] for r in rs)}
    flats = [summary_row(r["eval"]) for r in rs]
    for key in flats[0]:
      vals = np.array([f[key] for f in flats], np.float64)
      row[key] = (float(np.mean(vals)), float(np.std(vals)))
    walls = [r["wall_s"] for r in rs]  # median: robust to a step that hit compilation
    row["wall_s"] = (float(np.median(walls)), float(np.std(walls)))
    row["state_bytes"] = int(rs[0]["state_bytes"])
    out.append(row)
  return out


def _fmt(ms: tuple[float, float], n: int, digits: int = 3, *, percent: bool = False) -> str:
  m, s = ms
  if np.isnan(m):
    return "-"
  if percent:
    return f"{m:.1f} ± {s:.1f}" if n > 1 else f"{m:.1f}"
  if n > 1:
    return f"{m:.{digits}g} ± {s:.2g}" if m < 0.01 else f"{m:.{digits}f} ± {s:.{digits}f}"
  return f"{m:.{digits}g}" if m < 0.01 else f"{m:.{digits}f}"


def markdown_table(rows: list[dict], references: dict[str, dict]) -> str:
  """The comparison table: reference models first, then one row per (loss, optimizer, lr).

  Owner-attribution columns appear only when some evaluation has them (the audit ran).
  """
  audited = any("forget_attribution" in ev for ev in references.values())
  columns = [(k, c) for k, c in COLUMNS if audited or "attribution" not in k]
  head = ["loss", "optimizer", "lr"] + [c for _, c in columns] + ["wall s", "state bytes"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for name, ev in references.items():
    flat = summary_row(ev)
    cells = ["-", name, "-"]
    cells += [_fmt((flat[k], 0.0), 1, percent=k.startswith("privleak")) for k, _ in columns] + [
      "-",
      "-",
    ]
    lines.append("| " + " | ".join(cells) + " |")
  for r in sorted(rows, key=lambda r: (r["loss"], r["optimizer"], r["lr"])):
    n = len(r["seeds"])
    cells = [r["loss"], r["optimizer"], f"{r['lr']:g}"]
    cells += [_fmt(r[k], n, percent=k.startswith("privleak")) for k, _ in columns]
    cells += [f"{r['wall_s'][0]:.1f}", f"{r['state_bytes']:,}"]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def tradeoff_summary(rows: list[dict], mu_before: float, frac: float = 0.9) -> str:
  """Per (loss, optimizer): the learning rate with the best mean FQ (and FE) among those
  keeping mean model utility >= ``frac`` x the fine-tuned model's.

  The selection uses the same seeds it reports (optimistic for every optimizer alike).
  """
  head = [
    "loss",
    "optimizer",
    f"best FQ (MU >= {frac:g} x before)",
    "lr",
    "MU",
    f"best FE (MU >= {frac:g} x before)",
    "lr ",
    "MU ",
    "MIA AUC at best FQ",
    "PrivLeak % at best FQ",
  ]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  keys = dict.fromkeys((r["loss"], r["optimizer"]) for r in rows)
  for loss, opt in sorted(keys, key=lambda k: k[0]):
    rs = [r for r in rows if (r["loss"], r["optimizer"]) == (loss, opt)]
    ok = [r for r in rs if r["model_utility"][0] >= frac * mu_before]
    cells = [loss, opt]
    for key in ("forget_quality", "forget_efficacy"):
      if not ok:
        cells += ["none qualifies", "-", "-"]
        continue
      best = max(ok, key=lambda r, key=key: r[key][0])
      n = len(best["seeds"])
      cells += [_fmt(best[key], n), f"{best['lr']:g}", _fmt(best["model_utility"], n)]
    if ok:
      best = max(ok, key=lambda r: r["forget_quality"][0])
      n = len(best["seeds"])
      cells += [_fmt(best["mia_auc"], n), _fmt(best["privleak"], n, percent=True)]
    else:
      cells += ["-", "-"]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


AUDIT_KEYS = (
  "forget_em",
  "forget_es",
  "privleak",
  "privleak_min_k",
  "privleak_loss",
  "privleak_zlib",
  "privleak_reference",
  "privleak_gradnorm",
)


def audits_at_best_fq(rows: list[dict], mu_before: float, frac: float = 0.9) -> str:
  """Per (loss, optimizer), at the learning rate :func:`tradeoff_summary` picks for FQ: forget
  EM and ES and the PrivLeak of every membership-inference score (0 = like the oracle).

  Example:
    >>> row = {"loss": "L", "optimizer": "o", "lr": 1e-3, "seeds": [0],
    ...   **{k: (0.5, 0.0) for k in ("forget_quality", "model_utility", *AUDIT_KEYS)}}
    >>> audits_at_best_fq([row], 0.5).splitlines()[-1]
    '| L | o | 0.001 | 0.500 | 0.500 | 0.5 | 0.5 | 0.5 | 0.5 | 0.5 | 0.5 |'
  """
  names = ("Min-K%++", "Min-K%", "LOSS", "ZLib", "Ref", "GradNorm")
  head = ["loss", "optimizer", "lr", "forget EM", "forget ES"] + [f"PrivLeak {n}" for n in names]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  keys = dict.fromkeys((r["loss"], r["optimizer"]) for r in rows)
  for loss, opt in sorted(keys, key=lambda k: k[0]):
    ok = [
      r
      for r in rows
      if (r["loss"], r["optimizer"]) == (loss, opt) and r["model_utility"][0] >= frac * mu_before
    ]
    if not ok:
      lines.append(f"| {loss} | {opt} | none qualifies |" + " - |" * (len(head) - 3))
      continue
    best = max(ok, key=lambda r: r["forget_quality"][0])
    n = len(best["seeds"])
    cells = [loss, opt, f"{best['lr']:g}"]
    cells += [_fmt(best[k], n, percent=k.startswith("privleak")) for k in AUDIT_KEYS]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def _cell(key: str, ms: tuple[float, float]) -> str:
  m, s = ms
  if np.isnan(m):
    return "-"
  if key.startswith("privleak"):
    return f"{m:+.0f}±{s:.0f}"
  return f"{m:.1e}" if abs(m) < 0.01 else f"{m:.2f}±{s:.2f}"


GRID_KEYS = ("forget_quality", "model_utility", "forget_efficacy", "privleak")


def lr_grid(rows: list[dict], loss: str, keys: tuple[str, ...] = GRID_KEYS) -> str:
  """One loss's optimizer x learning-rate grid; cell = the ``keys`` (mean±std over seeds).

  Means below 0.01 are printed alone in e-notation; PrivLeak in percent, signed.
  """
  rs = [r for r in rows if r["loss"] == loss]
  lrs = sorted({r["lr"] for r in rs})
  names = dict(COLUMNS)
  head = ["optimizer"] + [f"lr {lr:g}" for lr in lrs]
  lines = [
    f"cell = {' / '.join(names[k] for k in keys)}",
    "",
    "| " + " | ".join(head) + " |",
    "|" + "---|" * len(head),
  ]
  for opt in dict.fromkeys(r["optimizer"] for r in rs):
    cells = [opt]
    for lr in lrs:
      match = [r for r in rs if r["optimizer"] == opt and r["lr"] == lr]
      cells.append(" / ".join(_cell(k, match[0][k]) for k in keys) if match else "-")
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


ATTRIBUTION_GRID_KEYS = (
  "forget_attribution",
  "tug_of_war",
  "forget_quality",
  "model_utility",
  "fluency",
)
EQUAL_FORGETTING = 0.05  # forget attribution at or below which a run counts as de-attributed


def equal_forgetting(rows: list[dict], threshold: float = EQUAL_FORGETTING) -> str:
  """Per (loss, optimizer): the learning rate with the best mean model utility among those whose
  mean forget attribution is <= ``threshold`` (utility at equal forgetting), with its audits.

  Example:
    >>> row = lambda lr, a, mu: {"loss": "L", "optimizer": "o", "lr": lr, "seeds": [0],
    ...   **{k: (0.5, 0.0) for k, _ in COLUMNS}, "forget_attribution": (a, 0.0),
    ...   "model_utility": (mu, 0.0), "wall_s": (1.0, 0.0)}
    >>> print(equal_forgetting([row(1e-3, 0.2, 0.8), row(3e-3, 0.01, 0.6)]).splitlines()[-1])
    | L | o | 0.003 | 0.010 | 0.50±0.00 | 0.50±0.00 | 0.60±0.00 | 0.50±0.00 | 1.0 |
  """
  names = dict(COLUMNS)
  keys = ATTRIBUTION_GRID_KEYS
  head = ["loss", "optimizer", "lr"] + [names[k] for k in keys] + ["wall s"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for loss, opt in dict.fromkeys((r["loss"], r["optimizer"]) for r in rows):
    ok = [
      r
      for r in rows
      if (r["loss"], r["optimizer"]) == (loss, opt) and r["forget_attribution"][0] <= threshold
    ]
    if not ok:
      lines.append(f"| {loss} | {opt} | none | " + " | ".join("-" for _ in keys) + " | - |")
      continue
    best = max(ok, key=lambda r: r["model_utility"][0])
    cells = [loss, opt, f"{best['lr']:g}", f"{best['forget_attribution'][0]:.3f}"]
    cells += [_cell(k, best[k]) for k in keys[1:]] + [f"{best['wall_s'][0]:.1f}"]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def brief(ev: dict) -> str:
  """One log line of an evaluation."""
  fq = ev["forget_quality"]
  return (
    f"forget ROUGE {ev['forget']['rouge']:.3f} prob {ev['forget']['prob']:.3f} | "
    f"retain ROUGE {ev['retain']['rouge']:.3f} | MU {ev['model_utility']:.3f} | "
    f"FE {ev['forget_efficacy']:.3f}"
    + ("" if fq is None else f" | FQ {fq:.3g}")
    + ("" if not ev.get("mia") else f" | MIA AUC {ev['mia']['min_k_pp_auc']:.3f}")
    + ("" if "tug_of_war" not in ev else f" | ToW {ev['tug_of_war']:.3f}")
    + ("" if "forget_attribution" not in ev else f" | attr {ev['forget_attribution']:.3f}")
  )


def write(out: pathlib.Path, payload: dict) -> None:
  """Writes ``results.json`` and ``results.md`` (table + setup) under ``out``."""
  out.mkdir(parents=True, exist_ok=True)
  (out / "results.json").write_text(json.dumps(payload, indent=1))
  refs = {"fine-tuned (before)": payload["before"], "retain-only oracle": payload["oracle"]}
  rows = aggregate(payload["runs"])
  setup = payload["setup"]
  md = [
    f"# Unlearning results: {setup['corpus']}",
    "",
    f"{setup['notes']}",
    "",
    "Mean ± std over seeds " + ", ".join(map(str, setup["seeds"])) + ". "
    "FQ = KS p-value vs the retain-only oracle "
    "(higher = closer to never having seen the forget set); "
    "MU = harmonic mean of 9 utility numbers; FE = forget efficacy "
    "(1 - mean(forget ROUGE, prob, 1 - truth-ratio score)). "
    "MIA AUC = Min-K%++ (k = 0.4) ROC AUC of forget answers vs holdout answers no model "
    "trained on; PrivLeak = 100 (AUC - oracle AUC) / oracle AUC (0 = like the oracle, "
    "< 0 over-unlearned, > 0 leaking). "
    "wall s = unlearning steps only (median over seeds).",
    "",
    markdown_table(rows, refs),
    "",
    "## Trade-off summary",
    "",
    tradeoff_summary(rows, payload["before"]["model_utility"]),
    "",
    "## Audits at the best-FQ learning rate",
    "",
    "Forget-set exact memorization and extraction strength (EOS left out; 1 = verbatim), "
    "and PrivLeak (%) of each membership-inference score against the oracle (0 = like the "
    "oracle); Ref = the Reference attack with the oracle as reference model.",
    "",
    audits_at_best_fq(rows, payload["before"]["model_utility"]),
    "",
  ]
  for loss in sorted({r["loss"] for r in rows}):
    md += [f"## {loss}", "", lr_grid(rows, loss), ""]
  if "forget_attribution" in payload["before"]:
    md += [
      f"## Utility at equal forgetting (forget attribution <= {EQUAL_FORGETTING:g})",
      "",
      equal_forgetting(rows),
      "",
    ]
    for loss in sorted({r["loss"] for r in rows}):
      md += [f"## {loss}: attribution", "", lr_grid(rows, loss, ATTRIBUTION_GRID_KEYS), ""]
  md += [
    "## Hyperparameters",
    "",
    "```",
    json.dumps(setup, indent=1),
    "```",
  ]
  (out / "results.md").write_text("\n".join(md) + "\n")
