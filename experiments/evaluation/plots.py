"""PNG plots: unlearning loss curves, the forget-vs-utility trade-off, the losses compared."""

from __future__ import annotations

import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from experiments.evaluation.report import aggregate, summary_row  # noqa: E402

_COLORS = {
  "adamw": "tab:gray",
  "dualoptim": "tab:blue",
  "dualoptim_plus": "tab:red",
  "dualoptim_plus_8bit": "tab:orange",
  "dualoptim_plus_muon": "tab:green",
}


def _color(opt: str) -> str:
  return _COLORS.get(opt, "tab:purple")


def loss_curves(runs: list[dict], path: pathlib.Path) -> None:
  """Forget and retain loss per step: a panel per loss pair; first seed, median lr."""
  loss_names = sorted({r["loss"] for r in runs})
  fig, axes = plt.subplots(2, len(loss_names), figsize=(5 * len(loss_names), 6), squeeze=False)
  for j, loss in enumerate(loss_names):
    for opt in dict.fromkeys(r["optimizer"] for r in runs if r["loss"] == loss):
      rs = [r for r in runs if r["loss"] == loss and r["optimizer"] == opt]
      lrs = sorted({r["lr"] for r in rs})
      lr = lrs[len(lrs) // 2]
      run = min((r for r in rs if r["lr"] == lr), key=lambda r: r["seed"])
      for i, side in enumerate(("forget", "retain")):
        pts = [(e["step"], e["loss"]) for e in run["log"] if e["objective"] == side]
        if pts:
          x, y = zip(*pts, strict=True)
          axes[i, j].plot(x, y, color=_color(opt), label=f"{opt} (lr {lr:g})", lw=1.2)
    for i, side in enumerate(("forget", "retain")):
      axes[i, j].set_title(f"{loss}: {side} loss")
      axes[i, j].set_xlabel("step")
    axes[0, j].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def tradeoff(runs: list[dict], references: dict[str, dict], path: pathlib.Path) -> None:
  """Forget quality (log) and forget efficacy against model utility; one curve per optimizer.

  Each point is one learning rate (mean over seeds, error bars = std); the
  points of an optimizer, ordered by learning rate, form its trade-off curve.
  """
  rows = aggregate(runs)
  loss_names = sorted({r["loss"] for r in rows})
  fig, axes = plt.subplots(2, len(loss_names), figsize=(5 * len(loss_names), 7.5), squeeze=False)
  for j, loss in enumerate(loss_names):
    for opt in dict.fromkeys(r["optimizer"] for r in rows if r["loss"] == loss):
      rs = sorted(
        (r for r in rows if r["loss"] == loss and r["optimizer"] == opt), key=lambda r: r["lr"]
      )
      mu = np.array([r["model_utility"][0] for r in rs])
      mu_s = np.array([r["model_utility"][1] for r in rs])
      for i, key in enumerate(("forget_quality", "forget_efficacy")):
        y = np.array([r[key][0] for r in rs])
        ys = np.array([r[key][1] for r in rs])
        axes[i, j].errorbar(
          mu,
          y,
          xerr=mu_s,
          yerr=ys,
          color=_color(opt),
          marker="o",
          ms=4,
          capsize=2,
          lw=1.2,
          label=opt,
        )
    for name, ev in references.items():
      marker = "*" if "oracle" in name else "s"
      for i, key in enumerate(("forget_quality", "forget_efficacy")):
        if ev.get(key) is not None:
          axes[i, j].scatter(
            [ev["model_utility"]], [ev[key]], marker=marker, color="k", s=50, label=name, zorder=5
          )
    axes[0, j].set_yscale("log")
    axes[0, j].set_title(f"{loss}: forget quality vs utility")
    axes[1, j].set_title(f"{loss}: forget efficacy vs utility")
    for i in range(2):
      axes[i, j].set_xlabel("model utility")
    axes[0, j].set_ylabel("forget quality (KS p, log)")
    axes[1, j].set_ylabel("forget efficacy")
    axes[0, j].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


_LOSS_COLORS = ("tab:red", "tab:blue", "tab:green", "tab:purple", "tab:brown", "tab:olive")


def loss_comparison(runs: list[dict], references: dict[str, dict], path: pathlib.Path) -> None:
  """Losses compared per optimizer: forget quality (log) and Min-K%++ AUC against model utility.

  One column per optimizer, one curve per loss (points = learning rates, mean over seeds,
  error bars = std); the fine-tuned model (square) and the oracle (star) for reference; the
  dotted line is the oracle's AUC (PrivLeak 0; below it = over-unlearned).
  """
  rows = aggregate(runs)
  opts = list(dict.fromkeys(r["optimizer"] for r in rows))
  losses = sorted({r["loss"] for r in rows})
  colors = {loss: _LOSS_COLORS[i % len(_LOSS_COLORS)] for i, loss in enumerate(losses)}
  keys = ("forget_quality", "mia_auc")
  fig, axes = plt.subplots(2, len(opts), figsize=(4.2 * len(opts), 7), squeeze=False)
  for j, opt in enumerate(opts):
    for loss in losses:
      rs = sorted(
        (r for r in rows if r["loss"] == loss and r["optimizer"] == opt), key=lambda r: r["lr"]
      )
      if not rs:
        continue
      mu = np.array([r["model_utility"][0] for r in rs])
      mu_s = np.array([r["model_utility"][1] for r in rs])
      for i, key in enumerate(keys):
        y = np.array([r[key][0] for r in rs])
        ys = np.array([r[key][1] for r in rs])
        axes[i, j].errorbar(
          mu,
          y,
          xerr=mu_s,
          yerr=ys,
          color=colors[loss],
          marker="o",
          ms=4,
          capsize=2,
          lw=1.2,
          label=loss,
        )
    for name, ev in references.items():
      flat = summary_row(ev)
      marker = "*" if "oracle" in name else "s"
      if "oracle" in name and not np.isnan(flat["mia_auc"]):  # PrivLeak 0 lies on this line
        axes[1, j].axhline(flat["mia_auc"], color="k", ls=":", lw=0.8)
      for i, key in enumerate(keys):
        if not np.isnan(flat[key]):
          axes[i, j].scatter(
            [flat["model_utility"]],
            [flat[key]],
            marker=marker,
            color="k",
            s=50,
            label=name,
            zorder=5,
          )
    axes[0, j].set_yscale("log")
    axes[0, j].set_title(f"{opt}: forget quality vs utility", fontsize=9)
    axes[1, j].set_title(f"{opt}: Min-K%++ AUC vs utility", fontsize=9)
    axes[0, j].set_ylabel("forget quality (KS p, log)")
    axes[1, j].set_ylabel("MIA AUC (forget vs holdout)")
    for i in range(2):
      axes[i, j].set_xlabel("model utility")
    axes[0, j].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


_LOSS_STYLES = ("-", "--", ":", "-.")


def attribution(runs: list[dict], references: dict[str, dict], path: pathlib.Path) -> None:
  """Owner attribution, Tug-of-War and fluency of the forget answers against model utility.

  One curve per (loss, optimizer): colour = optimizer, line style = loss; points = learning
  rates (mean over seeds, error bars = std); the fine-tuned model (square) and the oracle
  (star) for reference.
  """
  rows = aggregate(runs)
  keys = (
    ("forget_attribution", "forget attribution (P forget owner)"),
    ("tug_of_war", "Tug-of-War (ROUGE-L vs oracle)"),
    ("fluency", "fluency (token entropy, forget answers)"),
  )
  styles = {loss: _LOSS_STYLES[i % 4] for i, loss in enumerate(sorted({r["loss"] for r in rows}))}
  fig, axes = plt.subplots(1, len(keys), figsize=(5.2 * len(keys), 4.4), squeeze=False)
  for loss, opt in dict.fromkeys((r["loss"], r["optimizer"]) for r in rows):
    rs = sorted(
      (r for r in rows if (r["loss"], r["optimizer"]) == (loss, opt)), key=lambda r: r["lr"]
    )
    mu, mu_s = (np.array([r["model_utility"][i] for r in rs]) for i in (0, 1))
    for ax, (key, _) in zip(axes[0], keys, strict=True):
      y, ys = (np.array([r[key][i] for r in rs]) for i in (0, 1))
      ax.errorbar(
        mu,
        y,
        xerr=mu_s,
        yerr=ys,
        color=_color(opt),
        ls=styles[loss],
        marker="o",
        ms=4,
        capsize=2,
        lw=1.2,
        label=f"{loss} {opt}",
      )
  for name, ev in references.items():
    flat = summary_row(ev)
    for ax, (key, _) in zip(axes[0], keys, strict=True):
      if not np.isnan(flat[key]):
        marker = "*" if "oracle" in name else "s"
        ax.scatter(
          [flat["model_utility"]], [flat[key]], marker=marker, color="k", s=50, label=name, zorder=5
        )
  for ax, (_, label) in zip(axes[0], keys, strict=True):
    ax.set_xlabel("model utility")
    ax.set_ylabel(label)
  axes[0, 0].legend(fontsize=6)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)
