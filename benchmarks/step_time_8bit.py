"""Step time and state bytes of DualOptim+ 8-bit against float32 DualOptim+ and AdamW.

Prints a table and writes JSON::

  python -m benchmarks.step_time_8bit --out results/step_time_8bit.json

One process, one parameter pytree (``--leaves`` matrices of ``--dim`` x
``--dim`` float32, 64M parameters by default), one jitted step per optimizer
(gradient in, parameters and state donated, static retain objective), timed
as the median of ``--steps`` steps after a warm-up step.
"""

from __future__ import annotations

import argparse
import gc
import json
import pathlib
import statistics
import time

import jax
import jax.numpy as jnp
import optax

import dualoptim_jax as do


def measure(tx, params, grads, steps: int, objective) -> dict:
  state = tx.init(params)
  state_bytes = sum(x.nbytes for x in jax.tree.leaves(state))

  def step(p, s, g):
    extra = {} if objective is None else {"objective": objective}
    u, s = tx.update(g, s, p, **extra)
    return optax.apply_updates(p, u), s

  step = jax.jit(step, donate_argnums=(0, 1))
  p = jax.tree.map(jnp.copy, params)
  p, state = step(p, state, grads)
  jax.block_until_ready((p, state))
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    p, state = step(p, state, grads)
    jax.block_until_ready((p, state))
    times.append(time.perf_counter() - start)
  del p, state
  gc.collect()
  return {"median_s": statistics.median(times), "min_s": min(times), "state_bytes": state_bytes}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--leaves", type=int, default=16)
  parser.add_argument("--dim", type=int, default=2048)
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--only", nargs="*", default=None, help="subset of optimizer names")
  parser.add_argument(
    "--out", type=pathlib.Path, default=pathlib.Path("results/step_time_8bit.json")
  )
  args = parser.parse_args()
  shape = (args.dim, args.dim)
  params = {f"w{i}": jnp.zeros(shape, jnp.float32) for i in range(args.leaves)}
  key = jax.random.key(0)
  grads = {k: jax.random.normal(jax.random.fold_in(key, i), shape) for i, k in enumerate(params)}
  n = args.leaves * args.dim * args.dim
  optimizers = {
    "dualoptim_plus (fp32)": (do.dualoptim_plus(1e-3), do.RETAIN),
    "dualoptim_plus_8bit": (do.dualoptim_plus_8bit(1e-3), do.RETAIN),
    "optax.adamw": (optax.adamw(1e-3), None),
    "adamw_8bit": (do.adamw_8bit(1e-3), None),
  }
  rows = {}
  for name, (tx, obj) in optimizers.items():
    if args.only and name not in args.only:
      continue
    rows[name] = measure(tx, params, grads, args.steps, obj)
    rows[name]["bytes_per_param"] = rows[name]["state_bytes"] / n
    print(name, rows[name], flush=True)
  ref = rows.get("dualoptim_plus (fp32)", {}).get("median_s")
  print(f"\n{n / 1e6:.0f}M params ({args.leaves} x {shape}), static objective, donated")
  print("| optimizer | median step s | ns/param | state B/param | vs fp32 DualOptim+ |")
  print("|---|---|---|---|---|")
  for name, r in rows.items():
    ratio = f"{r['median_s'] / ref:.2f}x" if ref else "-"
    print(
      f"| {name} | {r['median_s']:.3f} | {r['median_s'] / n * 1e9:.1f} | "
      f"{r['bytes_per_param']:.3f} | {ratio} |"
    )
  args.out.parent.mkdir(parents=True, exist_ok=True)
  args.out.write_text(json.dumps({"params": n, "shape": shape, "rows": rows}, indent=1))
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
