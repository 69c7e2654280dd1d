"""Print one of the README's two opening commands: ``main`` (the first) or ``test`` (the second).

CI runs the printed text itself, so the command users copy is the command CI passes. Only the
standard library: it runs before anything is installed.
"""

from __future__ import annotations

import sys
from pathlib import Path

WHICH = {"main": 0, "test": 1}
README = Path(__file__).resolve().parents[1] / "README.md"


def readme_command(which: str, readme: Path = README) -> str:
    """The ``which`` command: the body of the README's first or second ```bash block, one line."""
    blocks = readme.read_text(encoding="utf-8").split("```bash\n")[1:]
    if which not in WHICH or len(blocks) <= WHICH[which]:
        raise SystemExit(f"readme_command: no {which!r} command in {readme} (choices: main, test)")
    body = blocks[WHICH[which]].split("```", 1)[0].strip()
    if "\n" in body:
        raise SystemExit(f"readme_command: the {which} command in {readme} is not one line")
    return body


if __name__ == "__main__":
    print(readme_command(sys.argv[1] if len(sys.argv) > 1 else "test"))
