"""Owner classifiers: features of a (name-masked) answer text, a linear head, a temperature.

Two feature maps, measured against each other (docs/experiments/deattribution.md):

- ``probe``: the fine-tuned LM's trunk, frozen, max-pooled over the answer tokens. The
  decoder exposes logits, not hidden states; with tied embeddings the logits are
  ``s E h_t`` (``E`` the ``(V, d)`` embedding, ``h_t`` the final-normed trunk output), a
  fixed full-rank linear map of the trunk, so any ``model(ids, mask) -> logits``
  qualifies (HF families included). Max pooling of those logits measured better than
  mean pooling, pooled log-softmax or pooled probabilities on the generated data
  (held-out accuracy 0.48 vs 0.33, 0.25, 0.38).
- ``bow``: normalised counts of token unigrams and hashed bigrams (no model at all).

The head is multinomial logistic regression on standardised features (full-batch
Adam, L2), then a temperature fitted on held-out texts (minimum NLL), then frozen.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.optimize

from experiments.data import tokenizer as toklib
from experiments.data.batching import Encoder
from experiments.data.owners import Owners

KINDS = ("bow", "probe")
BIGRAM_BUCKETS = 4096
_HEAD_STEPS, _HEAD_LR, _HEAD_L2 = 300, 0.05, 1e-3


def bag_of_tokens(encoder: Encoder) -> Callable[[Sequence[str]], np.ndarray]:
  """Feature map: L2-normalised counts of token ids and of hashed token bigrams.

  Example:
    >>> from experiments.data.tokenizer import train_tokenizer
    >>> enc = Encoder(train_tokenizer(["the cat sat", "a dog ran"], 300), 32)
    >>> bag_of_tokens(enc)(["the cat", "a dog"]).shape
    (2, 4368)
  """
  vocab = encoder.tok.get_vocab_size()

  def features(texts: Sequence[str]) -> np.ndarray:
    out = np.zeros((len(texts), vocab + BIGRAM_BUCKETS), np.float32)
    for i, text in enumerate(texts):
      ids = np.asarray(toklib.encode(encoder.tok, text), np.int64)
      np.add.at(out[i], ids, 1.0)
      if len(ids) > 1:
        np.add.at(out[i], vocab + (ids[:-1] * 7919 + ids[1:]) % BIGRAM_BUCKETS, 1.0)
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-6)

  return features


def trunk_features(apply, params, encoder: Encoder, *, batch_size: int = 64):
  """Feature map: the LM's logits max-pooled over the answer tokens (a linear map of its trunk).

  Each text is scored as the answer to an empty question (the training template), at a
  fixed ``(batch_size, encoder.max_len)`` shape: one compiled program.

  Args:
    apply: ``apply(params, ids, mask) -> logits``.
    params: the frozen LM parameters.
    encoder: the tokenising encoder.
    batch_size: texts per compiled call.

  Returns:
    ``features(texts) -> (len(texts), vocab)`` float32.
  """

  @jax.jit
  def pooled(ids, mask, targets):
    logits = apply(params, ids, mask).astype(jnp.float32)
    return jnp.max(jnp.where(targets[:, :, None] > 0, logits, jnp.float32(-1e9)), axis=1)

  def features(texts: Sequence[str]) -> np.ndarray:
    outs = []
    for lo in range(0, len(texts), batch_size):
      chunk = list(texts[lo : lo + batch_size])
      chunk += [chunk[-1]] * (batch_size - len(chunk))
      b = encoder.batch([("", t) for t in chunk], length=encoder.max_len)
      outs.append(np.asarray(pooled(b.ids, b.mask, b.targets)))
    return np.concatenate(outs)[: len(texts)]

  return features


@dataclasses.dataclass(frozen=True)
class Head:
  """A frozen linear head: ``logits = ((x - mean) / scale) @ w + b``, probabilities at ``T``."""

  w: np.ndarray
  b: np.ndarray
  mean: np.ndarray
  scale: np.ndarray
  temperature: float = 1.0

  def logits(self, x: np.ndarray) -> np.ndarray:
    """Uncalibrated class scores ``(n, classes)``."""
    return ((x - self.mean) / self.scale) @ self.w + self.b

  def probs(self, x: np.ndarray) -> np.ndarray:
    """Calibrated class probabilities ``softmax(logits / T)``."""
    return np.asarray(jax.nn.softmax(jnp.asarray(self.logits(x) / self.temperature), axis=-1))


def train_head(x: np.ndarray, y: np.ndarray, n_classes: int, *, seed: int = 0) -> Head:
  """Multinomial logistic regression on standardised features (full-batch Adam + L2).

  Example:
    >>> x = np.array([[0.0, 1.0], [1.0, 0.0]] * 4, np.float32)
    >>> head = train_head(x, np.array([0, 1] * 4), 2)
    >>> head.probs(x[:2]).argmax(1).tolist()
    [0, 1]
  """
  mean = x.mean(0)
  scale = x.std(0) + np.float32(1e-3)
  z = jnp.asarray((x - mean) / scale)
  labels = jnp.asarray(y, jnp.int32)
  key = jax.random.key(seed)
  params = {
    "w": 0.01 * jax.random.normal(key, (x.shape[1], n_classes), jnp.float32),
    "b": jnp.zeros((n_classes,), jnp.float32),
  }
  tx = optax.adam(_HEAD_LR)

  def loss(p):
    ce = optax.softmax_cross_entropy_with_integer_labels(z @ p["w"] + p["b"][None, :], labels)
    return jnp.mean(ce) + _HEAD_L2 * jnp.sum(jnp.square(p["w"]))

  @jax.jit
  def fit(params):
    def body(_, carry):
      p, s = carry
      g = jax.grad(loss)(p)
      with jax.numpy_dtype_promotion("standard"):  # optax's bias correction: float ** int32
        u, s = tx.update(g, s, p)
      return optax.apply_updates(p, u), s

    return jax.lax.fori_loop(0, _HEAD_STEPS, body, (params, tx.init(params)))[0]

  p = fit(params)
  return Head(np.asarray(p["w"]), np.asarray(p["b"]), mean, scale)


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
  """The temperature ``T`` minimising the held-out NLL of ``softmax(logits / T)`` (in [0.05, 50]).

  Example:
    >>> logits = np.array([[4.0, 0.0], [4.0, 0.0], [0.0, 4.0], [4.0, 0.0]])
    >>> t = fit_temperature(logits, np.array([0, 1, 1, 0]))  # one confident mistake in 4
    >>> t > 1.0
    True
  """

  def nll(log_t: float) -> float:
    z = logits / np.exp(log_t)
    z = z - z.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    return float(-logp[np.arange(len(y)), y].mean())

  res = scipy.optimize.minimize_scalar(nll, bounds=(np.log(0.05), np.log(50.0)), method="bounded")
  return float(np.exp(res.x))


@dataclasses.dataclass(frozen=True)
class OwnerClassifier:
  """A frozen, calibrated owner classifier over name-masked answer texts.

  Attributes:
    kind: ``bow`` or ``probe``.
    features: the feature map (texts -> ``(n, F)``).
    head: the calibrated linear head.
    owners: the owners (classes) and the names masked before classifying.
  """

  kind: str
  features: Callable[[Sequence[str]], np.ndarray]
  head: Head
  owners: Owners

  def probs(self, texts: Sequence[str]) -> np.ndarray:
    """Calibrated class probabilities ``(n, classes)`` of each text, its names masked first."""
    return self.head.probs(self.features([self.owners.mask(t) for t in texts]))

  def forget_mass(self, texts: Sequence[str], own: Sequence[int] | None = None) -> np.ndarray:
    """Attribution to the forget owners: ``sum_f C(f | text)``, or ``C(own_i | text_i)``.

    Args:
      texts: answer texts (padding and EOS already removed).
      own: per text, the one owner class to count instead of all forget owners.

    Returns:
      ``(n,)`` probabilities in [0, 1].
    """
    p = self.probs(texts)
    if own is not None:
      return p[np.arange(len(p)), np.asarray(own)]
    return p[:, list(self.owners.forget)].sum(1)


def feature_map(kind: str, encoder: Encoder, apply=None, params=None):
  """The feature map of ``kind`` (``bow``, or ``probe`` on the LM ``apply``/``params``)."""
  if kind == "bow":
    return bag_of_tokens(encoder)
  if kind == "probe":
    if apply is None or params is None:
      raise ValueError("the probe classifier needs the fine-tuned LM (apply and params)")
    return trunk_features(apply, params, encoder)
  raise ValueError(f"unknown classifier kind {kind!r}; choose from {', '.join(KINDS)}")


def train(
  kind: str,
  owners: Owners,
  train_data: Sequence[tuple[str, int]],
  heldout: Sequence[tuple[str, int]],
  encoder: Encoder,
  apply=None,
  params=None,
) -> tuple[OwnerClassifier, dict]:
  """Trains, calibrates on ``heldout`` and freezes a classifier; returns it and its report.

  ``train_data`` and ``heldout`` are (masked text, class) pairs
  (:func:`experiments.data.owners.classifier_data`). The report holds the accuracy on
  the training and held-out texts, the held-out NLL before and after calibration (the
  temperature is fitted on those same held-out texts), the temperature and the sizes.
  """
  n_classes = owners.n_classes
  features = feature_map(kind, encoder, apply, params)
  x_tr, y_tr = features([t for t, _ in train_data]), np.array([c for _, c in train_data])
  x_ho, y_ho = features([t for t, _ in heldout]), np.array([c for _, c in heldout])
  head = train_head(x_tr, y_tr, n_classes)
  temperature = fit_temperature(head.logits(x_ho), y_ho)
  head = dataclasses.replace(head, temperature=temperature)
  report = {
    "kind": kind,
    "n_train": len(train_data),
    "n_heldout": len(heldout),
    "n_classes": n_classes,
    "train_accuracy": float(np.mean(head.logits(x_tr).argmax(1) == y_tr)),
    "heldout_accuracy": float(np.mean(head.logits(x_ho).argmax(1) == y_ho)),
    "heldout_nll_uncalibrated": _nll(dataclasses.replace(head, temperature=1.0).probs(x_ho), y_ho),
    "heldout_nll": _nll(head.probs(x_ho), y_ho),
    "temperature": temperature,
  }
  return OwnerClassifier(kind, features, head, owners), report


def _nll(probs: np.ndarray, y: np.ndarray) -> float:
  return float(-np.mean(np.log(np.maximum(probs[np.arange(len(y)), y], 1e-12))))
