"""robometa-deploy: ids from the command line never reach gymnasium unchecked, info names the
files beside a bundle, --json is strict JSON."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from robometa.deploy.cli import main


def test_an_env_flag_that_is_not_a_family_is_refused_before_gymnasium_sees_it(
    cavia, tmp_path: Path
) -> None:
    """``gym.make("mod:Id")`` imports ``mod``: the id is checked against the families first."""
    code = (
        "import sys; from robometa.deploy.cli import main; "
        f"rc = main(['adapt', '--bundle', {str(cavia.path)!r}, '--sample-test-task', '0', "
        "'--env', 'this:robometa/CartPole-v0']); "
        "print('imported' if 'this' in sys.modules else 'clean'); sys.exit(rc)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300
    )
    assert done.returncode == 2, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "clean"
    assert "The Zen of Python" not in done.stdout
    assert "--env: 'this:robometa/CartPole-v0' is not a robometa robot family" in done.stderr
    assert "Traceback" not in done.stderr


def test_info_names_the_files_beside_a_bundle(cavia, tmp_path: Path, capsys) -> None:
    copy = Path(shutil.copytree(cavia.path, tmp_path / "bundle"))
    (copy / "notes.txt").write_text("rig 3")
    assert main(["info", "--bundle", str(copy)]) == 0
    out = capsys.readouterr().out
    assert "verified" in out
    assert "not bundle  notes.txt (not in the manifest: never read)" in out


def test_adapt_json_is_strict_json(cavia, tmp_path: Path) -> None:
    """A round without adaptation has NaN losses; the file must still parse as JSON."""
    out = tmp_path / "result.json"
    args = ["adapt", "--bundle", str(cavia.path), "--sample-test-task", "0", "--rounds", "1"]
    assert (
        main([*args, "--support", "20", "--steps", "1", "--eval-episodes", "1", "--json", str(out)])
        == 0
    )
    text = out.read_text()
    assert "NaN" not in text and "Infinity" not in text
    doc = json.loads(text, parse_constant=lambda c: pytest.fail(f"invalid JSON token {c}"))
    assert [r["round"] for r in doc["rounds"]] == [0, 1]
