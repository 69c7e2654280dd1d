"""DynamicsSpace, Task and task files: validation, sampling and exact round-trips."""

from __future__ import annotations

import pytest
from robometa.envs import Task, dump_tasks, load_tasks
from robometa.envs.cartpole import CARTPOLE_DYNAMICS as SPACE
from robometa.envs.dynamics import Param


def test_task_is_immutable_and_hashable():
    task = SPACE.nominal()
    with pytest.raises(TypeError):
        task["cart_mass"] = 2.0  # type: ignore[index]
    with pytest.raises(AttributeError):
        task.x = 1  # type: ignore[attr-defined]
    assert {task: 1}[SPACE.nominal()] == 1


def test_task_pickles_to_an_equal_immutable_task():
    import pickle

    task = SPACE.nominal()
    back = pickle.loads(pickle.dumps(task))  # what a worker process of the evaluation gets
    assert back == task and hash(back) == hash(task) and type(back) is type(task)
    with pytest.raises(AttributeError):
        back.x = 1  # type: ignore[attr-defined]


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_task_file_round_trips_exactly(tmp_path, suffix):
    tasks = SPACE.sample(6, seed=0, split="test")
    path = tmp_path / f"tasks{suffix}"
    dump_tasks(tasks, path, env_id="robometa/CartPole-v0")
    assert load_tasks(path, SPACE) == tasks


def test_task_file_missing_parameters_take_nominal(tmp_path):
    path = tmp_path / "robots.yaml"
    path.write_text("tasks:\n  - {motor_sign: -1}\n  - {pole_length: 1.3, latency_steps: 2}\n")
    first, second = load_tasks(path, SPACE)
    assert first["motor_sign"] == -1 and first["cart_mass"] == SPACE["cart_mass"].nominal
    assert second["pole_length"] == 1.3 and second["latency_steps"] == 2


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("tasks: [{pole_lenght: 1.0}]", r"unknown dynamics parameter 'pole_lenght'.*tasks\[0\]"),
        ("tasks: [{}, {cart_mass: -2}]", r"cart_mass.*-2.*physical range.*tasks\[1\]"),
        ("tasks: [{latency_steps: 1.5}]", r"latency_steps.*whole number"),
        ("tasks: [{motor_sign: 0}]", r"motor_sign.*0.*not one of \[-1, 1\]"),
        ("tasks: [{cart_mass: heavy}]", r"cart_mass.*type str"),
        ("tasks: [[1, 2]]", r"must be a mapping"),
        ("robots: []", r"'tasks' list"),
        ("tasks: []", r"non-empty list"),
        ("tasks: [{cart_mass: 1.0}", r"not valid"),
    ],
)
def test_malformed_task_file_names_file_and_problem(tmp_path, text, match):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=match) as err:
        load_tasks(path, SPACE)
    assert "bad.yaml" in str(err.value)


def test_missing_task_file_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="cannot read task file .*nope.yaml"):
        load_tasks(tmp_path / "nope.yaml", SPACE)


def test_overrides_replace_ranges_and_reject_unknown_keys():
    space = SPACE.with_overrides(
        {"motor_sign": {"train": [1]}, "pole_length": {"test": [0.5, 3.0]}}
    )
    assert {t["motor_sign"] for t in space.sample(20, seed=0)} == {1}
    assert space["pole_length"].test == (0.5, 3.0)
    with pytest.raises(ValueError, match="unknown parameter 'gravity'.*exp.yaml"):
        SPACE.with_overrides({"gravity": {"train": [1, 2]}}, source="exp.yaml")
    with pytest.raises(ValueError, match=r"pole_length.trian: unknown key"):
        SPACE.with_overrides({"pole_length": {"trian": [1, 2]}})
    with pytest.raises(ValueError, match="pole_length.*-1.0.*physical range"):
        SPACE.with_overrides({"pole_length": {"train": [-1.0, 2.0]}})


def test_param_definition_errors():
    with pytest.raises(ValueError, match="low <= high"):
        Param("x", "m", 1.0, (2.0, 1.0), (0.0, 3.0))
    with pytest.raises(ValueError, match="log-uniform"):
        Param("x", "m", 1.0, (0.0, 1.0), (0.0, 3.0), "loguniform")


def test_normalized_vector_is_in_unit_range_for_train_tasks():
    for task in SPACE.sample(30, seed=4):
        vec = SPACE.normalized(task)
        assert vec.shape == (len(SPACE),) and (abs(vec) <= 1.0 + 1e-6).all()
    assert Task(SPACE.nominal()) == SPACE.nominal()
