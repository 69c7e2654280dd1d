"""Task files from users: refused in one line naming file, task, parameter, value and range.

And the safe reader under them (``robometa.envs.safe_load``): no aliases, no duplicate keys,
strict UTF-8, a size and a depth limit; writing a task file is all or nothing.
``BAD_TASK_FILES`` is data a benchmark can replay.
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import pytest
from robometa.envs import dump_tasks, load_tasks
from robometa.envs.cartpole import CARTPOLE_DYNAMICS as SPACE

HUGE = "1" + "0" * 400  # 10**400: an int Python reads, a float64 cannot hold


def _laughs(levels: int) -> str:
    lines = ["tasks:", "  - &t0 {cart_mass: 1.0}"]
    for i in range(1, levels):
        lines.append(f"  - &t{i} [{', '.join([f'*t{i - 1}'] * 9)}]")
    return "\n".join(lines) + "\n"


#: (name, file name, content, substrings of the error message besides the file's path)
BAD_TASK_FILES: list[tuple[str, str, str | bytes, tuple[str, ...]]] = [
    ("alias", "t.yaml", "tasks:\n  - &t {cart_mass: 1.5}\n  - *t\n", ("line 2", "anchor &t")),
    ("alias bomb", "t.yaml", _laughs(10), ("anchor &t0",)),
    (
        "duplicate parameter",
        "t.yaml",
        "tasks:\n  - {cart_mass: 1.0, cart_mass: 2.0}\n",
        ("duplicate key 'cart_mass'", "line 2"),
    ),
    (
        "duplicate tasks key",
        "t.yaml",
        "tasks: [{}]\ntasks: [{cart_mass: 2.0}]\n",
        ("duplicate key 'tasks'",),
    ),
    (
        "duplicate JSON key",
        "t.json",
        '{"tasks": [{"cart_mass": 1.0, "cart_mass": 2.0}]}',
        ("duplicate key 'cart_mass'",),
    ),
    (
        "10**400 in YAML",
        "t.yaml",
        f"tasks: [{{cart_mass: {HUGE}}}]",
        ("cart_mass", "physical range", "tasks[0]"),
    ),
    (
        "10**400 in JSON",
        "t.json",
        f'{{"tasks": [{{}}, {{"pole_length": {HUGE}}}]}}',
        ("pole_length", "tasks[1]", "physical range"),
    ),
    (
        "an integer of 5000 digits",
        "t.yaml",
        "tasks: [{cart_mass: 1" + "0" * 5000 + "}]",
        ("5001 characters",),
    ),
    ("JSON NaN", "t.json", '{"tasks": [{"cart_mass": NaN}]}', ("NaN is not a JSON number",)),
    ("JSON Infinity", "t.json", '{"tasks": [{"cart_mass": -Infinity}]}', ("-Infinity",)),
    ("YAML .inf", "t.yaml", "tasks: [{cart_mass: .inf}]", ("cart_mass", "inf", "physical range")),
    (
        "integer keys",
        "t.yaml",
        "tasks: [{1: 2.0, zz: 3.0}]",
        ("task key 1 (int)", "tasks[0]", "cart_mass"),
    ),
    ("boolean key", "t.yaml", "tasks: [{true: 2.0}]", ("task key True (bool)",)),
    (
        "string value",
        "t.yaml",
        "tasks: [{cart_mass: heavy}]",
        ("cart_mass", "type str", "[0.001, 100.0] (kg)"),
    ),
    (
        "long string value",
        "t.yaml",
        "tasks: [{cart_mass: " + "x" * 5000 + "}]",
        ("cart_mass", "type str", "5002 characters"),
    ),
    ("list value", "t.yaml", "tasks: [{cart_mass: [1, 2]}]", ("cart_mass", "type list")),
    ("null value", "t.yaml", "tasks: [{cart_mass: null}]", ("cart_mass", "NoneType")),
    ("a task that is a list", "t.yaml", "tasks: [[1, 2]]", ("must be a mapping", "tasks[0]")),
    ("tasks a mapping", "t.yaml", "tasks: {cart_mass: 1.0}", ("non-empty list",)),
    (
        "unknown top-level key",
        "t.yaml",
        "tasks: [{}]\nrobots: [{}]\n",
        ("unknown top-level key 'robots'", "env, tasks"),
    ),
    ("env not a string", "t.yaml", "env: [1]\ntasks: [{}]\n", ("'env' must be an env id",)),
    ("latin-1", "t.yaml", b"tasks: [{}]\n# \xe9\n", ("not UTF-8", "byte offset 14")),
    ("UTF-16", "t.json", '{"tasks": [{}]}'.encode("utf-16"), ("not UTF-8", "byte offset 0")),
    ("oversized", "t.yaml", "tasks: [{}]\n" + "# padding\n" * 110_000, ("1 MiB",)),
    ("JSON nested 100000 deep", "t.json", "[" * 100_000 + "]" * 100_000, ("nested deeper",)),
    ("YAML nested 20 deep", "t.yaml", "tasks: " + "[" * 20 + "]" * 20, ("nested deeper than 16",)),
    ("python tag", "t.yaml", "tasks: [!!python/object/apply:os.getpid []]", ("constructor",)),
    ("two documents", "t.yaml", "tasks: [{}]\n---\ntasks: [{}]\n", ("second YAML document",)),
    ("not valid JSON", "t.json", '{"tasks": [{"cart_mass": 1.0}', ("not valid JSON", "line 1")),
    (
        "not valid YAML",
        "t.yaml",
        "tasks: [{cart_mass: 1.0}",
        ("not valid YAML", "line 2, column 1"),
    ),
]


@pytest.mark.parametrize(
    ("name", "filename", "content", "needles"), BAD_TASK_FILES, ids=[c[0] for c in BAD_TASK_FILES]
)
def test_a_bad_task_file_is_a_value_error_naming_the_file(
    tmp_path: Path, name: str, filename: str, content: str | bytes, needles: tuple[str, ...]
) -> None:
    path = tmp_path / filename
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    t = time.perf_counter()
    with pytest.raises(ValueError) as err:
        load_tasks(path, SPACE)
    assert time.perf_counter() - t < 5
    message = str(err.value)
    assert type(err.value).__name__ in ("ValueError", "InputError")
    assert str(path) in message and "\n" not in message and len(message) < 600
    for needle in needles:
        assert needle in message


def test_an_alias_bomb_task_file_is_refused_within_a_second(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(_laughs(12))  # 9**11 tasks once expanded
    t = time.perf_counter()
    with pytest.raises(ValueError, match=r"bomb\.yaml, line 2, column 5: YAML anchor &t0"):
        load_tasks(path, SPACE)
    assert time.perf_counter() - t < 1.0


def test_what_dump_tasks_writes_reads_back_in_both_formats(tmp_path: Path) -> None:
    tasks = SPACE.sample(5, seed=3, split="test")
    for name in ("robots.yaml", "robots.json", "ROBOTS.JSON"):
        dump_tasks(tasks, tmp_path / name, env_id="robometa/CartPole-v0")
        assert load_tasks(tmp_path / name, SPACE) == tasks
    assert (tmp_path / "ROBOTS.JSON").read_text().startswith("{")


def test_a_byte_order_mark_and_an_env_key_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.yaml"
    path.write_bytes(b"\xef\xbb\xbfenv: robometa/CartPole-v0\ntasks: [{cart_mass: 1.5}]\n")
    (task,) = load_tasks(path, SPACE)
    assert task["cart_mass"] == 1.5


def test_dump_tasks_into_an_unwritable_path_names_it_and_leaves_nothing(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a regular file")
    with pytest.raises(ValueError, match=r"cannot write task file .*blocker/robots\.yaml: Not a"):
        dump_tasks([SPACE.nominal()], blocker / "robots.yaml")
    assert blocker.read_text() == "a regular file"


def test_dump_tasks_on_a_full_disk_keeps_the_old_file_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "robots.yaml"
    dump_tasks([SPACE.nominal()], path)
    before = path.read_bytes()

    def full(self: Path, target: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "replace", full)
    with pytest.raises(ValueError, match=r"cannot write task file .*robots\.yaml: No space left"):
        dump_tasks(SPACE.sample(3, seed=0), path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["robots.yaml"]


# ------------------------------------------------------------------------ the safe reader


def test_duplicate_keys_name_both_lines() -> None:
    from robometa.envs.safe_load import InputError, parse_yaml

    with pytest.raises(InputError) as err:
        parse_yaml("a: 1\nb:\n  c: 2\n  c: 3\n", "config file x.yaml")
    assert str(err.value) == (
        "config file x.yaml, line 4, column 3: duplicate key 'c' (first given at line 3); "
        "give each key once"
    )


def test_plain_documents_read_as_yaml_safe_load_reads_them() -> None:
    import yaml
    from robometa.envs.safe_load import parse_json, parse_yaml

    text = "a: [1, 2.5, {b: null, c: true}]\nd: 1e-3\ne: 1.0e-3\nf: '&not an anchor'\n"
    assert parse_yaml(text, "x") == yaml.safe_load(text)
    assert parse_yaml("", "x") is None
    assert parse_json('{"a": [1, {"b": null}]}', "x") == {"a": [1, {"b": None}]}


def test_dump_yaml_never_writes_an_alias() -> None:
    from robometa.envs.safe_load import dump_yaml, parse_yaml

    shared = [0.5, 1.5]
    data = {"a": shared, "b": shared, "c": {"d": shared}}
    text = dump_yaml(data)
    assert "&" not in text and "*" not in text
    assert parse_yaml(text, "x") == data


def test_the_largest_readable_file_is_exactly_max_bytes(tmp_path: Path) -> None:
    from robometa.envs.safe_load import MAX_BYTES, read_text

    path = tmp_path / "f.yaml"
    path.write_bytes(b"#" * MAX_BYTES)
    assert len(read_text(path, "task file")) == MAX_BYTES
    path.write_bytes(b"#" * (MAX_BYTES + 1))
    with pytest.raises(ValueError, match=r"task file .*f\.yaml is 1,048,577 bytes"):
        read_text(path, "task file")
