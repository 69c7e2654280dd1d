"""The README's generated parts match the code they document."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from robometa.docs import (
    ALGORITHM_TABLE_END,
    ALGORITHM_TABLE_START,
    END,
    START,
    algorithm_table,
    config_reference,
    update_readme,
)

ROOT = Path(__file__).resolve().parents[1]


def test_readme_config_reference_is_current():
    text = (ROOT / "README.md").read_text()
    section = text.split(START, 1)[1].split(END, 1)[0].strip()
    assert section == config_reference().strip(), "run `python -m robometa.docs`"


def test_algorithm_table_lists_the_registry():
    from robometa import algorithms

    lines = algorithm_table().splitlines()
    assert lines[:2] == ["| algorithm | family | adapts | what it is |", "|---|---|---|---|"]
    names = [f"| `{n}`" for n in algorithms.builtin_names()]
    assert [ln.split(" | ")[0] for ln in lines[2:]] == names
    assert lines[2] == (
        "| `dqn` | dqn | no (also evaluated fine-tuned) | Double DQN over the task distribution "
        "(domain randomization); evaluation reports it as `dr` when it trains on the train "
        "tasks |"
    )
    assert "| `cavia` | gradient | yes | CAVIA: adapts only a context vector" in algorithm_table()
    algorithms.register(
        "toy-plugin", "toy_package.module:Toy", family="toy", summary="a toy", adapts=True
    )
    try:  # an installed plug-in does not change robometa's README
        assert "toy-plugin" not in algorithm_table()
    finally:
        algorithms.unregister("toy-plugin")


def test_update_readme_writes_the_algorithm_table_where_its_markers_are(tmp_path):
    readme = tmp_path / "README.md"
    config = f"{START}\n{config_reference()}\n{END}\n"
    readme.write_text(f"# x\n{config}")
    assert update_readme(readme) is False  # no markers: the table is optional
    readme.write_text(f"# x\n{config}{ALGORITHM_TABLE_START}\nstale\n{ALGORITHM_TABLE_END}\ntail\n")
    assert update_readme(readme) is True
    assert readme.read_text() == (
        f"# x\n{config}{ALGORITHM_TABLE_START}\n{algorithm_table()}\n{ALGORITHM_TABLE_END}\ntail\n"
    )
    assert update_readme(readme) is False


def test_readme_algorithm_table_is_current_where_placed():
    text = (ROOT / "README.md").read_text()
    if ALGORITHM_TABLE_START not in text:
        pytest.skip("the README has no algorithm-table markers")
    section = text.split(ALGORITHM_TABLE_START, 1)[1].split(ALGORITHM_TABLE_END, 1)[0].strip()
    assert section == algorithm_table().strip(), "run `python -m robometa.docs`"


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


def _api_snippets() -> list[str]:
    """The ```python blocks of the README's "Python API" section, in order."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Python API\n", 1)[1].split("\n## ", 1)[0]
    return [b.split("```", 1)[0] for b in section.split("```python\n")[1:]]


@pytest.mark.slow
def test_readme_python_api_snippets_run_as_written(tmp_path, monkeypatch, capsys):
    """Train, evaluate, export and adapt, exactly as the README shows them."""
    snippets = _api_snippets()
    assert len(snippets) == 4
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__readme__"}
    for code in snippets:
        exec(compile(code, "README.md:Python API", "exec"), namespace)
    printed = capsys.readouterr().out
    assert "cavia robometa/CartPole-v0 5 steps on 200" in printed
    for name in (
        "runs/api-cavia/policy.pt",
        "eval/api/results.md",
        "eval/api/adaptation.png",
        "bundles/api-cavia/manifest.json",
        "adapter-state.npz",
    ):
        assert (tmp_path / name).stat().st_size > 0, name
    groups = {(r["group"], r["steps"]) for r in namespace["report"]["summary"]}
    assert {("id", 0), ("ood", 0), ("id", 5), ("ood", 5)} <= groups
    assert namespace["result"].steps == 5
    assert f"before {namespace['before']:.1f}  after {namespace['after']:.1f}" in printed
