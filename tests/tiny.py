"""Shared by the experiments tests: the flags of a tiny job and a random token batch."""

import numpy as np

from experiments.data.batching import Batch

# A job that finishes in seconds: 1-layer model, 4 authors, 1 fine-tuning epoch, 2 steps.
JOB_ARGS = (
  "--model-size tiny --n-authors 4 --ft-epochs 1 --steps 2 --eval-size 4 --seeds 0 --lrs 1e-3"
).split()


def random_batch(seed: int, vocab: int, seq: int, size: int = 3) -> Batch:
  """Random ids in ``[3, vocab)``, some padding in row 0, answer targets from position 5 on."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(3, vocab, (size, seq)).astype(np.int32)
  mask = np.ones((size, seq), np.int32)
  mask[0, -3:] = 0  # some padding
  targets = np.zeros((size, seq), np.float32)
  targets[:, 5:] = 1.0
  targets *= mask
  return Batch(ids, mask, targets)
