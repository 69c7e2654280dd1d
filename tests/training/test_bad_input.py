"""Bad input to `robometa`: refused before anything runs, in one line naming key, flag or file.

Configs (alias bombs, duplicate keys, non-UTF-8, sizes that cannot work), ``--set`` values,
every subcommand's flags, write failures during training (disk full, read-only, a parent that
is a regular file) and ``--resume`` on checkpoints that are not whole robometa checkpoints.
Each case asserts the exit code, that the error line names what was wrong, that there is no
traceback, and that nothing was created or damaged.

The cases are data at module level (``BAD_CONFIGS``, ``BAD_SETS``, ``BAD_FLAGS``,
``BAD_CHECKPOINTS``) so a benchmark can replay them.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml

import robometa.train as train_module
from robometa.cli import main as cli_main

TINY = {
    "algorithm": "dqn",
    "seed": 1,
    "env": {"id": "robometa/CartPole-v0", "tasks": "nominal", "num_envs": 1},
    "network": {"hidden": [8]},
    "dqn": {"total_steps": 300, "learning_starts": 100, "buffer_size": 500, "batch_size": 16},
    "logging": {
        "log_every": 100,
        "checkpoint_every": 150,
        "progress": False,
        "tensorboard": False,
    },
}
TINY_TEXT = yaml.safe_dump(TINY, sort_keys=False)


def _bomb(levels: int = 9) -> str:
    """A "billion laughs" under env.dynamics: 9 ** levels list entries from ~450 bytes."""
    lines = ["env:", "  dynamics:", "    l0: &l0 [1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    for i in range(1, levels):
        refs = ", ".join([f"*l{i - 1}"] * 9)
        lines.append(f"    l{i}: &l{i} [{refs}]")
    return "\n".join(lines) + "\n"


def _with(section: str, key: str, value: object) -> str:
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in TINY.items()}
    data.setdefault(section, {})[key] = value
    return yaml.safe_dump(data, sort_keys=False)


#: (name, config file text or bytes, substrings the one error line must contain)
BAD_CONFIGS: list[tuple[str, str | bytes, tuple[str, ...]]] = [
    ("alias bomb", "algorithm: dqn\n" + _bomb(), ("line 4, column 9", "YAML anchor &l0 refused")),
    ("self-referencing alias", "env:\n  dynamics: &d {pole_length: *d}\n", ("anchor &d",)),
    ("undefined alias", "seed: *s\n", ("YAML alias *s refused", "line 1")),
    ("anchor on a scalar", "seed: &s 3\n", ("YAML anchor &s refused",)),
    ("merge key", "dqn:\n  <<: {gamma: 0.5}\n", ("merge key '<<'", "line 2")),
    ("duplicate key", "seed: 1\nalgorithm: dqn\nseed: 2\n", ("duplicate key 'seed'", "line 3")),
    ("duplicate nested key", "dqn:\n  gamma: 0.9\n  gamma: 0.5\n", ("duplicate key 'gamma'",)),
    ("duplicate key in a flow mapping", "network: {hidden: [8], hidden: [9]}\n", ("'hidden'",)),
    ("latin-1 comment", b"seed: 1\n# r\xe9glage\n", ("not UTF-8", "byte offset 11")),
    ("latin-1 value", b"algorithm: d\xe9n\n", ("not UTF-8", "0xe9", "byte offset 12")),
    ("oversized file", "seed: 1\n" + "# padding\n" * 110_000, ("1,100,008 bytes", "1 MiB")),
    ("nesting too deep", "env:\n  dynamics: " + "[" * 20 + "]" * 20 + "\n", ("nested deeper",)),
    ("two documents", "seed: 1\n---\nseed: 2\n", ("second YAML document",)),
    ("integer of 5000 digits", "seed: 1" + "0" * 5000 + "\n", ("5001 characters",)),
    ("python tag", "seed: !!python/object/apply:os.getpid []\n", ("constructor",)),
    (
        "buffer_size 10**13",
        _with("dqn", "buffer_size", 10**13),
        ("'dqn.buffer_size'", "[1, 10_000_000]"),
    ),
    (
        "hidden 100000 wide",
        _with("network", "hidden", [100000, 100000]),
        ("'network.hidden'", "[1, 4096]"),
    ),
    ("hidden too many weights", _with("network", "hidden", [4096, 4096]), ("16_777_216 weights",)),
    ("hidden too deep", _with("network", "hidden", [8] * 9), ("9 layers", "8 allowed")),
    (
        "seed beyond 32 bits",
        TINY_TEXT.replace("seed: 1", f"seed: {2**70}"),
        ("'seed'", "4_294_967_295"),
    ),
    (
        "total_steps 10**30",
        _with("dqn", "total_steps", 10**30),
        ("'dqn.total_steps'", "10_000_000_000"),
    ),
    ("learning_starts 10**20", _with("dqn", "learning_starts", 10**20), ("'dqn.learning_starts'",)),
    ("task_pool 10**6", _with("meta", "task_pool", 10**6), ("'meta.task_pool'", "[0, 1024]")),
    ("eval_tasks 10**9", _with("logging", "eval_tasks", 10**9), ("'logging.eval_tasks'", "1000]")),
    ("gradient_steps 10**6", _with("dqn", "gradient_steps", 10**6), ("'dqn.gradient_steps'",)),
    (
        "outer_lr 10**400",
        TINY_TEXT + "meta:\n  outer_lr: 1" + "0" * 400 + "\n",
        ("'meta.outer_lr'", "[0.0, 1.0]"),
    ),
    ("dynamics a list", _with("env", "dynamics", [1, 2]), ("'env.dynamics'", "not a mapping")),
    (
        "dynamics string bound",
        _with("env", "dynamics", {"pole_length": {"train": ["a", 1]}}),
        ("'env.dynamics.pole_length.train'", "'a' is not a number"),
    ),
    (
        "dynamics bound 10**400",
        _with("env", "dynamics", {"pole_length": {"train": [0.5, 10**400]}}),
        ("'env.dynamics.pole_length.train'", "float64"),
    ),
    (
        "dynamics integer key",
        TINY_TEXT.replace("num_envs: 1", "num_envs: 1\n  dynamics: {1: {train: [1, 2]}}"),
        ("'env.dynamics'", "parameter name 1"),
    ),
    (
        "dynamics unknown parameter",
        _with("env", "dynamics", {"gravity": {"train": [9, 10]}}),
        ("'env.dynamics'", "unknown parameter 'gravity'", "pole_length"),
    ),
    (
        "dynamics outside the physical range",
        _with("env", "dynamics", {"pole_length": {"train": [-1.0, 1.0]}}),
        ("'env.dynamics'", "physical range"),
    ),
    (
        "unknown env id",
        _with("env", "id", "robometa/Nope-v0"),
        ("'env.id'", "robometa/CartPole-v0"),
    ),
]

#: (name, the --set item, substrings of the error line, which starts "--set ITEM: ")
BAD_SETS: list[tuple[str, str, tuple[str, ...]]] = [
    ("unclosed list", "network.hidden=[1", ("is not a YAML value",)),
    ("anchor", "network.hidden=&h [8]", ("YAML anchor &h refused",)),
    ("alias", "env.dynamics=*d", ("YAML alias *d refused",)),
    (
        "duplicate key",
        "env.dynamics={pole_length: {train: [0.5, 1]}, pole_length: {test: [0.1, 3]}}",
        ("duplicate key 'pole_length'",),
    ),
    ("integer of 5000 digits", "seed=1" + "0" * 5000, ("5001 characters",)),
    ("buffer_size 10**13", "dqn.buffer_size=10000000000000", ("'dqn.buffer_size'", "10_000_000]")),
    ("hidden 100000 wide", "network.hidden=[100000, 100000]", ("'network.hidden'", "4096]")),
    ("seed 2**70", f"seed={2**70}", ("'seed'", "4_294_967_295]")),
    ("string bound", "env.dynamics.pole_length.train=[a, 1]", ("'a' is not a number",)),
    ("dynamics not a mapping", "env.dynamics.pole_length=5", ("not a mapping",)),
]

NOPE = "/nonexistent/run"
#: (name, argv, substring of the one error line) -- an argparse error names the flag itself
BAD_FLAGS: list[tuple[str, list[str], str]] = [
    ("train --seed -1", ["train", "{config}", "--seed", "-1"], "argument --seed: '-1'"),
    ("train --seed 2**70", ["train", "{config}", "--seed", str(2**70)], "argument --seed"),
    ("train --steps 10**30", ["train", "{config}", "--steps", str(10**30)], "argument --steps"),
    ("train --steps x", ["train", "{config}", "--steps", "x"], "argument --steps: 'x'"),
    ("envs --episodes 0", ["envs", "--episodes", "0"], "argument --episodes: '0'"),
    ("envs --seed -1", ["envs", "--seed", "-1"], "argument --seed: '-1'"),
    (
        "quickstart --meta-steps 0",
        ["quickstart", "--meta-steps", "0", "--out", "{out}"],
        "argument --meta-steps",
    ),
    (
        "quickstart --baseline-steps -5",
        ["quickstart", "--baseline-steps", "-5", "--out", "{out}"],
        "argument --baseline-steps",
    ),
    (
        "quickstart --eval-tasks 0",
        ["quickstart", "--eval-tasks", "0", "--out", "{out}"],
        "argument --eval-tasks",
    ),
    ("quickstart --seed -1", ["quickstart", "--seed", "-1", "--out", "{out}"], "argument --seed"),
    (
        "eval --curve 5000",
        ["eval", NOPE, "--curve", "0,5000", "--out", "{out}"],
        "argument --curve",
    ),
    ("eval --curve a,b", ["eval", NOPE, "--curve", "a,b", "--out", "{out}"], "argument --curve"),
    ("eval --curve -1", ["eval", NOPE, "--curve", "-1", "--out", "{out}"], "argument --curve"),
    (
        "eval --episodes 0",
        ["eval", NOPE, "--episodes", "0", "--out", "{out}"],
        "argument --episodes",
    ),
    (
        "eval --n-tasks 10**6",
        ["eval", NOPE, "--n-tasks", "1000000", "--out", "{out}"],
        "argument --n-tasks",
    ),
    (
        "eval --episodes 10**6",
        ["eval", NOPE, "--episodes", "1000000", "--out", "{out}"],
        "argument --episodes",
    ),
    ("play --seed -1", ["play", NOPE, "--seed", "-1", "--out", "{out}.gif"], "argument --seed"),
    (
        "play --sample-test-task -1",
        ["play", NOPE, "--sample-test-task", "-1", "--out", "{out}.gif"],
        "argument --sample-test-task",
    ),
    (
        "play --episodes 1000",
        ["play", NOPE, "--episodes", "1000", "--out", "{out}.gif"],
        "argument --episodes",
    ),
    (
        "play --fps 100000",
        ["play", NOPE, "--fps", "100000", "--out", "{out}.gif"],
        "argument --fps",
    ),
    (
        "play --every 10**6",
        ["play", NOPE, "--every", "1000000", "--out", "{out}.gif"],
        "argument --every",
    ),
]


def _one_error_line(err: str, command: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith(f"robometa {command}: error: ")]
    assert len(lines) == 1, err
    assert "Traceback" not in err, err
    return lines[0]


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


# ------------------------------------------------------------------------- config files


@pytest.mark.parametrize(("name", "text", "needles"), BAD_CONFIGS, ids=[c[0] for c in BAD_CONFIGS])
def test_a_bad_config_is_one_error_line_naming_it_and_creates_nothing(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    text: str | bytes,
    needles: tuple[str, ...],
) -> None:
    config = tmp_path / "exp.yaml"
    config.write_bytes(text.encode() if isinstance(text, str) else text)
    out = tmp_path / "run"
    t = time.perf_counter()
    assert cli_main(["train", str(config), "--out", str(out)]) == 2
    assert time.perf_counter() - t < 5
    line = _one_error_line(capsys.readouterr().err, "train")
    assert str(config) in line
    for needle in needles:
        assert needle in line
    assert len(line) < 600  # a 5000-digit number or a 1 MiB file is not quoted back
    assert not out.exists()


def test_an_alias_bomb_is_refused_within_a_second(tmp_path: Path) -> None:
    from robometa.config import load_config

    for text in (_bomb(), _bomb(12), "env:\n  dynamics: &d {pole_length: *d}\n"):
        config = tmp_path / "bomb.yaml"
        config.write_text("algorithm: dqn\n" + text)
        t = time.perf_counter()
        with pytest.raises(ValueError, match=r"bomb\.yaml, line \d+, column \d+: YAML anchor"):
            load_config(config)
        assert time.perf_counter() - t < 1.0


def test_a_config_of_exactly_the_size_limit_is_read(tmp_path: Path) -> None:
    from robometa.envs.safe_load import MAX_BYTES

    from robometa.config import load_config

    text = TINY_TEXT + "#" * (MAX_BYTES - len(TINY_TEXT) - 1) + "\n"
    config = tmp_path / "big.yaml"
    config.write_text(text)
    assert config.stat().st_size == MAX_BYTES
    assert load_config(config).network.hidden == [8]
    config.write_text(text + "\n")
    with pytest.raises(ValueError, match=r"big\.yaml is 1,048,577 bytes, more than"):
        load_config(config)


def test_a_byte_order_mark_is_not_content(tmp_path: Path) -> None:
    from robometa.config import load_config

    config = tmp_path / "bom.yaml"
    config.write_bytes(b"\xef\xbb\xbf" + TINY_TEXT.encode())
    assert load_config(config).seed == 1


def test_the_config_robometa_writes_is_read_back_even_with_shared_lists(tmp_path: Path) -> None:
    """config.yaml and the checkpoint's config never hold anchors the loader would refuse."""
    from robometa.config import config_from_dict, load_config

    train = [0.5, 1.5]
    data = {
        **TINY,
        "env": {**TINY["env"], "dynamics": {"pole_length": {"train": train, "test": train}}},
    }
    cfg = config_from_dict(data)
    assert "&" not in cfg.to_yaml() and "*" not in cfg.to_yaml()
    cfg.dump(tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg


# ------------------------------------------------------------------------------ --set


@pytest.mark.parametrize(("name", "item", "needles"), BAD_SETS, ids=[c[0] for c in BAD_SETS])
def test_a_bad_set_is_one_error_line_naming_the_set(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, item: str, needles: tuple
) -> None:
    config = tmp_path / "exp.yaml"
    config.write_text(TINY_TEXT)
    out = tmp_path / "run"
    assert cli_main(["train", str(config), "--out", str(out), "--set", item]) == 2
    line = _one_error_line(capsys.readouterr().err, "train")
    assert line.startswith(f"robometa train: error: --set {item[:40]}")
    for needle in needles:
        assert needle in line
    assert not out.exists()


# ------------------------------------------------------------------------------ flags


@pytest.mark.parametrize(("name", "argv", "needle"), BAD_FLAGS, ids=[c[0] for c in BAD_FLAGS])
def test_a_bad_flag_is_a_usage_error_naming_the_flag(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    name: str,
    argv: list[str],
    needle: str,
) -> None:
    monkeypatch.chdir(tmp_path)  # where train's and quickstart's default --out would go
    config = tmp_path / "exp.yaml"
    config.write_text(TINY_TEXT)
    out = tmp_path / "out"
    args = [a.format(config=config, out=out) for a in argv]
    with pytest.raises(SystemExit) as exit_:
        cli_main(args)
    assert exit_.value.code == 2
    line = _one_error_line(capsys.readouterr().err, args[0])
    assert needle in line
    assert "allowed range" in line or "expected adaptation step counts" in line
    assert not list(tmp_path.glob("out*")) and not (tmp_path / "runs").exists()


def test_the_flag_bounds_accept_their_limits() -> None:
    from robometa.cli import build_parser
    from robometa.config import MAX_ENV_STEPS, MAX_SEED

    parser = build_parser()
    args = parser.parse_args(["train", "x", "--seed", str(MAX_SEED), "--steps", str(MAX_ENV_STEPS)])
    assert (args.seed, args.steps) == (MAX_SEED, MAX_ENV_STEPS)
    args = parser.parse_args(["eval", "r", "--curve", "0,1000", "--n-tasks", "1000"])
    assert (args.curve, args.n_tasks) == ([0, 1000], 1000)
    args = parser.parse_args(
        ["quickstart", "--seed", "0", "--meta-steps", "1", "--eval-tasks", "1"]
    )
    assert (args.seed, args.meta_steps, args.eval_tasks) == (0, 1, 1)


# ---------------------------------------------------------------- failures while writing


def _enospc(*_args: object, **_kwargs: object) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _no_temp_files(run: Path) -> None:
    left = [p.name for p in run.parent.rglob("*") if p.name.endswith(".tmp")]
    assert not left, left


def _train_cli(config: Path, run: Path) -> int:
    return cli_main(["train", str(config), "--out", str(run)])


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_TEXT)
    return path


