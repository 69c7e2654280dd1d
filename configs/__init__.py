"""The shipped experiment configs, installed as package data (``robometa.configs``).

Each ``<name>.yaml`` here can be named on the command line by its name alone
(``robometa train cartpole_cavia``); ``robometa configs`` lists them. This file only makes
the folder importable for :mod:`importlib.resources`; see :func:`resolve`.
"""

from __future__ import annotations

import difflib
from importlib.resources import files
from pathlib import Path


def available() -> dict[str, Path]:
    """Shipped config name -> path, sorted by name."""
    root = Path(str(files(__name__)))
    return {p.stem: p for p in sorted(root.glob("*.yaml"))}


def resolve(spec: str | Path) -> Path:
    """A config given as a path (used as is when the file exists) or a shipped config's name
    (``cartpole_cavia`` or ``cartpole_cavia.yaml``), so a config can be named from any
    directory after a regular install."""
    path = Path(spec)
    if path.is_file():
        return path
    shipped = available()
    name = path.name[: -len(".yaml")] if path.name.endswith(".yaml") else path.name
    if path.parent == Path(".") and name in shipped:
        return shipped[name]
    if path.exists():
        raise FileNotFoundError(f"config {str(spec)!r} is not a file")
    close = difflib.get_close_matches(name, shipped, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise FileNotFoundError(
        f"config {str(spec)!r}: no such file, and no shipped config of that name{hint}; "
        f"shipped: {', '.join(shipped)} (`robometa configs` lists them)"
    )


def summary(path: Path) -> str:
    """The first sentence of the comment that opens a config file."""
    words: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        words.extend(line.lstrip("#").split())
    text = " ".join(words)
    end = text.find(". ")
    return text if end < 0 else text[: end + 1]
