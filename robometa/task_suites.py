"""Versioned held-out robots: the task suites shipped under ``configs/tasks/``.

Every later change is measured on the same robots: for each robot family a fixed set of task
files, drawn once by :func:`generate` and shipped with the package (``robometa.configs``)::

    configs/tasks/<family>/heldout/id.yaml             20 robots, train ranges
    configs/tasks/<family>/heldout/ood.yaml            20 robots, test (wider) ranges
    configs/tasks/<family>/heldout/id-fixed-sign.yaml  20 robots, train ranges, motor_sign = +1
    configs/tasks/<family>/fresh/fresh-id.yaml         the same three, drawn with other seeds:
    configs/tasks/<family>/fresh/fresh-ood.yaml        never used for any choice of settings,
    configs/tasks/<family>/fresh/fresh-id-fixed-sign.yaml   reported separately

``<family>`` is ``cartpole``, ``reacher``, ``armreach`` or ``diffdrive``. ``robometa eval
RUN... --tasks heldout`` evaluates on the runs' family's ``heldout/`` files, ``--tasks fresh``
on its ``fresh/`` files, one report group per file (named by the file stem). In the
``*-fixed-sign`` sets every robot's motor is mounted normally (``motor_sign = 1``) and only
the other parameters vary (masses, lengths, gains, friction, damping, latency, noise): what is
left to adapt to when the sign flip is taken out.

Seeds. The robots of set ``s`` of family ``f`` are drawn exactly as
:meth:`~robometa.envs.DynamicsSpace.sample` draws (each parameter in the space's order, robot
after robot) from ``numpy.random.default_rng([SUITE_SEED, f, s])``, with the family and set
numbers of :data:`FAMILIES` and :data:`SETS`, from the family's default dynamics space; the
motor signs are then balanced (:func:`draw`: exactly half the robots of a mixed set are
reversed, so the ``--by-motor-sign`` rows compare groups of equal size). No
draw of training or of ``--tasks test`` uses that stream: they seed
``default_rng([seed, split])`` with a seed below ``2**32`` (a config's ``seed``, a seed drawn
from a generator, ``EVAL_SEED``), and :data:`SUITE_SEED` is above it. Values are rounded to
:data:`DIGITS` significant digits, so the files read well and the same on every platform.

``python -m robometa.task_suites`` writes the files (``--check`` only compares them); a test
checks that the shipped files are exactly what the generator gives, so a change to the seeds,
the spaces or the sets is noticed: regenerate, and bump :data:`SUITE_VERSION`.
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import importlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from robometa.envs import FAMILIES as ENV_ENTRY_POINTS
from robometa.envs import DynamicsSpace, Task, load_tasks
from robometa.envs.safe_load import dump_yaml, load_file

#: the suite's version, written into every file's header; bump it when the files change
SUITE_VERSION = 1
#: the first entropy word of every suite draw: "robometa" in ASCII, far above any seed that
#: training or ``--tasks test`` draws tasks with (those are below 2**32)
SUITE_SEED = int.from_bytes(b"robometa", "big")
#: significant digits of the values in the files
DIGITS = 6
#: robots per file
ROBOTS = 20
#: the file suffixes a directory of task files is read for
TASK_FILE_SUFFIXES = (".yaml", ".yml", ".json")


@dataclass(frozen=True)
class Family:
    env_id: str
    directory: str  # configs/tasks/<directory>, as benchmarks/adaptation.py names families
    number: int  # the second entropy word: fixed per family, never reused


@dataclass(frozen=True)
class SuiteSet:
    name: str  # the file stem, the report group
    suite: str  # the named suite (and subdirectory) it belongs to
    split: str  # the ranges it is drawn from: train or test
    fixed_sign: bool  # motor_sign = +1 on every robot
    number: int  # the third entropy word: fixed per set, never reused

    @property
    def describe(self) -> str:
        ranges = "train ranges" if self.split == "train" else "test (out-of-distribution) ranges"
        sign = (
            ", motor_sign fixed to +1 (only the other parameters vary)"
            if self.fixed_sign
            else f", {ROBOTS - ROBOTS // 2} of them with motor_sign -1 (motor mounted reversed)"
        )
        return f"{ROBOTS} robots from the {ranges}{sign}"


FAMILIES: tuple[Family, ...] = (
    Family("robometa/CartPole-v0", "cartpole", 1),
    Family("robometa/Reacher-v0", "reacher", 2),
    Family("robometa/ArmReach-v0", "armreach", 3),
    Family("robometa/DiffDrive-v0", "diffdrive", 4),
)

SETS: tuple[SuiteSet, ...] = (
    SuiteSet("id", "heldout", "train", False, 1),
    SuiteSet("ood", "heldout", "test", False, 2),
    SuiteSet("id-fixed-sign", "heldout", "train", True, 3),
    SuiteSet("fresh-id", "fresh", "train", False, 4),
    SuiteSet("fresh-ood", "fresh", "test", False, 5),
    SuiteSet("fresh-id-fixed-sign", "fresh", "train", True, 6),
)

#: what each named suite is for (``robometa eval --tasks NAME``)
SUITES: dict[str, str] = {
    "heldout": "the versioned held-out robots every change is measured on",
    "fresh": "a second set drawn once, never used for any choice of settings; report it separately",
}


def family(env_id: str) -> Family:
    for f in FAMILIES:
        if f.env_id == env_id:
            return f
    raise ValueError(
        f"no shipped task suite for {env_id!r}; suites are shipped for "
        f"{', '.join(f.env_id for f in FAMILIES)}"
    )


def default_space(env_id: str) -> DynamicsSpace:
    """The family's default dynamics space (no overrides), without starting a simulator."""
    module, _, cls = ENV_ENTRY_POINTS[family(env_id).env_id].partition(":")
    return getattr(importlib.import_module(module), cls).dynamics_space


