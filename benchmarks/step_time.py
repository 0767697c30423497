"""Step time and state bytes: optax.adamw, DualOptim, DualOptim+ and DualOptim+ 8-bit.

One process, one parameter pytree per size (four float32 matrices of width
4096), one plain ``jax.jit`` step per optimizer and objective mode with the
params and the optimizer state donated (gradients are a fixed input), steps
alternating forget and retain. The optimizers are interleaved within every
repeat, so a noisy (shared) machine slows them alike; the reported time is the
median over repeats of the mean step time of one forget+retain cycle.

Objective modes:

* ``static``: ``objective=`` a Python int (one compiled program per objective,
  as a loop that knows its batch's objective runs).
* ``traced``: no ``objective=``: the built-in alternation picks it in-graph
  from the state's step count (one program for both objectives).

Run (docs/guides/performance.md's table comes from the first command)::

  python -m benchmarks.step_time --sizes 64M --repeats 7 --out results/step_time_64m.json
  python -m benchmarks.step_time --sizes 16M,64M --out results/step_time.json
  python -m benchmarks.step_time --sizes 128M --modes static   # one mode at a time: ~10 GB
  python -m benchmarks.step_time --sizes 1M --repeats 2   # a quick smoke run

It runs on whatever backend JAX picks (CPU here; on a GPU it reports GPU times).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import optax

import dualoptim_jax as do

WIDTH = 4096
LEAVES = 4
BYTE_FLOOR = {"adamw": 28, "dualoptim": 28, "dualoptim_plus": 44, "dualoptim_plus_8bit": 20}


def optimizers() -> dict:
  """The optimizers compared, all with lr 1e-4 and weight decay 0.01, F/R alternating."""
  kw = dict(weight_decay=0.01, forget_steps=1, retain_steps=1)
  out = {
    "adamw": optax.adamw(1e-4, b1=0.9, b2=0.95, weight_decay=0.01),
    "dualoptim": do.dualoptim(1e-4, **kw),
    "dualoptim_plus": do.dualoptim_plus(1e-4, **kw),
  }
  if hasattr(do, "dualoptim_plus_8bit"):
    out["dualoptim_plus_8bit"] = do.dualoptim_plus_8bit(1e-4, **kw)
  return out


def parse_size(text: str) -> int:
  text = text.strip().upper()
  scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1], 1)
  return int(float(text.rstrip("KMG")) * scale)


def make_params(n: int) -> dict:
  rows = max(1, n // (LEAVES * WIDTH))
  return {
    f"w{i}": jax.jit(lambda i=i: jnp.full((rows, WIDTH), 0.01 * (i + 1), jnp.float32))()
    for i in range(LEAVES)
  }


def make_grads(params: dict) -> dict:
  def grad(p, i):
    k = jnp.arange(p.size, dtype=jnp.float32).reshape(p.shape)
    return 1e-3 * jnp.sin(k * 0.37 + i)

  return {k: jax.jit(grad)(p, i) for i, (k, p) in enumerate(params.items())}


class Runner:
  """One optimizer in one objective mode: its compiled step(s), params and state."""

  def __init__(self, tx, params: dict, grads: dict, mode: str):
    self.grads = grads
    self.params = jax.tree.map(jnp.copy, params)
    self.state = tx.init(self.params)
    self.state_bytes = sum(x.nbytes for x in jax.tree.leaves(self.state))

    def step(p, s, g, objective=None):
      extra = {} if objective is None else {"objective": objective}
      u, s = tx.update(g, s, p, **extra)
      return optax.apply_updates(p, u), s

    if mode == "static":
      jitted = jax.jit(step, donate_argnums=(0, 1), static_argnums=(3,))
      self.steps = [
        lambda p, s, g: jitted(p, s, g, do.FORGET),
        lambda p, s, g: jitted(p, s, g, do.RETAIN),
      ]
    else:
      jitted = jax.jit(step, donate_argnums=(0, 1))
      self.steps = [jitted, jitted]
    self.cycle()  # compile and warm up both objectives

  def cycle(self) -> float:
    """One forget and one retain step; returns the mean step time in seconds."""
    t0 = time.perf_counter()
    for f in self.steps:
      self.params, self.state = f(self.params, self.state, self.grads)
    jax.block_until_ready((self.params, self.state))
    return (time.perf_counter() - t0) / len(self.steps)


def bench_size(n: int, names: list[str], modes: list[str], repeats: int) -> list[dict]:
  params = make_params(n)
  grads = make_grads(params)
  n_params = sum(p.size for p in params.values())
  txs = {k: v for k, v in optimizers().items() if k in names}
  runners = {(k, m): Runner(tx, params, grads, m) for m in modes for k, tx in txs.items()}
  del params
  times = {key: [] for key in runners}
  for _ in range(repeats):
    for key, r in runners.items():  # interleaved: every optimizer once per repeat
      times[key].append(r.cycle())
  rows = []
  for (name, mode), ts in times.items():
    med = statistics.median(ts)
    base = statistics.median(times[("adamw", mode)]) if ("adamw", mode) in times else None
    rows.append(
      {
        "size": n_params,
        "optimizer": name,
        "objective": mode,
        "median_ms": 1e3 * med,
        "min_ms": 1e3 * min(ts),
        "max_ms": 1e3 * max(ts),
        "repeats": len(ts),
        "ratio_to_adamw": med / base if base else None,
        "state_bytes_per_param": runners[(name, mode)].state_bytes / n_params,
        "byte_floor_ratio": BYTE_FLOOR.get(name, float("nan")) / BYTE_FLOOR["adamw"],
      }
    )
  return rows


def conditions() -> dict:
  dev = jax.devices()[0]
  return {
    "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    "jax": jax.__version__,
    "optax": optax.__version__,
    "backend": jax.default_backend(),
    "device": getattr(dev, "device_kind", str(dev)),
    "devices": jax.device_count(),
    "cpu_count": os.cpu_count(),
    "machine": platform.machine(),
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
    "loadavg": os.getloadavg() if hasattr(os, "getloadavg") else None,
  }


def table(rows: list[dict]) -> str:
  head = "| params | objective | optimizer | median ms/step | ratio to adamw | state B/param |"
  lines = [head, "|---:|---|---|---:|---:|---:|"]
  for r in rows:
    ratio = "" if r["ratio_to_adamw"] is None else f"{r['ratio_to_adamw']:.2f}"
    lines.append(
      f"| {r['size'] / 2**20:.0f}M | {r['objective']} | {r['optimizer']} | "
      f"{r['median_ms']:.1f} | {ratio} | {r['state_bytes_per_param']:.2f} |"
    )
  return "\n".join(lines)


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--sizes", default="16M,64M,128M", help="comma list, e.g. 16M,64M")
  parser.add_argument("--optimizers", default="adamw,dualoptim,dualoptim_plus,dualoptim_plus_8bit")
  parser.add_argument("--modes", default="static,traced")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--out", default="results/step_time.json")
  args = parser.parse_args(argv)
  names = args.optimizers.split(",")
  modes = args.modes.split(",")
  start = conditions()
  rows = []
  for size in args.sizes.split(","):
    size_rows = bench_size(parse_size(size), names, modes, args.repeats)
    print(table(size_rows), flush=True)
    rows += size_rows
  result = {"conditions": start, "loadavg_end": os.getloadavg(), "rows": rows}
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(result, indent=2))
  print(f"wrote {out}")
  return result


if __name__ == "__main__":
  main()
