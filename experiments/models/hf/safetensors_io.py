"""Safetensors folders: read one tensor at a time (single or sharded), write in HF's layout.

``safetensors``' numpy API memory-maps each file, so a tensor is read only when asked for and
the model never sits on the host twice. ``ml_dtypes`` gives numpy its ``bfloat16``.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Iterable, Iterator

import ml_dtypes  # noqa: F401  (registers numpy's bfloat16 for safetensors' numpy API)
import numpy as np
import safetensors
import safetensors.numpy

from experiments.models.hf.config import CheckpointError

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"


class SafetensorsFolder:
  """The tensors of a checkpoint folder, keyed by name, read lazily.

  Use as a context manager; ``keys`` maps each tensor name to its file name.

  Example:
    >>> import numpy as np, tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> write_folder(d, [("w", np.ones((2, 3), np.float32))])
    >>> with SafetensorsFolder(d) as f:
    ...   f.keys, f.read("w").shape
    ({'w': 'model.safetensors'}, (2, 3))
  """

  def __init__(self, folder: str | pathlib.Path):
    self.folder = pathlib.Path(folder)
    self._open: dict[str, object] = {}
    index = self.folder / INDEX
    if index.is_file():
      try:
        weight_map = json.loads(index.read_text())["weight_map"]
      except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{INDEX} in {self.folder} is unreadable: {e!r}") from None
      files = sorted(set(weight_map.values()))
    elif (self.folder / SINGLE).is_file():
      weight_map, files = None, [SINGLE]
    else:
      raise CheckpointError(f"{self.folder} has neither {SINGLE} nor {INDEX}")
    self.keys: dict[str, str] = {}
    for name in files:
      for key in self._handle(name).keys():
        self.keys[key] = name
    if weight_map is not None:
      for key, name in weight_map.items():
        if self.keys.get(key) != name:
          raise CheckpointError(f"{INDEX} puts tensor {key!r} in {name}, which does not hold it")

  def _handle(self, name: str):
    if name not in self._open:
      file = self.folder / name
      if not file.is_file():
        raise CheckpointError(f"safetensors file {name} (listed in {INDEX}) does not exist")
      try:
        self._open[name] = safetensors.safe_open(str(file), framework="numpy")
      except Exception as e:  # safetensors raises its own error type for every corruption
        raise CheckpointError(f"safetensors file {name} is unreadable or truncated: {e}") from None
    return self._open[name]

  def read(self, key: str) -> np.ndarray:
    """The tensor ``key`` as a numpy array in its stored dtype."""
    try:
      return self._handle(self.keys[key]).get_tensor(key)
    except Exception as e:
      raise CheckpointError(f"cannot read tensor {key!r} from {self.keys[key]}: {e}") from None

  def close(self) -> None:
    self._open.clear()  # safe_open handles unmap when dropped

  def __enter__(self) -> SafetensorsFolder:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def _shards(sizes: list[tuple[str, int]], max_shard_bytes: int) -> list[list[str]]:
  shards: list[list[str]] = [[]]
  total = 0
  for key, size in sizes:
    if shards[-1] and total + size > max_shard_bytes:
      shards.append([])
      total = 0
    shards[-1].append(key)
    total += size
  return shards


def write_folder(
  folder: str | pathlib.Path,
  tensors: Iterable[tuple[str, np.ndarray]] | Iterator[tuple[str, np.ndarray]],
  *,
  sizes: list[tuple[str, int]] | None = None,
  max_shard_bytes: int = 5 * 2**30,
) -> None:
  """Writes ``(key, array)`` pairs as ``model.safetensors`` or HF-style shards plus an index.

  Args:
    folder: destination (created if needed).
    tensors: the pairs, consumed in order; arrays may be produced lazily (one shard's worth is
      held at a time).
    sizes: ``(key, nbytes)`` in the same order, to plan shards before materialising anything
      (default: materialise everything first, one shard).
    max_shard_bytes: shard size limit (HF's default is 5 GB).
  """
  folder = pathlib.Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  meta = {"format": "pt"}  # transformers refuses safetensors files without this
  plan = _shards(sizes, max_shard_bytes) if sizes is not None else None
  it = iter(tensors)
  if plan is None or len(plan) == 1:
    safetensors.numpy.save_file(dict(it), str(folder / SINGLE), metadata=meta)
    return
  weight_map, total = {}, 0
  for n, keys in enumerate(plan, 1):
    name = f"model-{n:05d}-of-{len(plan):05d}.safetensors"
    shard = {}
    for expected in keys:
      key, value = next(it)
      assert key == expected, (key, expected)
      shard[key] = value
      weight_map[key] = name
      total += value.nbytes
    safetensors.numpy.save_file(shard, str(folder / name), metadata=meta)
  index = {"metadata": {"total_size": total}, "weight_map": weight_map}
  (folder / INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
