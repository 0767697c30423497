"""Loading and replaying the reference PyTorch trajectories in ../shared/reference."""

from __future__ import annotations

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import dualoptim_jax as do

REFERENCE_DIR = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "reference"


def reference_path(name: str) -> pathlib.Path:
  path = REFERENCE_DIR / f"{name}.npz"
  if not path.exists():
    pytest.skip(f"golden data {path} is absent (needs ../shared beside the checkout)")
  return path


def load_case(name: str):
  data = np.load(reference_path(name))
  config = json.loads(str(data["config"]))
  leaves = list(config["shapes"])
  init = {k: jnp.asarray(data[f"init__{k}"]) for k in leaves}
  grads = {k: np.asarray(data[f"grads__{k}"]) for k in leaves}
  params = {k: np.asarray(data[f"params__{k}"]) for k in leaves}
  return config, data["objective"], data["param_steps"], init, grads, params


def optimizer_for(config, **overrides) -> optax.GradientTransformation:
  """Our optimizer with the reference case's hyperparameters."""
  lr = config["lr"]
  kw = dict(
    learning_rate=lr,
    forget_learning_rate=lr * config.get("lr_ratio_1", 1.0),
    b1=config["betas"][0],
    b2=config["betas"][1],
    weight_decay=config["weight_decay"],
    forget_steps=config["switch_freq_1"],
    retain_steps=config["switch_freq_2"],
  )
  kw.update(overrides)
  if config["reference"] == "AdamWDecoupleNormal":
    return do.dualoptim(**kw)
  kw.setdefault("base_b1", config["betas"][2])
  kw.setdefault("base_b2", config["betas"][3])
  return do.dualoptim_plus(**kw)


def replay(tx, objectives, init, grads, *, objective_mode: str = "schedule"):
  """Runs ``tx`` over the recorded grads; returns the params after every step (stacked)."""

  def step(carry, xs):
    params, state = carry
    g, o = xs
    g = jax.tree.map(lambda x: x.astype(jnp.float32), g)
    if objective_mode == "schedule":
      updates, state = tx.update(g, state, params)
    else:
      updates, state = tx.update(g, state, params, objective=o)
    params = optax.apply_updates(params, updates)
    return (params, state), params

  xs = (jax.tree.map(jnp.asarray, grads), jnp.asarray(objectives, jnp.int32))
  _, traj = jax.jit(lambda p, x: jax.lax.scan(step, (p, tx.init(p)), x))(init, xs)
  return jax.tree.map(np.asarray, traj)


def compare(ours, ref, param_steps):
  """Per leaf: (fraction within 1e-5 + 1e-5|p|, max abs error) over stored steps."""
  report = {}
  for k, r in ref.items():
    o = ours[k][param_steps]
    err = np.abs(o - r)
    ok = err <= 1e-5 + 1e-5 * np.abs(r)
    report[k] = (float(ok.mean()), float(err.max()), int(ok.size))
  return report
