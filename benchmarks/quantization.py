"""Blockwise 8-bit quantization: encode/decode speed and round-trip error (block 256).

Prints a table and writes JSON::

  python -m benchmarks.quantization --out results/quantization.json

Errors are relative L2 ``|decode(encode(x)) - x| / |x|`` on standard-normal data
(signed map) and squared standard-normal data (unsigned map); bitsandbytes
reports 1.08e-2 and 6.4e-3 on such data. Speeds are ns per element under
``jax.jit`` (best of ``--repeats``), including the per-block absmax; the
``searchsorted`` row is the binary-search encode the table replaces.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import time

import jax
import jax.numpy as jnp

from dualoptim_jax import quantization
from dualoptim_jax._src import quantization as quant_src


def best_seconds(fn, *args, repeats: int) -> float:
  out = fn(*args)
  jax.block_until_ready(out)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return min(times)


def searchsorted_encode(x: jax.Array, block_size: int) -> jax.Array:
  """The per-element binary search the 65,536-entry table replaces (same codes)."""
  blocks = x.reshape(*x.shape[:-1], -1, block_size)
  absmax = jnp.max(jnp.abs(blocks), axis=-1, keepdims=True)
  values = quantization.dynamic_map(True)
  mids = (values[:-1] + values[1:]) / 2
  index = jnp.searchsorted(mids, blocks / jnp.where(absmax > 0, absmax, 1), side="left")
  return (index.astype(jnp.int32) - 128).astype(jnp.int8).reshape(x.shape)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rows", type=int, default=4096)
  parser.add_argument("--cols", type=int, default=4096)
  parser.add_argument("--block-size", type=int, default=256)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("results/quantization.json"))
  args = parser.parse_args()
  b = args.block_size
  x = jax.random.normal(jax.random.key(0), (args.rows, args.cols), jnp.float32)
  n = x.size
  rows = []
  for name, data, signed in (("signed, N(0,1)", x, True), ("unsigned, N(0,1)^2", x * x, False)):
    enc = jax.jit(lambda v, s=signed: quantization.quantize_blockwise(v, signed=s, block_size=b))
    dec = jax.jit(lambda q: quantization.dequantize_blockwise(q, block_size=b))
    q = enc(data)
    err = float(jnp.linalg.norm(dec(q) - data) / jnp.linalg.norm(data))
    rows.append(
      {
        "data": name,
        "relative_l2_error": err,
        "bitsandbytes_error": 1.08e-2 if signed else 6.4e-3,
        "encode_ns_per_element": best_seconds(enc, data, repeats=args.repeats) / n * 1e9,
        "decode_ns_per_element": best_seconds(dec, q, repeats=args.repeats) / n * 1e9,
      }
    )
  search = jax.jit(lambda v: searchsorted_encode(v, b))
  same = bool(jnp.all(search(x) == quantization.quantize_blockwise(x, signed=True).codes))
  search_ns = best_seconds(search, x, repeats=args.repeats) / n * 1e9
  encode_only = jax.jit(lambda v: quant_src._encode_normalised(v, True))
  y = jnp.clip(x / 4, -1, 1)
  table_ns = best_seconds(encode_only, y, repeats=args.repeats) / n * 1e9

  print(f"{n:,} float32 elements, block {b}, {jax.devices()[0].device_kind}")
  print("| data | rel. L2 error | bitsandbytes | ratio | encode ns/el | decode ns/el |")
  print("|---|---|---|---|---|---|")
  for r in rows:
    ratio = r["relative_l2_error"] / r["bitsandbytes_error"]
    print(
      f"| {r['data']} | {r['relative_l2_error']:.4e} | {r['bitsandbytes_error']:.2e} | "
      f"{ratio:.3f} | {r['encode_ns_per_element']:.2f} | {r['decode_ns_per_element']:.2f} |"
    )
  print(f"table lookup alone (already normalised): {table_ns:.2f} ns/el")
  print(f"searchsorted encode (same codes: {same}): {search_ns:.2f} ns/el")
  result = {
    "elements": n,
    "block_size": b,
    "device": jax.devices()[0].device_kind,
    "machine": platform.processor() or platform.machine(),
    "rows": rows,
    "table_lookup_ns_per_element": table_ns,
    "searchsorted_encode_ns_per_element": search_ns,
    "searchsorted_codes_identical": same,
  }
  args.out.parent.mkdir(parents=True, exist_ok=True)
  args.out.write_text(json.dumps(result, indent=1))
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