def test_disk_full_at_the_first_checkpoint_keeps_nothing_and_the_same_command_works_after(
    tmp_path: Path,
    config: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    save = torch.save

    def half_then_full(obj: object, f: object, *args: object, **kwargs: object) -> None:
        if hasattr(f, "write"):
            f.write(b"PK\x03\x04 half a checkpoint")  # the disk fills mid-file
        _enospc()

    monkeypatch.setattr(torch, "save", half_then_full)
    run = tmp_path / "runs" / "run"
    assert _train_cli(config, run) == 2
    line = _one_error_line(capsys.readouterr().err, "train")
    assert f"cannot write {run / 'checkpoint.pt'}: No space left on device" in line
    assert "nothing of the run was kept" in line
    assert not run.exists() and not (tmp_path / "runs").exists()
    monkeypatch.setattr(torch, "save", save)
    assert _train_cli(config, run) == 0  # the same command, once there is room
    assert (run / "policy.pt").exists()
    _no_temp_files(run)


def test_disk_full_at_a_later_checkpoint_keeps_the_last_one_and_resumes(
    tmp_path: Path,
    config: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    save = torch.save
    calls = []

    def full_on_the_second(obj: object, f: object, *args: object, **kwargs: object) -> None:
        calls.append(1)
        if len(calls) == 2:
            f.write(b"half")  # type: ignore[attr-defined]
            _enospc()
        save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_on_the_second)
    run = tmp_path / "run"
    assert _train_cli(config, run) == 2
    line = _one_error_line(capsys.readouterr().err, "train")
    assert f"cannot write {run / 'checkpoint.pt'}: No space left on device" in line
    assert (
        f"the checkpoint at 0 env steps is intact: resume with robometa train --resume {run}"
        in line
    )
    _no_temp_files(run)
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert state["algorithm"]["env_steps"] == 0
    monkeypatch.setattr(torch, "save", save)
    assert cli_main(["train", "--resume", str(run)]) == 0
    assert torch.load(run / "checkpoint.pt", weights_only=True)["finished"]


def test_disk_full_appending_a_metrics_row_keeps_the_file_whole(
    tmp_path: Path,
    config: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    real_open = open
    appends = []

    class HalfWriter:
        def __init__(self, f: object) -> None:
            self.f = f

        def __getattr__(self, name: str) -> object:
            return getattr(self.f, name)

        def __enter__(self) -> HalfWriter:
            return self

        def __exit__(self, *exc: object) -> None:
            self.f.close()  # type: ignore[attr-defined]

        def write(self, data: bytes) -> int:
            self.f.write(bytes(data[:7]))  # type: ignore[attr-defined]
            _enospc()
            return 0

    def failing_open(path: object, mode: str = "r", *args: object, **kwargs: object) -> object:
        f = real_open(path, mode, *args, **kwargs)  # type: ignore[call-overload]
        if str(path).endswith("metrics.csv") and "a" in mode:
            appends.append(path)
            if len(appends) == 2:  # the row at 200 env steps
                return HalfWriter(f)
        return f

    monkeypatch.setattr(train_module, "open", failing_open, raising=False)
    run = tmp_path / "run"
    assert _train_cli(config, run) == 2
    line = _one_error_line(capsys.readouterr().err, "train")
    assert f"cannot write {run / 'metrics.csv'}: No space left on device" in line
    text = (run / "metrics.csv").read_text()
    assert text.endswith("\n") and len(text.splitlines()) == 2  # header and the 100-step row
    monkeypatch.undo()
    assert cli_main(["train", "--resume", str(run)]) == 0
    rows = (run / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["100", "200", "300"]


def test_a_read_only_policy_write_names_policy_pt_and_leaves_no_temp_file(
    tmp_path: Path,
    config: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    replace = os.replace

    def read_only(src: object, dst: object) -> None:
        if str(dst).endswith("policy.pt"):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        replace(src, dst)

    monkeypatch.setattr(os, "replace", read_only)
    run = tmp_path / "run"
    assert _train_cli(config, run) == 2
    line = _one_error_line(capsys.readouterr().err, "train")
    assert f"cannot write {run / 'policy.pt'}: Read-only file system" in line
    assert "resume with" in line
    assert not (run / "policy.pt").exists()
    _no_temp_files(run)


def test_a_failed_plot_says_the_run_itself_finished(
    tmp_path: Path,
    config: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import matplotlib.figure

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", _enospc)
    run = tmp_path / "run"
    assert _train_cli(config, run) == 2
    line = _one_error_line(capsys.readouterr().err, "train")
    assert f"cannot write {run / 'learning_curve.png'}: No space left on device" in line
    assert "the run itself finished" in line
    assert torch.load(run / "checkpoint.pt", weights_only=True)["finished"]
    assert (run / "policy.pt").exists() and not (run / "learning_curve.png").exists()
    _no_temp_files(run)


@pytest.mark.parametrize("where", ["parent is a file", "out is a file"])
def test_an_unwritable_out_is_one_error_line_naming_it(
    tmp_path: Path, config: Path, capsys: pytest.CaptureFixture[str], where: str
) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory")
    run = blocker / "run" if where == "parent is a file" else blocker
    assert _train_cli(config, run) == 2
    line = _one_error_line(capsys.readouterr().err, "train")
    assert f"cannot create run directory {run}" in line
    assert ("Not a directory" if where == "parent is a file" else "it is a file") in line
    assert blocker.read_text() == "not a directory"


def test_stale_temp_files_robometa_named_are_removed_and_no_others(
    tmp_path: Path, config: Path
) -> None:
    import subprocess
    import sys

    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead = int(gone.stdout)
    run = tmp_path / "run"
    assert _train_cli(config, run) == 0
    stale = [
        run / f".checkpoint.pt.robometa-tmp-{dead}-{0:016x}.tmp",
        run / f".metrics.csv.robometa-tmp-{dead}-{1:016x}.tmp",
        run / "checkpoint.pt.tmp",  # what robometa 0.1 left on a full disk
        run / "policy.pt.tmp",
    ]
    kept = [
        run / f".checkpoint.pt.robometa-tmp-1-{0:016x}.tmp",  # pid 1 runs: may be writing
        run / f".notes.txt.robometa-tmp-{dead}-{0:016x}.tmp",  # not a file of the run
        run / "notes.tmp",
        run / "config.yaml.tmp",
    ]
    for p in stale + kept:
        p.write_bytes(b"x")
    assert cli_main(["train", "--resume", str(run)]) == 0
    assert [p.exists() for p in stale] == [False] * len(stale)
    assert [p.exists() for p in kept] == [True] * len(kept)


def test_a_run_that_never_checkpointed_says_it_cannot_be_resumed(
    tmp_path: Path, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What robometa 0.1 left after a full disk at its first checkpoint."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(TINY_TEXT)
    (run / "metrics.csv").write_text("env_steps\n")
    (run / "checkpoint.pt.tmp").write_bytes(b"PK\x03\x04")
    assert _train_cli(config, run) == 2
    line = _one_error_line(capsys.readouterr().err, "train")
    assert "never wrote a checkpoint, so it cannot be resumed" in line


# -------------------------------------------------------------------- --resume checkpoints


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from robometa.config import config_from_dict
    from robometa.train import train

    run = tmp_path_factory.mktemp("finished") / "run"
    train(config_from_dict(TINY), run)
    return run


class _Marker:
    """Unpickling this would create a file: a checkpoint must never run code."""

    path = ""

    def __reduce__(self) -> tuple:
        return (Path.touch, (Path(self.path),))


def _truncated(run: Path) -> None:
    data = (run / "checkpoint.pt").read_bytes()
    (run / "checkpoint.pt").write_bytes(data[: len(data) // 2])


def _edited(change: Callable[[dict], object]) -> Callable[[Path], None]:
    def write(run: Path) -> None:
        state = torch.load(run / "checkpoint.pt", weights_only=True)
        change(state)  # edits in place
        torch.save(state, run / "checkpoint.pt")

    return write


def _pickled_code(run: Path) -> None:
    marker = _Marker()
    marker.path = str(run / "executed")
    torch.save({"format": 1, "x": marker}, run / "checkpoint.pt")


def _as_directory(run: Path) -> None:
    (run / "checkpoint.pt").unlink()
    (run / "checkpoint.pt").mkdir()


#: (name, how to spoil the checkpoint of a finished run, substring of the error line)
BAD_CHECKPOINTS: list[tuple[str, Callable[[Path], None], str]] = [
    ("truncated", _truncated, "not a complete robometa checkpoint"),
    ("empty", lambda run: (run / "checkpoint.pt").write_bytes(b""), "the file is empty"),
    (
        "random bytes",
        lambda run: (run / "checkpoint.pt").write_bytes(os.urandom(4096)),
        "not a complete",
    ),
    (
        "a tensor",
        lambda run: torch.save(torch.zeros(3), run / "checkpoint.pt"),
        "it holds a Tensor",
    ),
    (
        "a dict without format",
        lambda run: torch.save({"a": 1}, run / "checkpoint.pt"),
        "no 'format' key",
    ),
    (
        "a policy.pt",
        lambda run: shutil.copy(run / "policy.pt", run / "checkpoint.pt"),
        "its 'algorithm' is missing",
    ),
    (
        "a future format",
        _edited(lambda s: s.update(format=2, robometa_version="9.0")),
        "newer robometa (9.0)",
    ),
    (
        "format as text",
        _edited(lambda s: s.update(format="1")),
        "checkpoint format '1' is not supported",
    ),
    ("no algorithm state", _edited(lambda s: s.pop("algorithm")), "its 'algorithm' is missing"),
    ("no env step count", _edited(lambda s: s["algorithm"].pop("env_steps")), "no env step count"),
    (
        "a state that does not fit",
        _edited(lambda s: s["algorithm"].pop("net")),
        "does not fit its own config",
    ),
    (
        "an alias in its config",
        _edited(lambda s: s.update(config="seed: &s 1\n")),
        "YAML anchor &s refused",
    ),
    ("an invalid config", _edited(lambda s: s.update(config="seed: -1\n")), "config key 'seed'"),
    ("pickled code", _pickled_code, "not a complete robometa checkpoint"),
    ("a directory", _as_directory, "it is not a file"),
]


@pytest.mark.parametrize(
    ("name", "spoil", "needle"), BAD_CHECKPOINTS, ids=[c[0] for c in BAD_CHECKPOINTS]
)
def test_resume_on_a_bad_checkpoint_is_one_error_line_and_changes_nothing(
    finished_run: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    spoil: Callable[[Path], None],
    needle: str,
) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    spoil(run)
    before = _files(run)
    assert cli_main(["train", "--resume", str(run)]) == 2
    line = _one_error_line(capsys.readouterr().err, "train")
    assert str(run / "checkpoint.pt") in line
    assert needle in line
    assert _files(run) == before  # nothing rewritten, nothing added
    assert not (run / "executed").exists()


# -------------------------------------------------------------------- policy files


@pytest.mark.parametrize(
    "algorithm",
    ["not-registered", "robometa_never_imported:Evil", "os:system", "", 7],
    ids=["unknown name", "module path", "os.system", "empty", "a number"],
)
def test_a_policy_of_an_unregistered_algorithm_is_one_error_naming_file_and_name(
    tmp_path: Path, algorithm: object
) -> None:
    """The network is rebuilt by the registered family of the name the file gives; any other
    name is refused (nothing the file names is imported)."""
    import sys

    import robometa.algorithms as algorithms
    from robometa.policy import Policy
    from robometa.testing import random_policy

    state = random_policy("dqn", hidden=(8,)).state()
    state["algorithm"] = algorithm
    with pytest.raises(ValueError) as err:
        Policy.from_state(state, "some/policy.pt")
    message = str(err.value)
    assert message.startswith("some/policy.pt: ")
    assert f"algorithm {str(algorithm)!r}" in message and "not registered" in message
    assert all(name in message for name in algorithms.names())
    assert "robometa_never_imported" not in sys.modules
    path = tmp_path / "policy.pt"
    torch.save(state, path)
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}: the policy was trained with"):
        Policy.load(path)
