"""The runtime in a fresh virtual environment with only numpy and onnxruntime installed."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
#: every built-in bundle kind -> the fixture (tests/deploy/conftest.py) that exports one
KIND_FIXTURES = {
    "gradient": "cavia",
    "context": "context",
    "history": "rma",
    "taskrate": "taskrate",
    "cavia-encoder": "cavia_encoder",
    "recurrent": "recurrent",
}

SCRIPT = textwrap.dedent(
    """
    import importlib, json, sys

    for name in ("torch", "pybullet", "gymnasium"):
        try:
            importlib.import_module(name)
        except ImportError:
            pass
        else:
            raise SystemExit(f"{name} is importable in the runtime-only environment")

    import numpy
    import onnxruntime
    from fake_robot import FakeCartPole
    from robometa.deploy import Adapter
    from robometa.deploy.loop import format_table, run_rounds

    bundle, state = sys.argv[1], sys.argv[2]
    adapter = Adapter.load(bundle, capacity=40)
    results = run_rounds(adapter, FakeCartPole(), rounds=2, support=40, steps=2, seed=0)
    print(format_table(results))
    adapter.save_state(state)
    restored = Adapter.load(bundle)
    restored.load_state(state)
    heavy = {"torch", "pybullet", "gymnasium", "onnx", "yaml"}
    print(json.dumps({
        "rounds": [r.to_dict() for r in results],
        "restored_buffer": len(restored.buffer),
        "same_action": restored.act([0.01, 0.0, 0.02, 0.0]) == adapter.act([0.01, 0.0, 0.02, 0.0]),
        "modules": sorted({m.split(".")[0] for m in sys.modules} & heavy),
        "onnxruntime": onnxruntime.__version__,
        "numpy": numpy.__version__,
    }))
    """
)


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kwargs)


def declared_minimums() -> list[str]:
    """The deploy extra's lower bounds as exact pins: ``numpy>=1.24`` -> ``numpy==1.24``."""
    text = (REPO / "pyproject.toml").read_text()  # tomllib is 3.11+; the line is simple
    deploy = re.findall(r'"([^"]+)"', re.search(r"^deploy = \[(.*)\]$", text, re.M).group(1))
    pins = [req.replace(">=", "==") for req in deploy]
    assert sorted(p.split("==")[0] for p in pins) == ["numpy", "onnxruntime"], deploy
    assert all("==" in p and "," not in p for p in pins), deploy
    return pins


@pytest.mark.slow
@pytest.mark.parametrize("versions", ["newest", "declared minimums"])
def test_adaptation_loop_runs_with_numpy_and_onnxruntime_only(
    request: pytest.FixtureRequest, tmp_path: Path, versions: str
) -> None:
    """The runtime works at both ends of the declared ranges (pyproject's ``deploy`` extra),
    with a bundle of every built-in kind (:data:`KIND_FIXTURES`)."""
    venv = tmp_path / "venv"
    made = run([sys.executable, "-m", "venv", str(venv)])
    assert made.returncode == 0, made.stderr
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    wanted = ["numpy", "onnxruntime"] if versions == "newest" else declared_minimums()
    installed = run([str(python), "-m", "pip", "install", "-q", *wanted])
    assert installed.returncode == 0, installed.stdout + installed.stderr

    # The deploy package as robometa.deploy, next to the (light) robometa/__init__.py: the
    # README's device install, nothing else of robometa.
    site = tmp_path / "site"
    (site / "robometa").mkdir(parents=True)
    shutil.copy(REPO / "robometa" / "__init__.py", site / "robometa" / "__init__.py")
    shutil.copytree(
        REPO / "deploy", site / "robometa" / "deploy", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(Path(__file__).with_name("fake_robot.py"), site / "fake_robot.py")
    (tmp_path / "loop.py").write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env |= {"PYTHONPATH": str(site), "PYTHONNOUSERSITE": "1"}

    kinds = {}
    for fixture in KIND_FIXTURES.values():
        built = request.getfixturevalue(fixture)
        bundle = shutil.copytree(built.path, tmp_path / built.path.name)
        kind = json.loads((bundle / "manifest.json").read_text())["kind"]
        result = run(
            [str(python), str(tmp_path / "loop.py"), str(bundle), str(tmp_path / f"{kind}.npz")],
            env=env,
            cwd=tmp_path,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        doc = json.loads(result.stdout.strip().splitlines()[-1])
        assert [r["round"] for r in doc["rounds"]] == [0, 1, 2], kind
        assert all(r["report"]["n_transitions"] == 40 for r in doc["rounds"][1:]), kind
        assert doc["restored_buffer"] == 40 and doc["same_action"], kind
        assert doc["modules"] == [], kind
        kinds[kind] = bundle
    assert sorted(kinds) == sorted(KIND_FIXTURES)
    if versions != "newest":
        got = {"numpy": doc["numpy"], "onnxruntime": doc["onnxruntime"]}
        for pin in wanted:
            name, version = pin.split("==")
            assert got[name].split(".")[:2] == version.split(".")[:2], (pin, got)

    bundle = kinds["gradient"]
    cli = [str(python), "-m", "robometa.deploy.cli"]
    for kind, path in kinds.items():
        info = run([*cli, "info", "--bundle", str(path)], env=env, cwd=tmp_path)
        assert info.returncode == 0 and "verified" in info.stdout, (kind, info.stderr)
    sim = run(
        [*cli, "adapt", "--bundle", str(bundle), "--sample-test-task", "1"], env=env, cwd=tmp_path
    )
    assert sim.returncode == 2 and "need gymnasium and PyBullet" in sim.stderr


def test_the_venv_test_covers_every_builtin_kind() -> None:
    from robometa.deploy.kinds import known_kinds

    assert sorted(KIND_FIXTURES) == sorted(known_kinds())
