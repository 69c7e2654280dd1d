"""The README's generated parts match the code they document."""

from __future__ import annotations

from pathlib import Path

from robometa.docs import END, START, config_reference

ROOT = Path(__file__).resolve().parents[1]


def test_readme_config_reference_is_current():
    text = (ROOT / "README.md").read_text()
    section = text.split(START, 1)[1].split(END, 1)[0].strip()
    assert section == config_reference().strip(), "run `python -m robometa.docs`"


def test_readme_opens_with_the_two_commands():
    blocks = (ROOT / "README.md").read_text().split("```bash\n")
    assert "robometa quickstart" in blocks[1].split("```")[0]
    assert "pytest" in blocks[2].split("```")[0]


def test_family_pictures_exist():
    for name in ("cartpole", "reacher", "armreach", "diffdrive"):
        png = ROOT / "docs" / "images" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ci_runs_the_readme_test_command():
    """CI installs what the README's test command installs, and runs pytest."""
    command = (ROOT / "README.md").read_text().split("```bash\n")[2].split("```")[0].strip()
    ci = (ROOT / ".ci" / "run").read_text()
    for part in command.split(" && "):
        assert part.replace("pip install", "python -m pip install -q") in ci or part in ci, part
    pytest_lines = [
        line for line in ci.splitlines() if "pytest" in line and not line.startswith("#")
    ]
    options = [line.split("pytest", 1)[1] for line in pytest_lines]
    assert options and all(" -m " not in o and " -k " not in o for o in options), options
