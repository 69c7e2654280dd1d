"""A regular (non-editable) install works outside the checkout: shipped configs by name."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel_target(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from this checkout, installed (no deps) into a fresh folder."""
    tmp = tmp_path_factory.mktemp("wheel")
    setuptools = tuple(int(x) for x in importlib.metadata.version("setuptools").split(".")[:2])
    build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp / "dist")]
    if setuptools >= (68, 0):
        build.append("--no-build-isolation")  # the build backend here is new enough
    subprocess.run([*build, str(ROOT)], check=True, capture_output=True)
    (wheel,) = (tmp / "dist").glob("robometa-*.whl")
    target = tmp / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        capture_output=True,
    )
    return target


def _robometa(target: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """The ``robometa`` command as the wheel installs it, run from ``cwd``."""
    env = {**os.environ, "PYTHONPATH": str(target)}
    code = "import sys; from robometa.cli import main; sys.exit(main())"
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_wheel_ships_the_configs_and_trains_one_by_name_from_another_directory(
    wheel_target: Path, tmp_path: Path
):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = _robometa(wheel_target, elsewhere, "configs", "cartpole_dr")  # prints the shipped file
    assert where.returncode == 0, where.stderr
    assert "algorithm: dqn" in where.stdout
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import robometa, robometa.configs as c, robometa.quickstart as q;"
            "print(robometa.__file__); print(c.resolve('cartpole_dr')); print(q.CONFIGS)",
        ],
        cwd=elsewhere,
        env={**os.environ, "PYTHONPATH": str(wheel_target)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    # The installed copy is what ran, not this checkout, and the quickstart's configs are in it.
    assert all(Path(p).is_relative_to(wheel_target) and Path(p).exists() for p in probe), probe

    listing = _robometa(wheel_target, elsewhere, "configs")
    assert listing.returncode == 0, listing.stderr
    names = [line.split()[0] for line in listing.stdout.splitlines()[1:] if line.strip()]
    for name in ("cartpole_cavia", "cartpole_dr", "quickstart", "diffdrive_cavia"):
        assert name in names

    run = _robometa(
        wheel_target,
        elsewhere,
        "train",
        "cartpole_cavia",
        "--steps",
        "400",
        "--out",
        "run",
        "--set",
        "logging.progress=false",
        "--set",
        "logging.eval_every=0",
    )
    assert run.returncode == 0, run.stderr
    for name in ("policy.pt", "metrics.csv", "config.yaml", "learning_curve.png"):
        assert (elsewhere / "run" / name).stat().st_size > 0, name
