"""Shipped configs can be named from anywhere: ``robometa configs`` and ``robometa train NAME``."""

from __future__ import annotations

from pathlib import Path

import pytest
import robometa.configs

import robometa
from robometa.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_every_yaml_in_configs_is_shipped_under_its_name():
    shipped = robometa.configs.available()
    assert sorted(shipped) == sorted(p.stem for p in (ROOT / "configs").glob("*.yaml"))
    assert all(p.is_file() for p in shipped.values())


def test_configs_lists_each_shipped_config_on_one_line(capsys):
    assert main(["configs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line for line in lines[1:] if line and not line.startswith("train")}
    assert set(rows) == set(robometa.configs.available())
    assert rows["cartpole_cavia"].split()[1:4] == ["cavia", "CartPole-v0", "40000"]
    assert "CAVIA on the cart-pole family" in rows["cartpole_cavia"]


def test_configs_name_prints_the_file(capsys):
    assert main(["configs", "cartpole_dr"]) == 0
    assert capsys.readouterr().out == (ROOT / "configs" / "cartpole_dr.yaml").read_text()


@pytest.mark.parametrize("spec", ["cartpole_dr", "cartpole_dr.yaml"])
def test_a_shipped_name_resolves_from_any_directory(spec, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert robometa.configs.resolve(spec) == robometa.configs.available()["cartpole_dr"]


def test_a_path_wins_over_a_shipped_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cartpole_dr.yaml").write_text("algorithm: dqn\n")
    assert robometa.configs.resolve("cartpole_dr.yaml") == Path("cartpole_dr.yaml")


def test_an_unknown_config_name_is_an_error_with_a_suggestion(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "cartpole_cavai", "--out", "run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("robometa train: error: config 'cartpole_cavai': no such file")
    assert "did you mean cartpole_cavia?" in err
    assert not (tmp_path / "run").exists()
    assert main(["configs", "nope"]) == 2
    assert "no shipped config of that name" in capsys.readouterr().err


def test_version_flag_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"robometa {robometa.__version__}"
