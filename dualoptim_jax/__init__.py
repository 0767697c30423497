"""DualOptim+ and DualOptim for machine unlearning, as optax transformations."""

from dualoptim_jax import quantization as quantization
from dualoptim_jax import unlearning as unlearning
from dualoptim_jax._src.alias import dualoptim as dualoptim
from dualoptim_jax._src.alias import dualoptim_plus as dualoptim_plus
from dualoptim_jax._src.alias_8bit import adamw_8bit as adamw_8bit
from dualoptim_jax._src.alias_8bit import dualoptim_8bit as dualoptim_8bit
from dualoptim_jax._src.alias_8bit import dualoptim_plus_8bit as dualoptim_plus_8bit
from dualoptim_jax._src.alias_muon import dualoptim_plus_muon as dualoptim_plus_muon
from dualoptim_jax._src.base import FORGET as FORGET
from dualoptim_jax._src.base import RETAIN as RETAIN
from dualoptim_jax._src.base import scheduled_objective as scheduled_objective
from dualoptim_jax._src.checkpoint import CheckpointError as CheckpointError
from dualoptim_jax._src.checkpoint import checkpoint_steps as checkpoint_steps
from dualoptim_jax._src.checkpoint import restore_checkpoint as restore_checkpoint
from dualoptim_jax._src.checkpoint import save_checkpoint as save_checkpoint
from dualoptim_jax._src.diagnostics import conflict_metrics as conflict_metrics
from dualoptim_jax._src.diagnostics import find_dualoptim_plus_state as find_dualoptim_plus_state
from dualoptim_jax._src.dualoptim import ScaleByDualOptimState as ScaleByDualOptimState
from dualoptim_jax._src.dualoptim import scale_by_dualoptim as scale_by_dualoptim
from dualoptim_jax._src.dualoptim_8bit import ScaleByDualOptim8bitState as ScaleByDualOptim8bitState
from dualoptim_jax._src.dualoptim_8bit import scale_by_dualoptim_8bit as scale_by_dualoptim_8bit
from dualoptim_jax._src.dualoptim_plus import ScaleByDualOptimPlusState as ScaleByDualOptimPlusState
from dualoptim_jax._src.dualoptim_plus import scale_by_dualoptim_plus as scale_by_dualoptim_plus
from dualoptim_jax._src.dualoptim_plus_8bit import (
  ScaleByDualOptimPlus8bitState as ScaleByDualOptimPlus8bitState,
)
from dualoptim_jax._src.dualoptim_plus_8bit import (
  dequantize_dualoptim_plus_state as dequantize_dualoptim_plus_state,
)
from dualoptim_jax._src.dualoptim_plus_8bit import (
  scale_by_dualoptim_plus_8bit as scale_by_dualoptim_plus_8bit,
)
from dualoptim_jax._src.learning_rate import (
  scale_by_objective_learning_rate as scale_by_objective_learning_rate,
)
from dualoptim_jax._src.muon import ScaleByDualOptimPlusMuonState as ScaleByDualOptimPlusMuonState
from dualoptim_jax._src.muon import scale_by_dualoptim_plus_muon as scale_by_dualoptim_plus_muon
from dualoptim_jax._src.sharding import state_partition_specs as state_partition_specs
from dualoptim_jax._src.sharding import state_shardings as state_shardings

__version__ = "0.1.0"

__all__ = (
  "CheckpointError",
  "FORGET",
  "RETAIN",
  "ScaleByDualOptim8bitState",
  "ScaleByDualOptimPlus8bitState",
  "ScaleByDualOptimPlusMuonState",
  "ScaleByDualOptimPlusState",
  "ScaleByDualOptimState",
  "adamw_8bit",
  "checkpoint_steps",
  "conflict_metrics",
  "dequantize_dualoptim_plus_state",
  "dualoptim",
  "dualoptim_8bit",
  "dualoptim_plus",
  "dualoptim_plus_8bit",
  "dualoptim_plus_muon",
  "find_dualoptim_plus_state",
  "quantization",
  "restore_checkpoint",
  "save_checkpoint",
  "scale_by_dualoptim",
  "scale_by_dualoptim_8bit",
  "scale_by_dualoptim_plus",
  "scale_by_dualoptim_plus_8bit",
  "scale_by_dualoptim_plus_muon",
  "scale_by_objective_learning_rate",
  "scheduled_objective",
  "state_partition_specs",
  "state_shardings",
  "unlearning",
)
