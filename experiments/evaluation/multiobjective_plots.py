"""PNG plots of the multi-objective jobs: metric bars, trade-off scatter, conflict over training."""

from __future__ import annotations

import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

COLORS = {
  "joint": "black",
  "alternating": "tab:gray",
  "dualoptim": "tab:blue",
  "dualoptim_plus": "tab:red",
  "dualoptim_plus_8bit": "tab:orange",
  "dualoptim_plus_muon": "tab:green",
}


def _legend(ax) -> None:
  if ax.get_legend_handles_labels()[0]:  # nothing plotted (e.g. a 2-step run): no legend
    ax.legend(fontsize=7)


def _label(row: dict, many_lrs: bool) -> str:
  return f"{row['optimizer']} (lr {row['lr']:g})" if many_lrs else row["optimizer"]


def bars(rows: list[dict], labels: list[str], path: pathlib.Path, title: str) -> None:
  """Grouped bars: one group per column label, one bar per (optimizer, lr); std as error bars."""
  many = len({r["lr"] for r in rows}) > 1
  fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(labels) * max(len(rows), 3) / 6, 4))
  width = 0.8 / max(len(rows), 1)
  x = np.arange(len(labels))
  for i, r in enumerate(rows):
    means = [r[k][0] for k in labels]
    stds = [r[k][1] for k in labels]
    hatch = "//" if many and r["lr"] != rows[0]["lr"] else None
    ax.bar(
      x + (i - (len(rows) - 1) / 2) * width,
      means,
      width,
      yerr=stds,
      capsize=2,
      hatch=hatch,
      color=COLORS.get(r["optimizer"], "tab:purple"),
      label=_label(r, many),
    )
  ax.set_xticks(x, labels)
  ax.set_ylim(0, 1)
  ax.set_title(title)
  ax.legend(fontsize=7, ncol=2)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def tradeoff(rows: list[dict], y: str, xs: list[str], path: pathlib.Path, title: str) -> None:
  """``y`` against each of ``xs`` (one panel each), a point per (optimizer, lr) with std bars."""
  many = len({r["lr"] for r in rows}) > 1
  fig, axes = plt.subplots(1, len(xs), figsize=(5 * len(xs), 4), squeeze=False)
  for ax, xk in zip(axes[0], xs, strict=True):
    for r in rows:
      ax.errorbar(
        r[xk][0],
        r[y][0],
        xerr=r[xk][1],
        yerr=r[y][1],
        marker="o",
        capsize=2,
        color=COLORS.get(r["optimizer"], "tab:purple"),
        label=_label(r, many),
      )
    ax.set_xlabel(xk)
    ax.set_ylabel(y)
    ax.set_xlim(-0.05, 1.05)
    ax.set_ylim(-0.05, 1.05)
  axes[0, 0].legend(fontsize=7)
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def _first_runs(runs: list[dict]) -> list[dict]:
  """One run per optimizer: the first seed at the middle learning rate."""
  out = []
  for opt in dict.fromkeys(r["optimizer"] for r in runs):
    rs = [r for r in runs if r["optimizer"] == opt]
    lrs = sorted({r["lr"] for r in rs})
    out.append(min((r for r in rs if r["lr"] == lrs[len(lrs) // 2]), key=lambda r: r["seed"]))
  return out


def conflict(runs: list[dict], path: pathlib.Path) -> None:
  """Gradient cosines (every optimizer), delta cosines and base shares (DualOptim+) over steps."""
  chosen = _first_runs(runs)
  kinds = [
    ("grad_cosine", "gradient cosine"),
    ("delta_cosine", "delta cosine"),
    ("base_share", "base share"),
  ]
  names = {
    k: list(dict.fromkeys(n for r in chosen for d in r["diagnostics"] for n in d.get(k, {})))
    for k, _ in kinds
  }
  kinds = [(k, t) for k, t in kinds if names[k]]
  cols = max(len(names[k]) for k, _ in kinds)
  fig, axes = plt.subplots(len(kinds), cols, figsize=(4 * cols, 3 * len(kinds)), squeeze=False)
  for i, (kind, title) in enumerate(kinds):
    for j, name in enumerate(names[kind]):
      ax = axes[i, j]
      for r in chosen:
        pts = [(d["step"], d[kind][name]) for d in r["diagnostics"] if kind in d]
        if pts:
          xs, ys = zip(*pts, strict=True)
          ax.plot(
            xs, ys, marker=".", color=COLORS.get(r["optimizer"], "tab:purple"), label=r["optimizer"]
          )
      ax.axhline(0.0, color="k", lw=0.5)
      ax.set_title(f"{title}: {name}", fontsize=9)
      ax.set_xlabel("step")
    for j in range(len(names[kind]), cols):
      axes[i, j].axis("off")
  _legend(axes[0, 0])
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def loss_curves(runs: list[dict], names: list[str], path: pathlib.Path, window: int = 20) -> None:
  """Each objective's training loss (moving average over ``window`` of its steps)."""
  chosen = _first_runs(runs)
  fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.5), squeeze=False)
  for ax, name in zip(axes[0], names, strict=True):
    for r in chosen:
      pts = [(e["step"], e["losses"][name]) for e in r["log"] if name in e["losses"]]
      if len(pts) >= window:
        xs, ys = (np.array(v) for v in zip(*pts, strict=True))
        smooth = np.convolve(ys, np.ones(window) / window, mode="valid")
        ax.plot(
          xs[window - 1 :],
          smooth,
          color=COLORS.get(r["optimizer"], "tab:purple"),
          label=r["optimizer"],
          lw=1.2,
        )
    ax.set_title(f"{name} loss")
    ax.set_xlabel("step")
    ax.set_yscale("log")
  _legend(axes[0, 0])
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)
