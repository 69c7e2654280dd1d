"""Config loading: every mistake a user can make gets an error naming key, value and file."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

from robometa.config import Config, config_from_dict, load_config, reference_table

REPO = Path(__file__).resolve().parents[2]
SHIPPED = sorted((REPO / "configs").glob("*.yaml"))

BASE = {
    "algorithm": "dqn",
    "env": {"id": "robometa/CartPole-v0", "tasks": "nominal", "num_envs": 2},
    "network": {"hidden": [32, 32]},
    "dqn": {"learning_rate": 1.0e-3, "gamma": 0.99, "batch_size": 64},
}


def write(tmp_path: Path, data: object, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def with_change(section: str | None, key: str, value: object) -> dict:
    data = copy.deepcopy(BASE)
    (data.setdefault(section, {}) if section else data)[key] = value
    return data


class TestBadConfigErrors:
    @pytest.mark.parametrize(
        ("section", "key", "value", "pattern"),
        [
            (None, "lerning_rate", 0.1, r"unknown config key 'lerning_rate'"),
            ("dqn", "learning_rte", 3e-4, r"unknown config key 'dqn\.learning_rte'"),
            ("env", "num_env", 4, r"unknown config key 'env\.num_env'"),
            ("dqn", "batch_size", "big", r"'dqn\.batch_size': 'big' is not an integer"),
            ("dqn", "gamma", "high", r"'dqn\.gamma': 'high' is not a number"),
            ("logging", "progress", "maybe", r"'logging\.progress': 'maybe' is not a boolean"),
            ("network", "hidden", [64, 0], r"'network\.hidden': \[64, 0\] must be a non-empty"),
            (
                "dqn",
                "gamma",
                1.5,
                r"'dqn\.gamma': 1\.5 is outside the allowed range \[0\.0, 1\.0\]",
            ),
            ("env", "num_envs", 0, r"'env\.num_envs': 0 is outside the allowed range \[1, 256\]"),
            ("dqn", "learning_rate", -1e-3, r"'dqn\.learning_rate': -0\.001 is outside"),
            (None, "algorithm", "ppo", r"'algorithm': 'ppo' is not one of \['dqn', 'oracle'"),
            ("env", "tasks", "all", r"'env\.tasks': 'all' is not one of \['train', 'nominal'\]"),
        ],
    )
    def test_error_names_key_value_and_file(
        self, tmp_path: Path, section: str | None, key: str, value: object, pattern: str
    ) -> None:
        path = write(tmp_path, with_change(section, key, value))
        with pytest.raises(ValueError, match=pattern) as err:
            load_config(path)
        assert str(path) in str(err.value)

    def test_unknown_key_suggests_the_near_miss_and_lists_the_section(self, tmp_path: Path) -> None:
        path = write(tmp_path, with_change("dqn", "learning_rte", 3e-4))
        with pytest.raises(ValueError) as err:
            load_config(path)
        message = str(err.value)
        assert "did you mean 'dqn.learning_rate'?" in message
        assert "allowed keys in dqn: total_steps, learning_rate" in message

    def test_section_that_is_not_a_mapping(self, tmp_path: Path) -> None:
        path = write(tmp_path, {**BASE, "dqn": 5})
        with pytest.raises(ValueError, match=r"config section 'dqn' must be a mapping, got 5"):
            load_config(path)

    def test_epsilon_end_above_start(self, tmp_path: Path) -> None:
        data = with_change("dqn", "epsilon_end", 0.5)
        data["dqn"]["epsilon_start"] = 0.2
        path = write(tmp_path, data)
        with pytest.raises(ValueError, match=r"'dqn\.epsilon_end': 0\.5 must not exceed"):
            load_config(path)

    def test_missing_file(self, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match=r"cannot read config file .*nope\.yaml"):
            load_config(tmp_path / "nope.yaml")

    def test_invalid_yaml(self, tmp_path: Path) -> None:
        path = tmp_path / "broken.yaml"
        path.write_text("dqn:\n  gamma: [0.9\n")
        with pytest.raises(ValueError, match=r"config file .*broken\.yaml is not valid YAML"):
            load_config(path)

    def test_top_level_must_be_a_mapping(self, tmp_path: Path) -> None:
        path = tmp_path / "list.yaml"
        path.write_text("- dqn\n- oracle\n")
        with pytest.raises(ValueError, match=r"list\.yaml: the top level must be a mapping"):
            load_config(path)


class TestSetOverrides:
    def test_values_are_parsed_and_typed(self, tmp_path: Path) -> None:
        path = write(tmp_path, BASE)
        cfg = load_config(
            path,
            [
                "dqn.learning_rate=3e-4",
                "dqn.batch_size=128",
                "network.hidden=[256, 256]",
                "logging.progress=false",
                "env.tasks=train",
            ],
        )
        assert isinstance(cfg.dqn.learning_rate, float)
        assert cfg.dqn.learning_rate == pytest.approx(3e-4)
        assert cfg.dqn.batch_size == 128 and isinstance(cfg.dqn.batch_size, int)
        assert cfg.network.hidden == [256, 256]
        assert cfg.logging.progress is False
        assert cfg.env.tasks == "train"

    def test_steps_and_seed_shortcuts(self, tmp_path: Path) -> None:
        cfg = load_config(write(tmp_path, BASE), steps=1234, seed=7)
        assert (cfg.dqn.total_steps, cfg.seed) == (1234, 7)

    def test_override_creates_a_missing_section(self, tmp_path: Path) -> None:
        cfg = load_config(write(tmp_path, {"algorithm": "dqn"}), ["meta.meta_batch=4"])
        assert cfg.meta.meta_batch == 4

    @pytest.mark.parametrize(
        ("item", "message"),
        [
            ("dqn.learning_rate", "--set 'dqn.learning_rate': expected key=value"),
            (
                "dqn.learnin_rate=1e-3",
                "--set dqn.learnin_rate=1e-3: unknown key 'dqn.learnin_rate' "
                "(did you mean dqn.learning_rate?)",
            ),
            (  # the section left out
                "learning_rate=1e-3",
                "--set learning_rate=1e-3: unknown key 'learning_rate' "
                "(did you mean dqn.learning_rate?)",
            ),
            (
                "dqn.zzz=1",
                "--set dqn.zzz=1: unknown key 'dqn.zzz'; allowed keys in dqn: total_steps, ",
            ),
            (
                "dqn.batch_size=big",
                "--set dqn.batch_size=big: config key 'dqn.batch_size': 'big' is not an integer",
            ),
            ("dqn.gamma.x=1", "--set dqn.gamma.x=1: 'dqn.gamma' is a value, not a section"),
            (
                "dqn.gamma=2",
                "--set dqn.gamma=2: config key 'dqn.gamma': 2.0 is outside the allowed range",
            ),
            ("network.hidden=[8,", "--set network.hidden=[8,: '[8,' is not a YAML value"),
            (
                "network={hidden: [0]}",
                "--set network={hidden: [0]}: config key 'network.hidden': [0] must be",
            ),
        ],
    )
    def test_a_bad_set_is_blamed_on_set_not_on_the_file(
        self, tmp_path: Path, item: str, message: str
    ) -> None:
        with pytest.raises(ValueError) as err:
            load_config(write(tmp_path, BASE), [item])
        assert str(err.value).startswith(message)
        assert "exp.yaml" not in str(err.value)

    def test_bad_steps_and_seed_are_blamed_on_their_flags(self, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match=r"^--steps 0: config key 'dqn\.total_steps'"):
            load_config(write(tmp_path, BASE), steps=0)
        with pytest.raises(ValueError, match=r"^--seed -1: config key 'seed'"):
            load_config(write(tmp_path, BASE), seed=-1)

    def test_a_mistake_in_the_file_is_still_blamed_on_the_file(self, tmp_path: Path) -> None:
        path = write(tmp_path, with_change("dqn", "learning_rte", 3e-4))
        with pytest.raises(ValueError, match=r"unknown config key 'dqn\.learning_rte' in .*exp"):
            load_config(path, ["dqn.gamma=0.5"])

    def test_a_conflict_across_keys_names_the_file_and_the_overrides(self, tmp_path: Path) -> None:
        with pytest.raises(ValueError) as err:
            load_config(write(tmp_path, BASE), ["dqn.epsilon_end=0.5", "dqn.epsilon_start=0.2"])
        assert "must not exceed dqn.epsilon_start = 0.2" in str(err.value)
        assert str(err.value).endswith(
            "exp.yaml with --set dqn.epsilon_end=0.5, --set dqn.epsilon_start=0.2"
        )

    def test_a_set_into_a_free_form_mapping_is_kept(self, tmp_path: Path) -> None:
        cfg = load_config(write(tmp_path, BASE), ["env.dynamics.pole_length.train=[0.4, 0.6]"])
        assert cfg.env.dynamics == {"pole_length": {"train": [0.4, 0.6]}}

    def test_the_cli_names_set(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        from robometa.cli import main as cli_main

        path = write(tmp_path, BASE)
        code = cli_main(
            ["train", str(path), "--out", str(tmp_path / "run"), "--set", "dqn.learnin_rate=1e-3"]
        )
        assert code == 2 and not (tmp_path / "run").exists()
        assert capsys.readouterr().err == (
            "robometa train: error: --set dqn.learnin_rate=1e-3: unknown key "
            "'dqn.learnin_rate' (did you mean dqn.learning_rate?)\n"
        )


class TestNoMutation:
    def test_loading_twice_gives_equal_configs_and_leaves_the_file_alone(
        self, tmp_path: Path
    ) -> None:
        path = write(tmp_path, BASE)
        text = path.read_text()
        first = load_config(path, ["dqn.gamma=0.5", "network.hidden=[8]"], steps=10, seed=3)
        second = load_config(path)
        assert path.read_text() == text
        assert first.dqn.gamma == 0.5 and second.dqn.gamma == 0.99
        assert second.network.hidden == [32, 32] and second.seed == 0
        assert second == load_config(path)

    def test_caller_dict_is_unchanged_and_not_shared(self) -> None:
        data = copy.deepcopy(BASE)
        data["env"]["dynamics"] = {"pole_length": {"train": [0.8, 1.2]}}
        snapshot = copy.deepcopy(data)
        cfg = config_from_dict(data)
        assert data == snapshot
        assert isinstance(cfg.dqn.learning_rate, float)
        # Editing the caller's dict afterwards must not reach into the config.
        data["network"]["hidden"].append(999)
        data["env"]["dynamics"]["pole_length"]["train"][0] = 0.1
        assert cfg.network.hidden == [32, 32]
        assert cfg.env.dynamics == {"pole_length": {"train": [0.8, 1.2]}}

    def test_config_is_frozen(self) -> None:
        cfg = config_from_dict(BASE)
        with pytest.raises(AttributeError):
            cfg.dqn.gamma = 0.5  # type: ignore[misc]

    def test_dump_round_trips(self, tmp_path: Path) -> None:
        cfg = config_from_dict(BASE)
        cfg.dump(tmp_path / "config.yaml")
        assert load_config(tmp_path / "config.yaml") == cfg


def test_reference_table_documents_every_key() -> None:
    table = reference_table()

    def keys(d: dict, prefix: str = "") -> list[str]:
        out = []
        for k, v in d.items():
            if isinstance(v, dict) and k != "dynamics":
                out += keys(v, f"{prefix}{k}.")
            else:
                out.append(f"{prefix}{k}")
        return out

    all_keys = keys(Config().to_dict())
    assert len(all_keys) > 40
    for key in all_keys:
        assert re.search(rf"^\| `{re.escape(key)}` \|", table, re.M), key
    assert "(range [0.0, 1.0])" in table  # ranges are shown


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_config_loads(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.env.id.startswith("robometa/")
    assert cfg.dqn.total_steps >= 1000


def test_every_number_key_has_an_upper_bound() -> None:
    """A value that could only exhaust memory or time is refused, not run."""
    import dataclasses
    import typing

    def walk(cls: type, prefix: str = "") -> list[tuple[str, object, dict]]:
        out = []
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):
                out += walk(hints[f.name], f"{prefix}{f.name}.")
            else:
                out.append((f"{prefix}{f.name}", hints[f.name], f.metadata))
        return out

    ints = [(key, meta) for key, tp, meta in walk(Config) if tp is int]
    assert len(ints) > 20
    unbounded = [key for key, meta in ints if meta.get("hi") is None or meta.get("lo") is None]
    assert unbounded == []


@pytest.mark.parametrize(
    ("key", "shown"),
    [
        ("seed", "(range [0, 4_294_967_295])"),
        ("dqn.total_steps", "(range [1, 10_000_000_000])"),
        ("dqn.buffer_size", "(range [1, 10_000_000])"),
        ("meta.task_pool", "(range [0, 1024])"),
        ("network.hidden", "each in [1, 4096], at most 10_000_000 weights"),
        ("env.id", "(one of `robometa/CartPole-v0`"),
    ],
)
def test_reference_table_shows_the_maxima(key: str, shown: str) -> None:
    (row,) = [r for r in reference_table().splitlines() if r.startswith(f"| `{key}` |")]
    assert shown in row


@pytest.mark.parametrize(
    ("section", "key", "value", "accepted"),
    [
        (None, "seed", 2**32 - 1, True),
        (None, "seed", 2**32, False),
        ("dqn", "total_steps", 10**10, True),
        ("dqn", "total_steps", 10**10 + 1, False),
        ("dqn", "buffer_size", 10**7, True),
        ("dqn", "buffer_size", 10**7 + 1, False),
        ("network", "hidden", [4096, 2048], True),  # 8.4 M weights between them
        ("network", "hidden", [4096, 4096], False),
        ("network", "hidden", [4097], False),
        ("network", "hidden", [8] * 8, True),
        ("network", "hidden", [8] * 9, False),
    ],
)
def test_maxima_are_inclusive(
    tmp_path: Path, section: str | None, key: str, value: object, accepted: bool
) -> None:
    path = write(tmp_path, with_change(section, key, value))
    if accepted:
        load_config(path)
    else:
        with pytest.raises(ValueError, match=re.escape(f"{section + '.' if section else ''}{key}")):
            load_config(path)


def test_a_bad_set_into_dynamics_is_blamed_on_set(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as err:
        load_config(write(tmp_path, BASE), ["env.dynamics.pole_length.train=[0.5, x]"])
    assert str(err.value) == (
        "--set env.dynamics.pole_length.train=[0.5, x]: config key "
        "'env.dynamics.pole_length.train': 'x' is not a number"
    )
    with pytest.raises(ValueError, match=r"unknown parameter 'gravity'.*exp\.yaml with --set"):
        load_config(write(tmp_path, BASE), ["env.dynamics.gravity.train=[9, 10]"])


# ------------------------------------------------------------ algorithms from the registry

TOY = "toy-config-dqn"


@pytest.fixture
def toy_algorithm():
    """A toy algorithm registered for one test; its rule records each call and refuses
    ``dqn.batch_size: 13``."""
    import robometa.algorithms as algorithms

    calls: list[tuple[str, str]] = []

    def check(cfg: Config, where: str) -> None:
        calls.append((cfg.algorithm, where))
        if cfg.dqn.batch_size == 13:
            raise ValueError(f"config key 'dqn.batch_size': {TOY} refuses 13{where}")

    algorithms.register(TOY, "robometa.methods.dqn:DQN", family="dqn", check=check)
    try:
        yield calls
    finally:
        algorithms.unregister(TOY)


def test_an_algorithm_registered_at_run_time_is_accepted(toy_algorithm, tmp_path: Path) -> None:
    cfg = config_from_dict({**BASE, "algorithm": TOY})
    assert cfg.algorithm == TOY
    assert load_config(write(tmp_path, BASE), [f"algorithm={TOY}"]).algorithm == TOY
    (row,) = [r for r in reference_table().splitlines() if r.startswith("| `algorithm` |")]
    # the README's reference lists robometa's own algorithms, whatever else is installed
    assert f"`{TOY}`" not in row and "`cavia`" in row


def test_an_unknown_algorithm_is_refused_listing_the_registered_ones(
    toy_algorithm, tmp_path: Path
) -> None:
    import robometa.algorithms as algorithms

    with pytest.raises(ValueError, match="config key 'algorithm'") as err:
        config_from_dict({**BASE, "algorithm": "nope"}, source="exp.yaml")
    message = str(err.value)
    assert "'nope' is not one of" in message and message.endswith(" in exp.yaml")
    assert all(repr(name) in message for name in algorithms.names())
    assert repr(TOY) in message
    with pytest.raises(ValueError, match=r"--set algorithm=nope: .*'nope' is not one of"):
        load_config(write(tmp_path, BASE), ["algorithm=nope"])


def test_an_unregistered_algorithm_is_refused_again(tmp_path: Path) -> None:
    import robometa.algorithms as algorithms

    algorithms.register(TOY, "robometa.methods.dqn:DQN", family="dqn")
    config_from_dict({**BASE, "algorithm": TOY})
    algorithms.unregister(TOY)
    with pytest.raises(ValueError, match=f"'{TOY}' is not one of"):
        config_from_dict({**BASE, "algorithm": TOY})


def test_validation_calls_the_registered_algorithms_check(toy_algorithm, tmp_path: Path) -> None:
    config_from_dict({**BASE, "algorithm": TOY})
    assert toy_algorithm == [(TOY, "")]
    bad = {**BASE, "algorithm": TOY, "dqn": {**BASE["dqn"], "batch_size": 13}}
    with pytest.raises(ValueError, match=rf"dqn\.batch_size': {TOY} refuses 13 in exp\.yaml$"):
        config_from_dict(bad, source="exp.yaml")
    path = write(tmp_path, {**BASE, "algorithm": TOY})
    with pytest.raises(ValueError, match=r"refuses 13 in .*exp\.yaml with --set dqn\.batch_size"):
        load_config(path, ["dqn.batch_size=13"])
    # The rules of single keys come first, then the epsilon rule, then the algorithm's own.
    toy_algorithm.clear()
    first = {**bad, "dqn": {**bad["dqn"], "epsilon_start": 0.1, "epsilon_end": 0.5}}
    with pytest.raises(ValueError, match="dqn.epsilon_end"):
        config_from_dict(first)
    assert toy_algorithm == []
    # Configs of other algorithms never reach it.
    config_from_dict({**BASE, "dqn": {**BASE["dqn"], "batch_size": 13}})
    assert toy_algorithm == []
