"""The README's generated parts match the code they document."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from robometa.docs import END, START, config_reference

ROOT = Path(__file__).resolve().parents[1]


def test_readme_config_reference_is_current():
    text = (ROOT / "README.md").read_text()
    section = text.split(START, 1)[1].split(END, 1)[0].strip()
    assert section == config_reference().strip(), "run `python -m robometa.docs`"


def _readme_blocks() -> list[str]:
    """The bodies of the README's ```bash blocks, in order."""
    text = (ROOT / "README.md").read_text()
    return [b.split("```", 1)[0].strip() for b in text.split("```bash\n")[1:]]


def test_readme_opens_with_the_two_commands():
    main, test = _readme_blocks()[:2]
    assert main == "pip install torch==2.13.0 && pip install -e . && robometa quickstart"
    assert test == 'pip install torch==2.13.0 && pip install -e ".[test,bench]" && pytest'


def test_family_pictures_exist():
    for name in ("cartpole", "reacher", "armreach", "diffdrive"):
        png = ROOT / "docs" / "images" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ci_runs_the_readme_test_command_as_written():
    """.ci/run executes the text of the README's second block itself, not a look-alike."""
    out = subprocess.run(
        [sys.executable, str(ROOT / ".ci" / "readme_command.py"), "test"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out == _readme_blocks()[1] + "\n"
    ci = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()]
    runs = [ln for ln in ci if ln and not ln.startswith("#") and "pytest" in ln]
    # The only pytest that CI runs is the one inside the README's command.
    assert runs == [], runs
    assert 'command="$(python .ci/readme_command.py test)"' in ci
    assert 'bash -c "$command"' in ci
    assert ci.index('bash -c "$command"') > ci.index("ruff check .")


def test_no_test_folder_shadows_the_package():
    """Bare ``pytest`` puts tests/ on sys.path: a tests/robometa/ would hide the install."""
    import robometa

    names = {p.name for p in (ROOT / "tests").iterdir() if p.is_dir()}
    assert "robometa" not in names
    assert Path(robometa.__file__).resolve().parent == ROOT / "robometa"