def draw(env_id: str, suite_set: SuiteSet) -> list[Task]:
    """The robots of one file, as :meth:`DynamicsSpace.sample` draws them, from the suite's
    own stream (see the module docstring), rounded to :data:`DIGITS` significant digits; then
    the motor signs: +1 on every robot of a fixed-sign set, else exactly half of them -1 (in
    an order drawn next from the same stream), so both mountings weigh the same in a group's
    pooled score, as they do in the space's distribution."""
    space = default_space(env_id)
    rng = np.random.default_rng([SUITE_SEED, family(env_id).number, suite_set.number])
    drawn = []
    for _ in range(ROBOTS):
        values = {p.name: p.sample(rng, suite_set.split) for p in space.params}  # type: ignore[arg-type]
        drawn.append(
            {k: v if isinstance(v, int) else float(f"{v:.{DIGITS}g}") for k, v in values.items()}
        )
    if suite_set.fixed_sign:
        signs = [1] * ROBOTS
    else:  # balanced: half the robots reversed, in an order drawn from the same stream
        signs = [
            int(s) for s in rng.permutation([1] * (ROBOTS // 2) + [-1] * (ROBOTS - ROBOTS // 2))
        ]
    return [space.make_task({**v, "motor_sign": s}) for v, s in zip(drawn, signs, strict=True)]


def relative_path(env_id: str, suite_set: SuiteSet) -> Path:
    return Path(family(env_id).directory) / suite_set.suite / f"{suite_set.name}.yaml"


def render(env_id: str, suite_set: SuiteSet) -> str:
    """The text of one task file: a comment header, then ``env`` and ``tasks``."""
    f = family(env_id)
    header = (
        f"# robometa task suite v{SUITE_VERSION}, {suite_set.suite}: {env_id}, group "
        f"{suite_set.name!r}\n"
        f"# {suite_set.describe};\n# {SUITES[suite_set.suite]}.\n"
        f"# Drawn from numpy.random.default_rng([SUITE_SEED, {f.number}, {suite_set.number}]) "
        f"(SUITE_SEED = {SUITE_SEED}).\n"
        "# Written by `python -m robometa.task_suites`; do not edit by hand (a test compares "
        "it with the generator).\n"
    )
    doc = {"env": env_id, "tasks": [dict(t) for t in draw(env_id, suite_set)]}
    return header + dump_yaml(doc)


def expected_files() -> dict[Path, str]:
    """Every shipped task file (relative to ``configs/tasks``) and its text."""
    return {relative_path(f.env_id, s): render(f.env_id, s) for f in FAMILIES for s in SETS}


def shipped_root() -> Path:
    """``configs/tasks`` of the installed package (the checkout's, in an editable install)."""
    from importlib.resources import files

    return Path(str(files("robometa.configs"))) / "tasks"


def generate(root: str | Path | None = None) -> list[Path]:
    """Write every suite file under ``root`` (default :func:`shipped_root`); the paths."""
    root = Path(root) if root is not None else shipped_root()
    written = []
    for rel, text in expected_files().items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
        written.append(path)
    return written


def stale(root: str | Path | None = None) -> list[Path]:
    """The suite files under ``root`` that are missing or differ from the generator's."""
    root = Path(root) if root is not None else shipped_root()
    out = []
    for rel, text in expected_files().items():
        path = root / rel
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            out.append(path)
    return out


# ----------------------------------------------------------------------- reading suites


def suite_dir(name: str, env_id: str) -> Path:
    """The shipped directory of the named suite (``heldout``, ``fresh``) of ``env_id``."""
    if name not in SUITES:
        raise ValueError(f"unknown task suite {name!r}; named suites: {', '.join(SUITES)}")
    try:
        fam = family(env_id)
    except ValueError as err:
        raise ValueError(f"--tasks {name}: {err}") from None
    path = shipped_root() / fam.directory / name
    if not path.is_dir():
        raise ValueError(
            f"--tasks {name}: the task suite of {env_id} is not installed (no directory {path}); "
            "regenerate it with `python -m robometa.task_suites`"
        )
    return path


def task_files(directory: str | Path) -> list[Path]:
    """The task files directly in ``directory`` (``.yaml``, ``.yml``, ``.json``; not in its
    subdirectories, nor hidden ones), sorted by file stem: one report group each, named by
    the stem (``id``, ``id-fixed-sign``, ``ood``)."""
    directory = Path(directory)
    files = sorted(
        (
            p
            for p in directory.iterdir()
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in TASK_FILE_SUFFIXES
        ),
        key=lambda p: (p.stem, p.name),
    )
    if not files:
        subdirs = sorted(p.name + "/" for p in directory.iterdir() if p.is_dir())
        inside = f"; its subdirectories are not read: {', '.join(subdirs)}" if subdirs else ""
        raise ValueError(
            f"task directory {directory}: no task files in it (a suite directory holds files "
            f"ending in {', '.join(TASK_FILE_SUFFIXES)}, one group each){inside}"
        )
    stems: dict[str, Path] = {}
    for p in files:
        if p.stem in stems:
            raise ValueError(
                f"task directory {directory}: {stems[p.stem].name} and {p.name} would both be "
                f"group {p.stem!r}; give each file its own name"
            )
        stems[p.stem] = p
    return files


def load_task_file(path: str | Path, space: DynamicsSpace, env_id: str) -> list[Task]:
    """:func:`robometa.envs.load_tasks`, and a file written for another family (its ``env``)
    is an error naming the file, its env and the runs'."""
    path = Path(path)
    tasks = load_tasks(path, space)
    written_for = load_file(path, "task file").get("env")
    if written_for is not None and written_for != env_id:
        raise ValueError(
            f"task file {path} is for {written_for!r} (its 'env'), but the runs are "
            f"{env_id!r}; give a task file of {env_id}"
        )
    return tasks


def sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def close_name(text: str, names: Sequence[str]) -> str:
    match = difflib.get_close_matches(text, list(names), n=1)
    return f" (did you mean {match[0]}?)" if match else ""


# --------------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m robometa.task_suites",
        description="Write the versioned task suites (configs/tasks/<family>/{heldout,fresh}/).",
    )
    p.add_argument("--out", help="the configs/tasks directory to write (default: the shipped one)")
    p.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 listing the files that are missing or differ",
    )
    args = p.parse_args(argv)
    if args.check:
        bad = stale(args.out)
        for path in bad:
            print(f"stale: {path}")
        print(f"{len(expected_files()) - len(bad)} of {len(expected_files())} suite files current")
        return 1 if bad else 0
    for path in generate(args.out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
