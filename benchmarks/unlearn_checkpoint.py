"""Unlearning on loaded checkpoints: optimizer-state bytes (full vs LoRA) and step wall time.

Two tables, written to JSON as well::

  python -m benchmarks.unlearn_checkpoint --out results/unlearn_checkpoint.json

1. State bytes each optimizer holds for full unlearning vs rank-8 LoRA adapters (all
   projections), from shapes alone (nothing allocated): the ``hf_tiny`` llama checkpoint and,
   built abstractly from their published configs, Phi-1.5 (the DualOptim+ paper's TOFU model)
   and Llama-2-7B.
2. Wall time per unlearning step (NPO+GD, DualOptim+; the job's compiled step through
   :class:`~experiments.loops.unlearn.Unlearner`, steady state after the first step, batch 4
   forget / 4 retain of generated QA, max_len 96): the in-house decoder at the ``hf_tiny``
   llama's shape vs the loaded llama in float32, bfloat16, with LoRA rank 8 and on a 4x2 mesh
   (simulated on CPU: it shows the sharded program runs, not a speed-up). The models take
   turns within every repeat (a shared machine slows them alike); median and best of the
   repeats' mean step times.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform

import jax
from flax import nnx

from experiments import hf
from experiments.data import synthetic
from experiments.loops import losses, optimizers
from experiments.loops.unlearn import UnlearnBatches, Unlearner
from experiments.models import setup as model_setup
from experiments.models.decoder import DecoderLM, ModelConfig
from experiments.models.hf.config import arch_from_dict

OPTIMIZERS = ("adamw", "dualoptim", "dualoptim_plus", "dualoptim_plus_8bit")
# Published configs (the sizes that matter for state bytes).
CONFIGS = {
  "Phi-1.5 (1.4B)": dict(
    model_type="phi", vocab_size=51200, hidden_size=2048, intermediate_size=8192,
    num_hidden_layers=24, num_attention_heads=32, partial_rotary_factor=0.5,
  ),
  "Llama-2-7B": dict(
    model_type="llama", vocab_size=32000, hidden_size=4096, intermediate_size=11008,
    num_hidden_layers=32, num_attention_heads=32,
  ),
}  # fmt: skip


def state_rows(hf_tiny: pathlib.Path) -> list[dict]:
  """Per model: parameters, adapters, and each optimizer's bytes for both."""
  models = {"hf_tiny llama": lambda: hf.add_lora(hf.load_model(hf_tiny / "llama"), 8)}
  for name, raw in CONFIGS.items():
    arch = arch_from_dict(raw)
    models[name] = lambda a=arch: nnx.eval_shape(
      lambda: hf.add_lora(hf.CausalLM(a, rngs=nnx.Rngs(0)), 8)
    )
  rows = []
  for name, build in models.items():
    model = build()
    base, lora = nnx.state(model, hf.BASE), nnx.state(model, nnx.LoRAParam)
    count = lambda t: sum(int(x.size) for x in jax.tree.leaves(t))
    row = {"model": name, "params": count(base), "lora_r8_params": count(lora)}
    for opt in OPTIMIZERS:
      row[opt] = {
        "full": optimizers.planned_state_bytes(opt, optimizers.Recipe(), base),
        "lora_r8": optimizers.planned_state_bytes(opt, optimizers.Recipe(), lora),
      }
    rows.append(row)
  return rows


def _timer(setup: model_setup.ModelSetup, steps: int):
  """``() -> ms per step`` of one unlearning run (compiled once, on the first call)."""
  corpus = synthetic.generate("forget05", n_authors=4)
  unlearner = Unlearner(setup.apply, optimizers.Recipe(), steps, 1)

  def run() -> float:
    batches = UnlearnBatches(corpus, setup.encoder, losses.roles_for("NPO", "GD"), 4, 0)
    res = unlearner.run(
      setup.params, setup.params, setup.placed(batches), "dualoptim_plus", "NPO", "GD", 1e-5,
      frozen=setup.frozen,
    )  # fmt: skip
    return 1e3 * res.wall_s / steps

  return run


def time_rows(hf_tiny: pathlib.Path, steps: int, repeats: int) -> list[dict]:
  """Wall time per unlearning step of each model variant."""
  llama = hf_tiny / "llama"
  variants = {
    "hf llama float32": model_setup.Checkpoint(llama),
    "hf llama bfloat16": model_setup.Checkpoint(llama, param_dtype="bfloat16"),
    "hf llama LoRA r8": model_setup.Checkpoint(llama, lora_rank=8),
  }
  if len(jax.devices()) >= 8:
    variants["hf llama float32, mesh 4x2"] = model_setup.Checkpoint(llama, mesh=(4, 2))
  setups = {k: model_setup.from_checkpoint(v, 96) for k, v in variants.items()}
  # The in-house decoder at the same shape, fed the same token batches.
  ref = setups["hf llama float32"]
  cfg = ModelConfig(vocab_size=512, d_model=64, n_layers=2, n_heads=4, d_ff=128, max_len=96)
  graphdef, params = nnx.split(DecoderLM(cfg, nnx.Rngs(0)))
  inhouse = model_setup.ModelSetup(ref.tok, ref.encoder, graphdef, params, None, 512, "")
  setups = {"in-house, llama-tiny shape": inhouse, **setups}
  timers = {name: _timer(setup, steps) for name, setup in setups.items()}
  times: dict[str, list[float]] = {name: [] for name in setups}
  for _ in range(repeats + 1):  # the first round compiles: dropped
    for name, timer in timers.items():
      times[name].append(timer())
  rows = []
  for name, setup in setups.items():
    trained = sum(int(x.size) for x in jax.tree.leaves(setup.params))
    ms = sorted(times[name][1:])
    row = {"model": name, "params": setup.n_params, "trained": trained}
    rows.append({**row, "ms_median": ms[len(ms) // 2], "ms_best": ms[0], "ms_all": ms})
  return rows


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  default = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "hf_tiny"
  parser.add_argument("--hf-tiny", type=pathlib.Path, default=default)
  parser.add_argument("--steps", type=int, default=30, help="unlearning steps per timed run")
  parser.add_argument("--repeats", type=int, default=5, help="timed runs per model")
  parser.add_argument("--out", type=pathlib.Path, default=None, help="JSON output file")
  parser.add_argument("--cpu-devices", type=int, default=8, help="simulated CPU devices (mesh)")
  args = parser.parse_args(argv)
  jax.config.update("jax_num_cpu_devices", args.cpu_devices)  # before JAX starts its backend
  states, times = state_rows(args.hf_tiny), time_rows(args.hf_tiny, args.steps, args.repeats)
  print("optimizer state bytes: full unlearning / LoRA rank 8 (all projections)")
  for r in states:
    cells = "  ".join(f"{o} {r[o]['full']:,} / {r[o]['lora_r8']:,}" for o in OPTIMIZERS)
    print(f"{r['model']}: {r['params']:,} params, {r['lora_r8_params']:,} adapter params; {cells}")
  print(f"\nms per unlearning step (NPO+GD, dualoptim_plus, {jax.devices()[0].platform})")
  for r in times:
    what = f"{r['params']:>9,d} params ({r['trained']:,} trained)"
    print(f"{r['model']:30s} {what}  median {r['ms_median']:7.1f}  best {r['ms_best']:7.1f}")
  if args.out:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"platform": platform.platform(), "devices": len(jax.devices()), **vars(args)}
    meta = {k: str(v) if isinstance(v, pathlib.Path) else v for k, v in meta.items()}
    args.out.write_text(json.dumps({"meta": meta, "state": states, "time": times}, indent=1))


if __name__ == "__main__":
  main()
