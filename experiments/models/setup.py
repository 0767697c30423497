"""The model phase: the in-house decoder or a checkpoint (HF folder or GGUF), with its tokenizer.

:func:`load` gives a :class:`ModelSetup`: tokenizer and encoder, the split model
(``graphdef``, the trained ``params`` and the ``frozen`` rest), where batches go
on a mesh, and how to evaluate and export what the loops return.

- In-house (the default): a fresh :class:`~experiments.models.decoder.DecoderLM`
  with the local BPE (:func:`cached_tokenizer`), float32, one device.
- A :class:`Checkpoint`: loaded in its ``param_dtype`` onto its ``mesh``, with its
  own tokenizer, special ids and chat template; with ``lora_rank`` only the adapters
  are trained (``params``) and the checkpoint's weights are ``frozen``.

Both read their prompt format through :func:`encoder`, the one place a prompt
format becomes the encoder's; :meth:`ModelSetup.export` is the one place models
are written (an HF folder, or a GGUF file).

Example:
  >>> import jax.numpy as jnp
  >>> from experiments.data.tokenizer import train_tokenizer
  >>> m = in_house(train_tokenizer(["a b c"], 300), "tiny", 32)
  >>> m.description
  'tiny: 18,688 parameters, vocab 261, max_len 32'
  >>> m.apply(m.params, jnp.ones((1, 4), jnp.int32), jnp.ones((1, 4), jnp.int32)).shape
  (1, 4, 261)
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
import shutil
import sys
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from tokenizers import Tokenizer

from experiments import hf
from experiments.data import tokenizer as toklib
from experiments.data.batching import Encoder
from experiments.data.prompts import CHAT, DEFAULT, prompt_format
from experiments.loops import optimizers
from experiments.loops.checkpoint import set_aside
from experiments.models import decoder, make_apply
from experiments.models.hf.gguf_io import find_gguf
from experiments.models.hf.gguf_write import tokenizer_bundle
from experiments.models.hf.tokenizer_files import write_tokenizer_files

# Files beside the weights that make an exported folder usable on its own.
TOKENIZER_FILES = (
  "tokenizer.json",
  "tokenizer_config.json",
  "special_tokens_map.json",
  "generation_config.json",
  "tokenizer.model",
  "chat_template.jinja",
)


@dataclasses.dataclass(frozen=True)
class Checkpoint:
  """A checkpoint and how to load it.

  Attributes:
    path: an HF-format folder (``config.json``, weights, ``tokenizer.json``), or a GGUF file
      (or a folder holding one).
    param_dtype: ``float32`` or ``bfloat16`` (optimizer moments stay float32).
    lora_rank: train rank-R adapters only (0: every parameter).
    mesh: ``(data, model)`` device counts, or None for one device.
  """

  path: pathlib.Path
  param_dtype: str = "float32"
  lora_rank: int = 0
  mesh: tuple[int, int] | None = None


@dataclasses.dataclass
class ModelSetup:
  """What the jobs need of their model.

  Attributes:
    tok: the tokenizer.
    encoder: tokenises QA pairs with the model's special ids and prompt format.
    graphdef: the model's ``nnx`` graph definition.
    params: the trained state at the start (every parameter, or LoRA adapters).
    frozen: the state merged in but never trained (a LoRA model's base), or None.
    vocab_size: the model's vocabulary.
    description: one line for the log.
    info: what ``results.json`` records about the model ({} for the in-house model).
    mesh: the device mesh, or None.
    checkpoint: where the model came from (tokenizer files for export), or None.
  """

  tok: Tokenizer
  encoder: Encoder
  graphdef: Any
  params: Any
  frozen: Any
  vocab_size: int
  description: str
  info: dict = dataclasses.field(default_factory=dict)
  mesh: jax.sharding.Mesh | None = None
  checkpoint: Checkpoint | None = None

  @functools.cached_property
  def apply(self) -> Callable:
    """``apply(params, ids, mask, frozen=None) -> logits`` (see ``models.make_apply``)."""
    return make_apply(self.graphdef)

  @property
  def n_params(self) -> int:
    """Parameters of the whole model (base and adapters)."""
    return sum(int(x.size) for x in jax.tree.leaves(self.full(self.params)))

  def full(self, state):
    """The whole model state for evaluation and export.

    ``params``-shaped states (what the loops train) are merged with ``frozen``;
    a state that already holds a base (``--oracle``'s) is returned as is.
    """
    if self.frozen is None or len(jax.tree.leaves(state)) > len(jax.tree.leaves(self.params)):
      return state
    return nnx.merge_state(state, self.frozen)

  def place_batch(self, batch):
    """``batch`` split over the mesh's ``data`` axis (as is without a mesh)."""
    if self.mesh is None:
      return batch
    return jax.device_put(batch, NamedSharding(self.mesh, P("data")))

  def placed(self, batches):
    """An unlearning batch source whose batches :meth:`place_batch` places."""
    return batches if self.mesh is None else _Placed(batches, self.place_batch)

  def export(self, params, path: str | pathlib.Path, fmt: str = "hf") -> None:
    """Writes the model with ``params`` (adapters merged) to the folder ``path``.

    ``hf``: an HF-format folder with the checkpoint's tokenizer files (written from a GGUF
    source's metadata). ``gguf``: ``path/{path.name}.gguf`` with the checkpoint's tokenizer,
    special ids and chat template (llama, qwen2, qwen3: :func:`experiments.hf.save_gguf`); the
    folder loads as a checkpoint either way.
    """
    path = pathlib.Path(path)
    model = nnx.merge(self.graphdef, self.full(params))
    source = None if self.checkpoint is None else self.checkpoint.path
    if fmt == "gguf":
      path.mkdir(parents=True, exist_ok=True)
      hf.save_gguf(model, path / f"{path.name}.gguf", source=source)
      return
    hf.save_model(model, path)
    if source is not None and find_gguf(source) is not None:
      tok, special, template, _ = tokenizer_bundle(source)
      write_tokenizer_files(path, tok, special, template)  # and generation_config.json
      return
    for name in TOKENIZER_FILES:
      if source is not None and (source / name).is_file():
        shutil.copyfile(source / name, path / name)


class _Placed:
  """Wraps a batch source (``next(objective, ...)``) so every batch is placed on the mesh."""

  def __init__(self, batches, place):
    self.batches, self.place = batches, place

  def next(self, objective, *args):
    return self.place(self.batches.next(objective, *args))


def cached_tokenizer(texts: Iterable[str], vocab_size: int, path: pathlib.Path) -> Tokenizer:
  """The in-house BPE of ``vocab_size`` trained on ``texts``, cached at ``path``.

  A damaged cache file is reported, set aside and trained again: training is
  deterministic, so the retrained tokenizer matches the checkpoints' vocabulary.
  """
  if path.is_file():
    try:
      return toklib.load_tokenizer(path)
    except Exception as e:  # tokenizers raises a plain Exception for unreadable JSON
      moved = set_aside(path)
      print(
        f"[cache] {path} is damaged ({e}); moved it to {moved.name}; training it again",
        file=sys.stderr,
      )
  tok = toklib.train_tokenizer(texts, vocab_size)
  toklib.save_tokenizer(tok, path)
  return tok


def encoder(
  tok: Tokenizer,
  max_len: int,
  prompt: str,
  specials=toklib.IN_HOUSE,
  chat_template: str | None = None,
) -> Encoder:
  """The encoder of ``tok`` with the prompt format named (or written) ``prompt``.

  ``chat_template`` is the checkpoint's, which the ``chat`` format renders.

  Raises:
    ValueError: ``prompt`` is neither a named format nor a well-formed template, or ``chat``
      without a usable ``chat_template``.
  """
  return Encoder(tok, max_len, specials, prompt_format(prompt, chat_template))


def in_house(tok: Tokenizer, size: str, max_len: int, prompt: str = DEFAULT) -> ModelSetup:
  """The in-house decoder of ``size`` (fresh weights, seed 0) with the local tokenizer."""
  cfg = decoder.config_for(size, tok.get_vocab_size(), max_len)
  graphdef, params = nnx.split(decoder.DecoderLM(cfg, nnx.Rngs(0)))
  n = sum(int(x.size) for x in jax.tree.leaves(params))
  desc = f"{size}: {n:,} parameters, vocab {cfg.vocab_size}, max_len {max_len}"
  return ModelSetup(
    tok, encoder(tok, max_len, prompt), graphdef, params, None, cfg.vocab_size, desc
  )


def _split(model, lora: bool):
  """(graphdef, trained, frozen): adapters and the rest with LoRA, else every parameter."""
  if lora:
    return nnx.split(model, nnx.LoRAParam, ...)
  graphdef, params = nnx.split(model)
  return graphdef, params, None


def _load(path: pathlib.Path, ckpt: Checkpoint, mesh) -> nnx.Module:
  model = hf.load_model(path, dtype=jnp.dtype(ckpt.param_dtype), mesh=mesh)
  return hf.add_lora(model, ckpt.lora_rank) if ckpt.lora_rank else model


def mesh_of(shape: tuple[int, int] | None) -> jax.sharding.Mesh | None:
  """The ``(data, model)`` mesh of ``shape`` on the first ``data * model`` devices (None: none)."""
  if shape is None:
    return None
  data, model = shape
  return hf.make_mesh(data, model, devices=jax.devices()[: data * model])


def from_checkpoint(ckpt: Checkpoint, max_len: int, prompt: str = DEFAULT) -> ModelSetup:
  """The checkpoint ``ckpt``, ready to train.

  Raises:
    ValueError: the tokenizer's vocabulary exceeds the model's.
  """
  path, mesh = ckpt.path, mesh_of(ckpt.mesh)
  model = _load(path, ckpt, mesh)
  arch = model.arch
  tok = hf.load_tokenizer(path)
  if tok.get_vocab_size() > arch.vocab_size:
    raise ValueError(
      f"{path}: tokenizer.json has {tok.get_vocab_size()} tokens, the model {arch.vocab_size}"
    )
  specials = toklib.checkpoint_ids(
    tok, arch.bos_token_id, arch.eos_token_id, arch.pad_token_id, path
  )
  enc = encoder(tok, max_len, prompt, specials, hf.chat_template(path))
  graphdef, params, frozen = _split(model, ckpt.lora_rank > 0)
  setup = ModelSetup(tok, enc, graphdef, params, frozen, arch.vocab_size, "", mesh=mesh)
  setup.checkpoint = ckpt
  n, trained = setup.n_params, sum(int(x.size) for x in jax.tree.leaves(params))
  lora = f", LoRA rank {ckpt.lora_rank} ({trained:,} trained)" if ckpt.lora_rank else ""
  where = "" if mesh is None else f", mesh data:{ckpt.mesh[0]},model:{ckpt.mesh[1]}"
  fmt = enc.format
  own = " (the checkpoint's chat template)" if fmt.name == CHAT else ""
  setup.description = (
    f"{arch.model_type} from {path}: {n:,} parameters ({ckpt.param_dtype}{lora}{where}), "
    f"vocab {arch.vocab_size}, max_len {max_len}, prompt format {fmt.name}{own}, "
    f"BOS {'added' if specials.add_bos else 'not added'}, EOS {list(specials.eos)}"
  )
  setup.info = {
    "source": str(path),
    "model_type": arch.model_type,
    "param_dtype": ckpt.param_dtype,
    "lora_rank": ckpt.lora_rank,
    "mesh": None if mesh is None else dict(mesh.shape),
    "prompt_format": fmt.template,
    "special_ids": dataclasses.asdict(specials),
    "n_params": n,
    "n_trained": trained,
  }
  return setup


def load(
  checkpoint: Checkpoint | None,
  prompt: str,
  max_len: int,
  size: str,
  tokenizer: Callable[[], Tokenizer],
) -> ModelSetup:
  """The job's model: the ``checkpoint``'s when given, else the in-house decoder of ``size``.

  ``tokenizer()`` gives the in-house tokenizer (e.g. :func:`cached_tokenizer`);
  it is not called for a checkpoint, which brings its own.
  """
  if checkpoint is not None:
    return from_checkpoint(checkpoint, max_len, prompt)
  return in_house(tokenizer(), size, max_len, prompt)


def load_like(m: ModelSetup, path: str | pathlib.Path):
  """The whole state of another checkpoint of ``m``'s architecture, loaded as ``m`` was.

  For ``--oracle``: same dtype, LoRA rank and mesh as the ``--finetuned`` model ``m``.

  Raises:
    ValueError: the checkpoint has another architecture.
  """
  other = _load(pathlib.Path(path), m.checkpoint, m.mesh)
  if other.arch != nnx.merge(m.graphdef, m.full(m.params)).arch:
    raise ValueError(f"--oracle {path} is not the same architecture as --finetuned")
  return nnx.state(other)


def state_bytes(setup: ModelSetup, optimizer_names, recipe: optimizers.Recipe) -> dict:
  """Optimizer-state bytes per optimizer: for what is trained, and for every parameter.

  Computed from shapes only (nothing is allocated). With LoRA the two differ:
  ``trained`` is what the run holds, ``full`` what full fine-tuning would.

  Example:
    >>> from experiments.data.tokenizer import train_tokenizer
    >>> m = in_house(train_tokenizer(["a b c"], 300), "tiny", 32)
    >>> state_bytes(m, ["adamw"], optimizers.Recipe())
    {'adamw': {'trained': 149512, 'full': 149512}}
  """
  whole = nnx.state(nnx.merge(setup.graphdef, setup.full(setup.params)), hf.BASE)
  return {
    name: {
      "trained": optimizers.planned_state_bytes(name, recipe, setup.params),
      "full": optimizers.planned_state_bytes(name, recipe, whole),
    }
    for name in optimizer_names
  }
