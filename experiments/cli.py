"""Command-line plumbing shared by the jobs: one-line errors and range-checked flag types.

Every numeric flag is parsed by a type from this module, so a bad value ends
the job before any work with a single line naming the flag and the allowed
range, e.g. ``error: argument --seeds: must be integers >= 0, got '-1'``
(exit status 2).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable


class Parser(argparse.ArgumentParser):
  """``argparse.ArgumentParser`` whose errors are one line (no usage block), exit status 2."""

  def error(self, message: str):  # noqa: D102 - argparse's hook
    print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
    raise SystemExit(2)


def _describe(lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> str:
  show = lambda x: str(x) if isinstance(x, int) else f"{x:g}"
  parts = []
  if lo is not None:
    parts.append(f"{'>' if lo_open else '>='} {show(lo)}")
  if hi is not None:
    parts.append(f"{'<' if hi_open else '<='} {show(hi)}")
  return " and ".join(parts)


def _check(value: float, lo, hi, lo_open, hi_open) -> bool:
  if not math.isfinite(value):
    return False
  if lo is not None and (value <= lo if lo_open else value < lo):
    return False
  return not (hi is not None and (value >= hi if hi_open else value > hi))


def number(
  kind: type = int,
  *,
  lo: float | None = None,
  hi: float | None = None,
  lo_open: bool = False,
  hi_open: bool = False,
) -> Callable[[str], int | float]:
  """An argparse ``type`` parsing one int/float in a range.

  Example:
    >>> number(int, lo=1)("3")
    3
    >>> number(float, lo=0, lo_open=True)("0")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: must be a number > 0, got '0'
  """
  noun = "an integer" if kind is int else "a number"
  rng = _describe(lo, hi, lo_open, hi_open)

  def parse(text: str):
    try:
      value = kind(text)
    except ValueError:
      value = None
    if value is None or not _check(value, lo, hi, lo_open, hi_open):
      raise argparse.ArgumentTypeError(f"must be {noun} {rng}, got {text!r}".replace("  ", " "))
    return value

  parse.__name__ = kind.__name__  # argparse names the type in some messages
  return parse


def number_list(
  kind: type = int,
  *,
  lo: float | None = None,
  hi: float | None = None,
  lo_open: bool = False,
  hi_open: bool = False,
) -> Callable[[str], list]:
  """An argparse ``type`` parsing a non-empty comma (or space) list of numbers in a range.

  Example:
    >>> number_list(int, lo=0)("0,1,2")
    [0, 1, 2]
    >>> number_list(float, lo=0, lo_open=True)("1e-3,-1")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: must be numbers > 0, comma separated, got '1e-3,-1'
  """
  noun = "integers" if kind is int else "numbers"
  rng = _describe(lo, hi, lo_open, hi_open)
  one = number(kind, lo=lo, hi=hi, lo_open=lo_open, hi_open=hi_open)

  def parse(text: str):
    items = [x for x in text.replace(" ", ",").split(",") if x]
    try:
      values = [one(x) for x in items]
    except argparse.ArgumentTypeError:
      values = []
    if not values:
      raise argparse.ArgumentTypeError(f"must be {noun} {rng}, comma separated, got {text!r}")
    return values

  parse.__name__ = f"{kind.__name__} list"
  return parse


def name_list(text: str) -> list[str]:
  """Splits a comma (or space) separated list of names, dropping empty items.

  Example:
    >>> name_list("adamw, dualoptim_plus")
    ['adamw', 'dualoptim_plus']
  """
  return [x for x in text.replace(" ", ",").split(",") if x]
