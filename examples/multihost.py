"""Multi-host DualOptim+ unlearning on a global mesh: a runnable recipe.

Every process (one per host) runs this same script. Parameters, optimizer state
and batches are global ``jax.Array``s on one mesh spanning all hosts' devices;
each host only ever materialises its own shards.

* TPU pod slice, or SLURM (``jax.distributed.initialize()`` finds the peers)::

    python examples/multihost.py --steps 12 --ckpt /shared/ckpt

* Any other cluster: start one process per host with the same coordinator::

    python examples/multihost.py --coordinator host0:8476 --num-processes 2 --process-id 0
    python examples/multihost.py --coordinator host0:8476 --num-processes 2 --process-id 1

* One host, 8 simulated CPU devices (a single-process run of the same code),
  or two processes of 4 simulated devices each::

    python examples/multihost.py --simulate 8
    python examples/multihost.py --simulate 4 --coordinator localhost:8476 \
      --num-processes 2 --process-id 0 --ckpt /tmp/ckpt &
    python examples/multihost.py --simulate 4 --coordinator localhost:8476 \
      --num-processes 2 --process-id 1 --ckpt /tmp/ckpt

The checkpoint directory must be shared by all hosts (GCS, NFS, ...).
"""

from __future__ import annotations

import argparse
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import dualoptim_jax as do

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--coordinator", default=None, help="host:port of process 0")
parser.add_argument("--num-processes", type=int, default=None)
parser.add_argument("--process-id", type=int, default=None)
parser.add_argument("--simulate", type=int, default=0, help="N simulated CPU devices, 1 process")
parser.add_argument("--steps", type=int, default=12)
parser.add_argument("--ckpt", default=None, help="shared checkpoint directory")
args = parser.parse_args()

# 1. Join the cluster before any other JAX call.
if args.simulate:  # CPU devices per process (testing without a cluster)
  jax.config.update("jax_num_cpu_devices", args.simulate)
if args.coordinator:
  jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
elif args.simulate:
  jax.distributed.initialize("localhost:8476", num_processes=1, process_id=0)
else:
  jax.distributed.initialize()  # TPU pods and SLURM: auto-detected
is_main = jax.process_index() == 0

# 2. One global mesh over every host's devices: data x model.
n = jax.device_count()
model_axis = 2 if n % 2 == 0 else 1
mesh = jax.make_mesh(
  (n // model_axis, model_axis), ("data", "model"), axis_types=(AxisType.Auto, AxisType.Auto)
)  # GSPMD-style shardings
specs = {"w1": P(None, "model"), "w2": P("model", None)}
param_sh = {k: NamedSharding(mesh, s) for k, s in specs.items()}
batch_sh = NamedSharding(mesh, P("data"))

# 3. Params and optimizer state are created sharded (jit + out_shardings).
dim, hidden = 16, 64


def init_params(key):
  k1, k2 = jax.random.split(key)
  return {
    "w1": jax.random.normal(k1, (dim, hidden)) / dim**0.5,
    "w2": jax.random.normal(k2, (hidden, 1)) / hidden**0.5,
  }


params = jax.jit(init_params, out_shardings=param_sh)(jax.random.key(0))
tx = do.dualoptim_plus(3e-3, forget_learning_rate=1e-3, forget_steps=1, retain_steps=5)
state_sh = do.state_shardings(tx, params, param_sh)
state = jax.jit(tx.init, out_shardings=state_sh)(params)


# 4. The step: forget = gradient ascent on the forget batch, retain = descent.
def loss(params, x, y, objective):
  pred = jnp.tanh(x @ params["w1"]) @ params["w2"]
  mse = jnp.mean((pred[:, 0] - y) ** 2)
  return -mse if objective == do.FORGET else mse


def train_step(params, state, x, y, objective):
  value, grads = jax.value_and_grad(loss)(params, x, y, objective)
  updates, state = tx.update(grads, state, params, objective=objective)
  return optax.apply_updates(params, updates), state, value


step_fn = jax.jit(
  train_step, static_argnums=(4,), donate_argnums=(0, 1), out_shardings=(param_sh, state_sh, None)
)


# 5. Each host feeds only its slice of the global batch.
def global_batch(step, objective):
  per_host = 8 * jax.local_device_count()
  rng = np.random.default_rng([step, jax.process_index()])
  x = rng.normal(size=(per_host, dim)).astype(np.float32)
  y = np.sin(x.sum(1)).astype(np.float32) + (1.0 if objective == do.FORGET else 0.0)
  return (
    jax.make_array_from_process_local_data(batch_sh, x),
    jax.make_array_from_process_local_data(batch_sh, y),
  )


ckpt = args.ckpt or tempfile.mkdtemp(prefix="dualoptim_multihost_")
for k in range(args.steps):
  objective = int(do.scheduled_objective(k, (1, 5)))  # the schedule, known on the host
  x, y = global_batch(k, objective)
  params, state, value = step_fn(params, state, x, y, objective)
  if is_main:
    kind = "forget" if objective == do.FORGET else "retain"
    print(f"step {k:2d} {kind} loss {float(value):+.4f}")

# 6. Every process takes part in the save; restore onto the same (or another) mesh.
do.save_checkpoint(ckpt, args.steps, params, state)
restored, _, step = do.restore_checkpoint(ckpt, params, jax.eval_shape(tx.init, params))
ok = all(
  bool(jnp.array_equal(a, b))
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(params), strict=True)
)
if is_main:
  print(
    f"{jax.process_count()} process(es), {n} devices, mesh {dict(mesh.shape)}; "
    f"checkpoint step {step} in {ckpt} restored bit-exactly: {ok}"
  )
  print(
    "w1 sharding:",
    params["w1"].sharding.spec,
    "| base_mu w1:",
    state[0].base_mu["w1"].sharding.spec,
  )
jax.distributed.shutdown()
