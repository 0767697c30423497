"""A real LLM's training step: this project (JAX) against PyTorch + transformers, same weights.

SmolLM2-135M-Instruct (``python -m experiments.fetch smollm2-135m-instruct``; the GGUF's weights
dequantized to float32), a batch of ``--batch`` x ``--seq`` random token ids (seeded, the same on
both sides), loss = mean token cross-entropy over every next-token position. A *step* is
forward + backward + optimizer update + apply:

* JAX: ``experiments.hf.load_model(GGUF, dtype=...)``, loss as the jobs compute it
  (``dualoptim_jax.unlearning.nll_loss`` on ``model(ids, mask)`` logits with shifted targets),
  one ``jax.jit`` per configuration with the parameters and optimizer state donated.
  DualOptim+ gets a traced ``objective`` alternating forget/retain, so one program serves both.
  bfloat16 parameters get float32 moments as the jobs give them (``for_params``).
* PyTorch: ``AutoModelForCausalLM.from_pretrained(HF_FOLDER)`` of the same checkpoint converted
  once by ``python -m experiments.convert`` (cached next to the GGUF, or in ``--workdir``),
  ``torch.optim.AdamW(fused=True)``, ``model(ids, attention_mask, labels=ids).loss``; LoRA is a
  small wrapper on ``nn.Linear`` (``y = base(x) + x A B``, as ``experiments.hf.add_lora``; no
  ``peft``), so no dependency beyond torch and transformers.

Configurations are named ``SIDE-KIND-DTYPE-MODE``: SIDE ``jax``/``torch``; KIND an optimizer
(``adamw``, ``dualoptim_plus``, ``dualoptim_plus_8bit``; torch: ``adamw`` only) or ``fwd``
(loss only; torch under ``no_grad``) or ``fwdbwd`` (loss and gradients, no optimizer); DTYPE
``f32``/``bf16`` (parameters and compute); MODE ``full`` or ``lora`` (rank ``--lora-rank`` on
every projection, only the adapters trained). ``--configs`` takes names or shell patterns.

Every configuration runs in its own worker process (so its peak host memory, VmHWM, is its own:
over the whole process, and from the first step on, see :class:`Memory`),
JAX and torch workers interleaved, the order reversed on every other ``--repeats`` sweep, so a
noisy shared machine slows both sides alike; the load average at start and end is recorded.
Per configuration: median and min step seconds over ``--steps`` timed steps after ``--warmup``,
tokens/s (batch x seq / median), compile seconds (JAX: ``.lower().compile()``; torch: its first
step), peak host MiB, the step-0 loss (both sides should agree to ~1e-4 in float32), and for JAX
rows with a torch twin (torch AdamW at the same dtype and mode; ``fwd``/``fwdbwd`` alike) the
ratio torch_time / jax_time (> 1: JAX is faster). A failing worker is reported in its row.

Run from the repository root (JAX workers use this interpreter, torch workers ``--torch-python``)::

  python -m benchmarks.real_llm_step --torch-python /work/benchvenv/bin/python
  python -m benchmarks.real_llm_step --torch-python /work/benchvenv/bin/python \\
    --configs 'jax-*-f32-full,torch-*-f32-full' --repeats 3
  python -m benchmarks.real_llm_step --smoke --torch-python /work/benchvenv/bin/python  # plumbing
  python -m benchmarks.real_llm_step --list   # every configuration name

``--smoke``: a 2-layer truncation of the checkpoint (both sides load the same truncated HF
folder), batch 2 x 16, 1 warm-up and 1 timed step, written to the temporary directory.
A full run writes ``benchmarks/results/real_llm_step_<platform>.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import fnmatch
import importlib.metadata
import itertools
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

# Only the standard library at module level: the same file is the driver, the JAX worker (this
# project's interpreter) and the torch worker (an interpreter that need not have JAX).

MODEL = "smollm2-135m-instruct"
RESULTS = pathlib.Path(__file__).resolve().parent / "results"
JAX_KINDS = ("adamw", "dualoptim_plus", "dualoptim_plus_8bit", "fwd", "fwdbwd")
TORCH_KINDS = ("adamw", "fwd", "fwdbwd")
OPTIMIZERS = ("adamw", "dualoptim_plus", "dualoptim_plus_8bit")
MARK = "REAL_LLM_STEP_RESULT "  # prefixes the worker's one JSON line among library chatter
# Hyperparameters shared by both sides (the unlearning recipe's Adam decays; decay on all).
LR, B1, B2, EPS, WEIGHT_DECAY = 1e-5, 0.9, 0.95, 1e-8, 0.01
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclasses.dataclass(frozen=True)
class Config:
  side: str  # jax | torch
  kind: str  # an optimizer, fwd or fwdbwd
  dtype: str  # f32 | bf16
  mode: str  # full | lora

  @property
  def name(self) -> str:
    return f"{self.side}-{self.kind}-{self.dtype}-{self.mode}"

  @property
  def twin(self) -> str | None:
    """The torch configuration a JAX row is compared with (torch AdamW for every optimizer)."""
    if self.side != "jax":
      return None
    kind = self.kind if self.kind in ("fwd", "fwdbwd") else "adamw"
    return Config("torch", kind, self.dtype, self.mode).name

  @property
  def group(self) -> tuple:
    """Rows compared with each other, run next to each other."""
    return ({"fwd": 1, "fwdbwd": 2}.get(self.kind, 0), self.dtype, self.mode)


def every_config() -> list[Config]:
  out = []
  for side, kinds in (("jax", JAX_KINDS), ("torch", TORCH_KINDS)):
    for kind, dtype, mode in itertools.product(kinds, ("f32", "bf16"), ("full", "lora")):
      out.append(Config(side, kind, dtype, mode))
  return out


def default_configs() -> list[Config]:
  """Every optimizer at both dtypes, full and LoRA; forward and forward+backward in float32."""
  return [c for c in every_config() if c.kind in OPTIMIZERS or (c.dtype, c.mode) == ("f32", "full")]


def select(patterns: str | None) -> list[Config]:
  if not patterns:
    return default_configs()
  chosen = []
  for pattern in patterns.split(","):
    hits = [c for c in every_config() if fnmatch.fnmatchcase(c.name, pattern.strip())]
    if not hits:
      raise SystemExit(f"--configs: {pattern!r} names no configuration (see --list)")
    chosen += [c for c in hits if c not in chosen]
  return chosen


def interleave(configs: list[Config]) -> list[Config]:
  """Group by what is compared; inside a group alternate JAX and torch rows."""
  out = []
  for _, rows in itertools.groupby(sorted(configs, key=lambda c: c.group), key=lambda c: c.group):
    rows = list(rows)
    jax_rows = [c for c in rows if c.side == "jax"]
    torch_rows = [c for c in rows if c.side == "torch"]
    for pair in itertools.zip_longest(jax_rows, torch_rows):
      out += [c for c in pair if c is not None]
  return out


# ---------------------------------------------------------------------------------------------
# Workers. Each prints MARK + one JSON object and exits 0, or 1 with "error" set.


def host_memory() -> dict:
  """``VmHWM`` (peak resident set) and ``VmRSS`` of this process in MiB (Linux; else only the
  peak, from ``ru_maxrss``)."""
  out = {}
  try:
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
      key, _, value = line.partition(":")
      if key in ("VmHWM", "VmRSS"):
        out[key] = int(value.split()[0]) / 1024
  except OSError:
    import resource

    out["VmHWM"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  return out


class Memory:
  """Host memory of a worker: the whole process, and the steps alone.

  ``peak_host_mib`` is the process's peak (VmHWM) over everything: loading, compiling and the
  steps. Loading differs between the sides (the JAX side dequantizes the GGUF, torch maps a
  float32 safetensors file), so ``steps_peak_mib`` is the peak from the first step on: VmHWM
  reset to the current RSS before it (``/proc/self/clear_refs``, Linux >= 4.0; else None).
  """

  def __init__(self):
    self.setup = {}
    self.reset = False

  def steps_begin(self) -> None:
    self.setup = host_memory()
    try:
      pathlib.Path("/proc/self/clear_refs").write_text("5")
      self.reset = True
    except OSError:
      self.reset = False

  def report(self) -> dict:
    end = host_memory()
    peaks = [m["VmHWM"] for m in (self.setup, end) if m.get("VmHWM") is not None]
    return {
      "peak_host_mib": max(peaks) if peaks else None,
      "setup_peak_mib": self.setup.get("VmHWM"),
      "steps_peak_mib": end.get("VmHWM") if self.reset else None,
      "end_rss_mib": end.get("VmRSS"),
    }


def random_ids(seed: int, vocab: int, batch: int, seq: int):
  import numpy as np

  return np.random.default_rng(seed).integers(0, vocab, (batch, seq), dtype=np.int64)


def lora_a_init(seed: int, target: str, layers: int, in_features: int, rank: int):
  """The ``A`` factor ``(layers, in, rank)`` of one projection, the same on both sides.

  He-uniform over the ``(in, rank)`` fan-in as ``experiments.hf.add_lora`` draws it, but from
  numpy, so JAX and torch start from the same adapter and agree after a step too (``B`` is
  zero: at step 0 the adapted model is the base model either way).
  """
  import numpy as np

  bound = (6.0 / in_features) ** 0.5
  rng = np.random.default_rng([seed, LORA_TARGETS.index(target)])
  return rng.uniform(-bound, bound, (layers, in_features, rank)).astype(np.float32)


def run_steps(step, n_warmup: int, n_timed: int, sync) -> tuple[list[float], list[float]]:
  """Calls ``step(i)`` (returns the loss) warmup + timed times; (timed seconds, losses)."""
  times, losses = [], []
  for i in range(n_warmup + n_timed):
    start = time.perf_counter()
    loss = step(i)
    sync(loss)
    elapsed = time.perf_counter() - start
    losses.append(float(loss))
    if i >= n_warmup:
      times.append(elapsed)
  return times, losses


def jax_worker(spec: dict, memory: Memory) -> dict:
  import jax
  import jax.numpy as jnp
  import optax
  from flax import nnx

  import dualoptim_jax
  from dualoptim_jax import unlearning
  from experiments import hf
  from experiments.loops.optimizers import for_params
  from experiments.models.hf.lora import projections

  c = Config(**spec["config"])
  dtype = {"f32": jnp.float32, "bf16": jnp.bfloat16}[c.dtype]
  start = time.perf_counter()
  model = hf.load_model(spec["jax_model"], dtype=dtype)
  if c.mode == "lora":
    hf.add_lora(model, spec["lora_rank"], targets=LORA_TARGETS)
    for name, proj in projections(model):
      layers, n_in, rank = proj.lora_a.shape
      a = lora_a_init(spec["seed"], name, layers, n_in, rank)
      proj.lora_a.set_value(jnp.asarray(a, proj.lora_a.dtype))
  graphdef, params, rest = nnx.split(model, nnx.LoRAParam if c.mode == "lora" else nnx.Param, ...)
  del model
  load_s = time.perf_counter() - start
  ids = jnp.asarray(random_ids(spec["seed"], spec["vocab"], spec["batch"], spec["seq"]), jnp.int32)
  mask = jnp.ones_like(ids)

  def loss_fn(params, rest, ids, mask):
    logits = nnx.merge(graphdef, params, rest)(ids, mask)
    return unlearning.nll_loss(logits[:, :-1], ids[:, 1:], mask[:, 1:])

  state_bytes = 0
  if c.kind == "fwd":
    fn, args = jax.jit(loss_fn), (params, rest, ids, mask)
  elif c.kind == "fwdbwd":
    fn, args = jax.jit(jax.value_and_grad(loss_fn)), (params, rest, ids, mask)
  else:
    if c.kind == "adamw":
      mu = {"mu_dtype": jnp.float32} if c.dtype == "bf16" else {}
      tx = optax.adamw(LR, b1=B1, b2=B2, eps=EPS, weight_decay=WEIGHT_DECAY, **mu)
    else:
      factory = getattr(dualoptim_jax, c.kind)
      tx = factory(LR, b1=B1, b2=B2, eps=EPS, weight_decay=WEIGHT_DECAY)
    # As the jobs do: below float32 the moments are made from float32 copies (optax's adamw
    # has no nu_dtype), and the state is committed where the parameters are.
    tx = for_params(tx, params)
    opt_state = tx.init(params)
    state_bytes = sum(x.nbytes for x in jax.tree.leaves(opt_state))
    # DualOptim+ takes a traced objective: one program serves forget and retain steps.
    use_objective = c.kind != "adamw"

    def train_step(params, opt_state, rest, ids, mask, objective):
      loss, grads = jax.value_and_grad(loss_fn)(params, rest, ids, mask)
      kw = {"objective": objective} if use_objective else {}
      updates, opt_state = tx.update(grads, opt_state, params, **kw)
      return optax.apply_updates(params, updates), opt_state, loss

    fn = jax.jit(train_step, donate_argnums=(0, 1))
    args = (params, opt_state, rest, ids, mask, jnp.asarray(0, jnp.int32))
  start = time.perf_counter()
  compiled = fn.lower(*args).compile()
  compile_s = time.perf_counter() - start
  objectives = [jnp.asarray(k, jnp.int32) for k in (dualoptim_jax.FORGET, dualoptim_jax.RETAIN)]
  held = {"params": params, "state": args[1] if c.kind in OPTIMIZERS else None}

  def step(i):
    if c.kind == "fwd":
      return compiled(held["params"], rest, ids, mask)
    if c.kind == "fwdbwd":
      out = compiled(held["params"], rest, ids, mask)
      jax.block_until_ready(out)  # the gradients too, not just the loss
      return out[0]
    held["params"], held["state"], loss = compiled(
      held["params"], held["state"], rest, ids, mask, objectives[i % 2]
    )
    return loss

  # Blocking on everything the step wrote, not just the loss: the update must be done too.
  def sync(loss):
    jax.block_until_ready((loss, held["params"], held["state"]))

  del args
  memory.steps_begin()
  times, losses = run_steps(step, spec["warmup"], spec["steps"], sync)
  mem = memory.report()
  dev = jax.devices()[0]
  device_peak = (
    (dev.memory_stats() or {}).get("peak_bytes_in_use") if dev.platform != "cpu" else None
  )
  return {
    "times_s": times,
    "compile_s": compile_s,
    "load_s": load_s,
    "losses": losses,
    "trainable_params": sum(x.size for x in jax.tree.leaves(held["params"])),
    "opt_state_mib": state_bytes / 2**20,
    "device_peak_mib": device_peak / 2**20 if device_peak else None,
    "platform": dev.platform,
    **mem,
    "versions": {
      "jax": jax.__version__,
      "jaxlib": importlib.metadata.version("jaxlib"),
      "flax": importlib.metadata.version("flax"),
      "optax": optax.__version__,
      "device": getattr(dev, "device_kind", str(dev)),
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
    },
  }


def torch_lora(model, rank: int, seed: int) -> None:
  """A rank-``rank`` adapter on every projection of every decoder layer, base frozen.

  ``y = base(x) + (x @ A) @ B`` with B zero and no ``alpha / rank``: ``experiments.hf.add_lora``'s
  adapter, A from :func:`lora_a_init`, so the two sides train the same thing (``peft`` would
  add its scaling and dropout, and a dependency).
  """
  import torch

  class LoRALinear(torch.nn.Module):
    def __init__(self, base: torch.nn.Linear, a):
      super().__init__()
      self.base = base
      like = {"dtype": base.weight.dtype, "device": base.weight.device}
      self.lora_a = torch.nn.Parameter(torch.as_tensor(a).to(**like))
      self.lora_b = torch.nn.Parameter(torch.zeros(rank, base.out_features, **like))

    def forward(self, x):
      return self.base(x) + (x @ self.lora_a) @ self.lora_b

  model.requires_grad_(False)
  layers = model.model.layers
  for name in LORA_TARGETS:
    a = None
    for i, layer in enumerate(layers):
      for parent in (layer.self_attn, layer.mlp):
        base = getattr(parent, name, None)
        if isinstance(base, torch.nn.Linear):
          if a is None:  # every layer's A at once, as the JAX side's stacked factor
            a = lora_a_init(seed, name, len(layers), base.in_features, rank)
          setattr(parent, name, LoRALinear(base, a[i]))


def torch_worker(spec: dict, memory: Memory) -> dict:
  import torch
  import transformers

  c = Config(**spec["config"])
  device = torch.device(spec["torch_device"])
  dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[c.dtype]
  start = time.perf_counter()
  model = transformers.AutoModelForCausalLM.from_pretrained(spec["hf_folder"], dtype=dtype)
  model.to(device)
  if c.mode == "lora":
    torch_lora(model, spec["lora_rank"], spec["seed"])
  load_s = time.perf_counter() - start
  ids = torch.as_tensor(random_ids(spec["seed"], spec["vocab"], spec["batch"], spec["seq"]))
  ids = ids.to(device)
  mask = torch.ones_like(ids)
  trainable = [p for p in model.parameters() if p.requires_grad]
  fused, fused_error, opt = None, None, None
  if c.kind == "adamw":
    kw = {"lr": LR, "betas": (B1, B2), "eps": EPS, "weight_decay": WEIGHT_DECAY}
    try:
      opt = torch.optim.AdamW(trainable, fused=True, **kw)
      fused = True
    except (RuntimeError, ValueError) as e:  # fused not available on this device/dtype
      fused_error = f"{type(e).__name__}: {e}"
      opt = torch.optim.AdamW(trainable, foreach=True, **kw)
      fused = False

  def loss_of():
    return model(input_ids=ids, attention_mask=mask, labels=ids).loss

  def step(i):
    if c.kind == "fwd":
      with torch.no_grad():
        return loss_of()
    loss = loss_of()
    loss.backward()
    if opt is not None:
      opt.step()
      opt.zero_grad(set_to_none=True)
    else:
      model.zero_grad(set_to_none=True)
    return loss.detach()

  def sync(loss):
    if device.type == "cuda":
      torch.cuda.synchronize()

  model.train(c.kind != "fwd")
  # torch has no separate compilation: its first step (counted as a warm-up step) is reported
  # as compile_s, so both sides take the same number of steps.
  memory.steps_begin()
  start = time.perf_counter()
  first = step(0)
  sync(first)
  compile_s = time.perf_counter() - start
  times, losses = run_steps(lambda i: step(i + 1), max(spec["warmup"] - 1, 0), spec["steps"], sync)
  mem = memory.report()
  state_bytes = 0
  if opt is not None:
    for s in opt.state.values():
      state_bytes += sum(v.nbytes for v in s.values() if torch.is_tensor(v))
  peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
  return {
    "times_s": times,
    "compile_s": compile_s,
    "load_s": load_s,
    "losses": [float(first), *losses],
    "trainable_params": sum(p.numel() for p in trainable),
    "opt_state_mib": state_bytes / 2**20,
    "device_peak_mib": peak / 2**20 if peak else None,
    "platform": device.type,
    **mem,
    "fused_adamw": fused,
    "fused_adamw_error": fused_error,
    "versions": {
      "torch": torch.__version__,
      "transformers": transformers.__version__,
      "threads": torch.get_num_threads(),
      "attn_implementation": getattr(model.config, "_attn_implementation", None),
    },
  }


def worker_main(side: str, spec_json: str) -> int:
  spec = json.loads(spec_json)
  memory = Memory()
  try:
    out = (jax_worker if side == "jax" else torch_worker)(spec, memory)
    rc = 0
  except Exception as e:  # reported in the row; the sweep goes on
    traceback.print_exc()
    out, rc = {"error": f"{type(e).__name__}: {e}"[:500], **memory.report()}, 1
  print(MARK + json.dumps(out), flush=True)
  return rc


# ---------------------------------------------------------------------------------------------
# Driver.


def prepare_model(args) -> tuple[str, pathlib.Path, int]:
  """(checkpoint the JAX side loads, HF folder torch loads, vocabulary size).

  The GGUF is fetched (or given), converted once to a float32 HF folder for torch. With
  ``--layers N`` both sides load an N-layer truncation of that folder instead.
  """
  from experiments.fetch import resolve_model

  src = resolve_model(args.model)
  if (src / "config.json").is_file():
    hf_folder = src
  else:
    workdir = pathlib.Path(args.workdir) if args.workdir else src.parent
    hf_folder = workdir / f"{src.stem}.hf_f32"
    if not hf_folder.exists():
      print(f"converting {src} -> {hf_folder} (once)", flush=True)
      command = [sys.executable, "-m", "experiments.convert", str(src), str(hf_folder)]
      subprocess.run(command, check=True)
  jax_model = str(src)
  if args.layers:
    hf_folder = truncated(hf_folder, args.layers, pathlib.Path(args.workdir or hf_folder.parent))
    jax_model = str(hf_folder)
  vocab = json.loads((hf_folder / "config.json").read_text())["vocab_size"]
  return jax_model, hf_folder, vocab


def truncated(folder: pathlib.Path, layers: int, workdir: pathlib.Path) -> pathlib.Path:
  """The first ``layers`` decoder layers of an HF folder (one safetensors file), made once."""
  from safetensors.numpy import load_file, save_file

  out = workdir / f"{folder.name}.{layers}layers"
  if out.exists():
    return out
  config = json.loads((folder / "config.json").read_text())
  config["num_hidden_layers"] = layers
  tensors = load_file(folder / "model.safetensors")
  keep = {
    k: v
    for k, v in tensors.items()
    if not k.startswith("model.layers.") or int(k.split(".")[2]) < layers
  }
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=workdir))
  (tmp / "config.json").write_text(json.dumps(config, indent=2))
  save_file(keep, tmp / "model.safetensors", metadata={"format": "pt"})
  tmp.rename(out)
  return out


def run_worker(c: Config, spec: dict, args) -> dict:
  python = sys.executable if c.side == "jax" else args.torch_python
  spec = {**spec, "config": dataclasses.asdict(c)}
  command = [python, "-m", "benchmarks.real_llm_step", "--worker", c.side, json.dumps(spec)]
  start = time.perf_counter()
  try:
    done = subprocess.run(
      command, capture_output=True, text=True, timeout=args.timeout, cwd=pathlib.Path.cwd()
    )
    lines = [x for x in done.stdout.splitlines() if x.startswith(MARK)]
    row = json.loads(lines[-1][len(MARK) :]) if lines else {}
    if not lines:
      tail = [x for x in (done.stderr or done.stdout).splitlines() if x.strip()]
      row["error"] = f"exit {done.returncode}: {tail[-1] if tail else 'no output'}"[:500]
  except subprocess.TimeoutExpired:
    row = {"error": f"timed out after {args.timeout} s"}
  row["wall_s"] = time.perf_counter() - start
  return row


def summarise(name: str, runs: list[dict]) -> dict:
  """Medians across repeats (min: the best step of all)."""
  ok = [r for r in runs if "error" not in r and r.get("times_s")]
  row = {"config": name, "repeats": len(runs), "ok": len(ok)}
  if not ok:
    row["error"] = runs[-1].get("error", "no timed steps")
    return row

  def med(key):
    values = [r[key] for r in ok if r.get(key) is not None]
    return statistics.median(values) if values else None

  row["median_s"] = statistics.median(statistics.median(r["times_s"]) for r in ok)
  row["min_s"] = min(min(r["times_s"]) for r in ok)
  memory = ("peak_host_mib", "setup_peak_mib", "steps_peak_mib", "end_rss_mib")
  for key in ("compile_s", "load_s", *memory, "opt_state_mib"):
    row[key] = med(key)
  row["device_peak_mib"] = med("device_peak_mib")
  row["loss_step0"] = ok[0]["losses"][0]
  row["loss_last"] = ok[0]["losses"][-1]
  row["trainable_params"] = ok[0]["trainable_params"]
  if "fused_adamw" in ok[0]:
    row["fused_adamw"] = ok[0]["fused_adamw"]
    row["fused_adamw_error"] = ok[0]["fused_adamw_error"]
  return row


def fmt(value, spec: str) -> str:
  return "" if value is None else format(value, spec)


def table(rows: list[dict], tokens: int) -> str:
  head = (
    "| config | median s | min s | tokens/s | compile s | peak host MiB | steps peak MiB "
    "| torch/jax | loss step 0 | note |"
  )
  lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
  for r in rows:
    tps = tokens / r["median_s"] if r.get("median_s") else None
    note = r.get("error", "")
    if r.get("fused_adamw") is False:
      note = "AdamW not fused: " + (r.get("fused_adamw_error") or "")
    lines.append(
      f"| {r['config']} | {fmt(r.get('median_s'), '.3f')} | {fmt(r.get('min_s'), '.3f')} | "
      f"{fmt(tps, '.0f')} | {fmt(r.get('compile_s'), '.1f')} | "
      f"{fmt(r.get('peak_host_mib'), '.0f')} | {fmt(r.get('steps_peak_mib'), '.0f')} | "
      f"{fmt(r.get('torch_over_jax'), '.2f')} | "
      f"{fmt(r.get('loss_step0'), '.6f')} | {note} |"
    )
  return "\n".join(lines)


def machine() -> dict:
  cpu = None
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        cpu = line.split(":", 1)[1].strip()
        break
  except OSError:
    pass
  return {
    "machine": platform.machine(),
    "cpu": cpu or platform.processor(),
    "cpu_count": os.cpu_count(),
    "python": platform.python_version(),
    "system": platform.platform(),
  }


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--configs", help="comma list of names or patterns (default: see --list)")
  parser.add_argument("--list", action="store_true", help="print every configuration and exit")
  parser.add_argument("--model", default=MODEL, help="known name, GGUF file or HF folder")
  parser.add_argument(
    "--workdir", help="where the HF folder(s) for torch go (default: by the GGUF)"
  )
  parser.add_argument("--torch-python", default=sys.executable, help="interpreter with torch")
  parser.add_argument("--torch-device", default="cpu", help="torch device (cpu, cuda)")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--seq", type=int, default=128)
  parser.add_argument("--steps", type=int, default=5, help="timed steps per configuration")
  parser.add_argument("--warmup", type=int, default=2, help="untimed steps before them")
  parser.add_argument("--repeats", type=int, default=1, help="sweeps of every configuration")
  parser.add_argument("--layers", type=int, help="truncate the model to its first N layers")
  parser.add_argument("--lora-rank", type=int, default=8)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--timeout", type=float, default=1800, help="seconds per worker")
  parser.add_argument("--smoke", action="store_true", help="2 layers, 2 x 16 tokens, 1+1 steps")
  parser.add_argument("--out", help="JSON path (default: results/real_llm_step_<platform>.json)")
  parser.add_argument("--worker", nargs=2, metavar=("SIDE", "SPEC"), help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.worker:
    sys.exit(worker_main(*args.worker))
  if args.list:
    default = {c.name for c in default_configs()}
    for c in every_config():
      print(c.name + ("  (default)" if c.name in default else ""))
    return {}
  if args.smoke:
    args.layers, args.batch, args.seq, args.steps, args.warmup = 2, 2, 16, 1, 1
  configs = select(args.configs)
  start_load = os.getloadavg()
  print(f"load average at start: {start_load}", flush=True)
  jax_model, hf_folder, vocab = prepare_model(args)
  spec = {
    "jax_model": jax_model,
    "hf_folder": str(hf_folder),
    "vocab": vocab,
    "batch": args.batch,
    "seq": args.seq,
    "steps": args.steps,
    "warmup": args.warmup,
    "seed": args.seed,
    "lora_rank": args.lora_rank,
    "torch_device": args.torch_device,
  }
  order = interleave(configs)
  runs: dict[str, list[dict]] = {c.name: [] for c in order}
  for repeat in range(args.repeats):
    # Reversed every other sweep: a load trend does not always hit the same rows first.
    for c in order if repeat % 2 == 0 else order[::-1]:
      row = run_worker(c, spec, args)
      runs[c.name].append(row)
      state = row.get("error") or f"median {statistics.median(row['times_s']):.3f} s"
      print(f"[{repeat + 1}/{args.repeats}] {c.name}: {state} ({row['wall_s']:.0f} s)", flush=True)
  rows = {name: summarise(name, rs) for name, rs in runs.items()}
  for c in order:
    row, twin = rows[c.name], rows.get(c.twin or "")
    if twin and row.get("median_s") and twin.get("median_s"):
      row["torch_over_jax"] = twin["median_s"] / row["median_s"]
      row["twin"] = c.twin
      # Same weights, ids and loss: step 0 should agree to float tolerance (in float32).
      row["loss_step0_minus_torch"] = row["loss_step0"] - twin["loss_step0"]
      if c.kind in ("adamw", "fwd", "fwdbwd"):  # the same update rule: the last step too
        row["loss_last_minus_torch"] = row["loss_last"] - twin["loss_last"]
  tokens = args.batch * args.seq
  for row in rows.values():
    if row.get("median_s"):
      row["tokens_per_s"] = tokens / row["median_s"]
  platforms = sorted({r["platform"] for rs in runs.values() for r in rs if "platform" in r})
  jax_platform = next((r["platform"] for r in runs_of(runs, "jax") if "platform" in r), "cpu")
  versions = {}
  for side in ("jax", "torch"):
    found = next((r["versions"] for r in runs_of(runs, side) if "versions" in r), None)
    if found:
      versions[side] = found
  result = {
    "conditions": {
      "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
      "model": args.model,
      "jax_checkpoint": jax_model,
      "torch_hf_folder": str(hf_folder),
      "batch": args.batch,
      "seq": args.seq,
      "layers": args.layers,
      "steps": args.steps,
      "warmup": args.warmup,
      "repeats": args.repeats,
      "lora_rank": args.lora_rank,
      "torch_device": args.torch_device,
      "hyperparameters": {"lr": LR, "b1": B1, "b2": B2, "eps": EPS, "weight_decay": WEIGHT_DECAY},
      "platforms": platforms,
      "loadavg_start": start_load,
      **machine(),
    },
    "versions": versions,
    "loadavg_end": os.getloadavg(),
    "rows": [rows[c.name] for c in order],
    "runs": {name: rs for name, rs in runs.items()},
  }
  print(table(result["rows"], tokens))
  for r in result["rows"]:
    if "loss_step0_minus_torch" in r:
      last = r.get("loss_last_minus_torch")
      last = "" if last is None else f", after {args.warmup + args.steps} steps {last:+.2e}"
      print(f"loss JAX - torch, {r['config']}: step 0 {r['loss_step0_minus_torch']:+.2e}{last}")
  print(f"load average at end: {result['loadavg_end']}")
  default_out = RESULTS / f"real_llm_step_{jax_platform}.json"
  if args.smoke:
    default_out = pathlib.Path(tempfile.gettempdir()) / f"real_llm_step_{jax_platform}_smoke.json"
  out = pathlib.Path(args.out) if args.out else default_out
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(result, indent=2))
  print(f"wrote {out}")
  return result


def runs_of(runs: dict[str, list[dict]], side: str) -> list[dict]:
  return [r for name, rs in runs.items() if name.startswith(side + "-") for r in rs]


if __name__ == "__main__":
  main()
