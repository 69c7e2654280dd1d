"""Fault and bad-input suite: every hostile input refused with one clear error, nothing lost.

Replays the case tables of the robustness tests against the real entry points, and classifies
what each case did:

| outcome | meaning |
|---|---|
| clear error | refused with the project's error: exit 2 and one ``error:`` line (CLIs) or the expected exception class (API), naming what the case expects; no traceback |
| intact | a fault case (SIGKILL): afterwards the previous or the new bundle / state is whole and the user's files are unchanged |
| accepted | a control case (a good input, one or more per category) was accepted, as it must be |
| unclear error | refused, but not as the case expects: another exit code, several error lines, a message missing what the case names, files left behind |
| traceback | a ``Traceback`` in the output, or an exception of an unexpected type |
| silently accepted | exit 0 / no exception (or the robot moved, the rounds ran) for an invalid input |
| hang | no answer within ``--timeout`` seconds |
| data lost | a user's file, the previous bundle or state, or the results changed or vanished |
| good input refused | a control case was refused |

Target: 0 data lost, 0 hangs, 0 tracebacks, 0 silently accepted invalid inputs.

The tables come from the tests, imported by path as data (``CASES`` of
``tests/deploy/test_bundle_hostile.py``; ``BAD_CONFIGS``, ``BAD_SETS``, ``BAD_FLAGS``,
``BAD_CHECKPOINTS`` of ``tests/training/test_bad_input.py``; ``BAD_TASK_FILES`` of
``tests/envs/test_task_files.py``; the ``pytest.mark.parametrize`` tables of
``tests/deploy/test_runtime_limits.py`` and ``tests/deploy/test_loop_cli.py``). Cases that the
tests only spell out inside a test function (export over foreign directories, write faults,
kills of ``save_state``) are written here, one short entry each; their docstrings name the test.

Every case runs in one worker process (in-process calls of ``robometa.cli.main``,
``robometa.deploy.cli.main`` and the Python API with stdout/stderr captured, a fresh working
directory and monkeypatches undone afterwards); a case that does not answer within the timeout
is a hang, and the worker (with everything it started) is killed and replaced. SIGKILL cases
kill separate processes: forked exports of a warm process (the test's ``Zygote``) and a
process saving a 4 MB adapter state in a loop, at seeded random delays.

    python benchmarks/robustness.py --out bench-results/robustness.json
    python benchmarks/robustness.py --quick --out /tmp/robustness.json   # a few per category

Exit status 0 whether or not the target is met (the JSON says); 1 if the harness itself failed
(a test module could not be imported, a case's own setup raised, the worker could not start).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import importlib.util
import io
import json
import math
import os
import platform
import random
import re
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterable, Sequence
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"

#: (slug for --only, title in the table)
CATEGORIES: tuple[tuple[str, str], ...] = (
    ("bundles", "bundles"),
    ("runtime", "runtime calls"),
    ("deploy-cli", "deploy CLI flags"),
    ("export", "export"),
    ("kills", "kills"),
    ("write-faults", "write faults"),
    ("configs", "configs & --set"),
    ("task-files", "task files"),
    ("robometa-cli", "robometa CLI flags"),
)
TITLES = dict(CATEGORIES)

CLEAR, INTACT, ACCEPTED = "clear error", "intact", "accepted"
UNCLEAR, TRACEBACK, SILENT = "unclear error", "traceback", "silently accepted"
HANG, LOST, REFUSED, HARNESS = "hang", "data lost", "good input refused", "harness error"
#: worst first: a case checked several ways reports its worst outcome
SEVERITY = (HARNESS, HANG, LOST, TRACEBACK, SILENT, REFUSED, UNCLEAR, CLEAR, INTACT, ACCEPTED)
OUTCOMES = SEVERITY
#: what the target counts
TARGET = (LOST, HANG, TRACEBACK, SILENT)
TARGET_TEXT = "0 data lost, 0 hangs, 0 tracebacks, 0 silently accepted invalid inputs"

KILL_SEED = 20240607  # the seed of the export SIGKILL test
KILLS_PER_KIND = 10
STATE_TRANSITIONS = 50_000
STARTUP_TIMEOUT = 300  # seconds for a worker to import and read the case tables  # a 4 MB state, as in the save_state SIGKILL test

Verdict = tuple[str, str]  # (outcome, detail)


# ------------------------------------------------------------------------------ the cases


@dataclass(frozen=True)
class Case:
    """One input or fault: ``run(ctx)`` feeds it to an entry point and returns the verdict."""

    name: str
    category: str  # a slug of CATEGORIES
    run: Callable[[Context], Verdict]
    control: bool = False  # a good input that must be accepted
    quick: bool | None = None  # in --quick; None: the category's first control and two others


@dataclass
class Context:
    """What a running case gets: a fresh working directory, a monkeypatch undone afterwards."""

    tmp: Path
    mp: Any  # pytest.MonkeyPatch, undone after the case
    fixtures: Fixtures
    fault: Any  # pytest.MonkeyPatch for an injected fault, which a case may undo before its checks


_LOADED: dict[str, ModuleType] = {}


def load_tests(rel: str) -> ModuleType:
    """A test module under tests/, imported by path as data (its tables and helpers)."""
    if rel not in _LOADED:
        for helper_dir in (TESTS / "deploy", TESTS):  # fake_robot.py lives in tests/deploy
            if str(helper_dir) not in sys.path:
                sys.path.append(str(helper_dir))
        path = TESTS / rel
        name = "robustness_cases_" + re.sub(r"\W", "_", rel)
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot import {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        _LOADED[rel] = module
    return _LOADED[rel]


def parametrized(test: Callable) -> list[tuple]:
    """The argument tuples of a test's ``pytest.mark.parametrize`` table."""
    (mark,) = [m for m in getattr(test, "pytestmark", []) if m.name == "parametrize"]
    names = mark.args[0]
    count = len(names) if isinstance(names, (list, tuple)) else len(names.split(","))
    rows = []
    for value in mark.args[1]:
        if hasattr(value, "values") and hasattr(value, "marks"):  # a pytest.param
            rows.append(tuple(value.values))
        else:
            rows.append(tuple(value) if count > 1 else (value,))
    return rows


def show(value: Any, width: int = 28) -> str:
    """A value as it goes into a case name: its repr, cut short."""
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


# ------------------------------------------------------------------------ running a call


@dataclass
class Ran:
    """What one call of an entry point did."""

    value: Any = None
    exit_code: int | None = None  # set when it raised SystemExit
    error: BaseException | None = None
    trace: str = ""
    out: str = ""
    err: str = ""

    @property
    def code(self) -> Any:
        return self.exit_code if self.exit_code is not None else self.value


def call(fn: Callable, *args: Any, **kwargs: Any) -> Ran:
    """Call ``fn`` with stdout and stderr captured; an escaping exception is recorded."""
    ran = Ran()
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err), warnings.catch_warnings():
        warnings.simplefilter("default")
        try:
            ran.value = fn(*args, **kwargs)
        except SystemExit as exit_:
            code = exit_.code
            ran.exit_code = code if isinstance(code, int) else (0 if code is None else 1)
        except Exception as exc:
            ran.error, ran.trace = exc, traceback.format_exc()
    ran.out, ran.err = out.getvalue(), err.getvalue()
    return ran


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def escaped(ran: Ran) -> Verdict:
    """The verdict for an exception that escaped an entry point."""
    return TRACEBACK, f"{type(ran.error).__name__}: {one_line(ran.error)}"


def judge_cli(
    ran: Ran,
    prefix: str,
    needles: Iterable[str] = (),
    patterns: Iterable[str] = (),
    *,
    exact: bool = False,
    quiet: bool = False,
) -> Verdict:
    """A CLI's refusal: exit 2, one stderr line starting with ``prefix`` that holds every
    needle and matches every pattern, no traceback; ``exact``: stderr is that line alone;
    ``quiet``: stdout is empty too."""
    if ran.error is not None:
        return escaped(ran)
    text = ran.out + ran.err
    if "Traceback" in text:
        tail = [ln for ln in text.splitlines() if ln.strip()][-1]
        return TRACEBACK, f"exit {ran.code}, Traceback in output: {one_line(tail)}"
    if ran.code == 0:
        last = (ran.out.strip().splitlines() or [""])[-1]
        return SILENT, f"exit 0: {one_line(last)}"
    lines = [ln for ln in ran.err.splitlines() if ln.startswith(prefix)]
    if ran.code != 2 or len(lines) != 1:
        return UNCLEAR, f"exit {ran.code}, {len(lines)} '{prefix}' lines: {one_line(ran.err)}"
    (line,) = lines
    missing = [n for n in needles if n not in line]
    missing += [p for p in patterns if not re.search(p, line)]
    if missing:
        return UNCLEAR, f"the error line lacks {missing!r}: {line}"
    if exact and ran.err != line + "\n":
        return UNCLEAR, f"more than the one error line on stderr: {ran.err!r}"
    if quiet and ran.out:
        return UNCLEAR, f"printed {ran.out!r} besides the error"
    return CLEAR, line


def judge_raised(
    ran: Ran,
    errors: type[BaseException] | tuple[type[BaseException], ...],
    needles: Iterable[str] = (),
    patterns: Iterable[str] = (),
) -> Verdict:
    """An API call's refusal: one of ``errors``, its message holding every needle and matching
    every pattern."""
    if ran.exit_code is not None:
        return TRACEBACK, f"SystemExit({ran.exit_code}) from an API call"
    if ran.error is None:
        return SILENT, f"returned {show(ran.value, 60)}"
    if not isinstance(ran.error, errors):
        return escaped(ran)
    message = str(ran.error)
    missing = [n for n in needles if n not in message]
    missing += [p for p in patterns if not re.search(p, message)]
    if missing:
        return UNCLEAR, f"{type(ran.error).__name__} lacks {missing!r}: {one_line(message)}"
    return CLEAR, f"{type(ran.error).__name__}: {message}"


def judge_accepted(ran: Ran, problem: str | None = None) -> Verdict:
    """A control: no exception (a refusal if it is the project's kind); ``problem`` says what
    was wrong with the result."""
    if ran.error is not None:
        if isinstance(ran.error, (ValueError, OSError, TypeError)):
            return REFUSED, f"{type(ran.error).__name__}: {one_line(ran.error)}"
        return escaped(ran)
    if "Traceback" in ran.out + ran.err:
        return TRACEBACK, "Traceback in output"
    if ran.exit_code not in (None, 0):
        return REFUSED, f"exit {ran.exit_code}: {one_line(ran.err)}"
    if problem:
        return REFUSED, problem
    return ACCEPTED, one_line((ran.out.strip().splitlines() or ["ok"])[-1])


def cli_accepted(ran: Ran, problem: str | None = None) -> Verdict:
    """A CLI control: exit 0."""
    if ran.error is None and ran.code not in (0, None):
        return REFUSED, f"exit {ran.code}: {one_line(ran.err)}"
    return judge_accepted(ran, problem)


def downgrade(verdict: Verdict, complaint: str | None) -> Verdict:
    """A clear refusal that did something else wrong (files left behind) is unclear."""
    if complaint and verdict[0] in (CLEAR, INTACT, ACCEPTED):
        return (UNCLEAR if verdict[0] != ACCEPTED else REFUSED), f"{complaint}; {verdict[1]}"
    return verdict


def lost(verdict: Verdict, loss: str | None) -> Verdict:
    """Whatever the entry point said, a failed integrity check is data lost."""
    if loss and verdict[0] not in (HANG, HARNESS):
        return LOST, f"{loss}; {verdict[0]}: {verdict[1]}"
    return verdict


def worst(*labelled: tuple[str, Verdict]) -> Verdict:
    """The worst of several checks of one case, labelled by where it came from."""
    rank = {o: i for i, o in enumerate(SEVERITY)}
    label, (outcome, detail) = min(labelled, key=lambda lv: rank[lv[1][0]])
    if all(v[0] == outcome for _, v in labelled):
        return outcome, " | ".join(f"{lab}: {v[1]}" for lab, v in labelled)
    return outcome, f"{label}: {detail}"


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` (relative path -> sha256): to show that nothing changed."""
    if root.is_file():
        return {".": hashlib.sha256(root.read_bytes()).hexdigest()}
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def changed(before: dict[str, str], root: Path, what: str) -> str | None:
    after = snapshot(root) if root.exists() else {}
    if after == before:
        return None
    gone = sorted(set(before) - set(after))
    edited = sorted(k for k in before if k in after and before[k] != after[k])
    added = sorted(set(after) - set(before))
    return f"{what} changed (gone {gone}, edited {edited}, added {added})"


# ------------------------------------------------------------------------------ fixtures


class Fixtures:
    """Bundles and runs the cases start from: built once on disk (a replaced worker reuses
    them), plus warm helper processes kept for the worker's lifetime."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.cache: dict[str, Any] = {}

    def _built(self, name: str, build: Callable[[Path], None]) -> Path:
        path = self.root / name
        if not path.exists():
            partial_dir = self.root / f"{name}.partial"
            shutil.rmtree(partial_dir, ignore_errors=True)
            partial_dir.mkdir(parents=True)
            build(partial_dir)
            partial_dir.rename(path)  # complete or absent
        return path

    def bundle(self) -> Path:
        """A CAVIA bundle shaped as tests/deploy/conftest.py's ``cavia`` (the hostile cases'
        expected messages name its shapes)."""

        def build(out: Path) -> None:
            from robometa.bundle import export_bundle
            from robometa.testing import random_policy

            policy = random_policy("cavia", "td+model", hidden=(16, 16), seed=3)
            export_bundle(policy, out / "cavia-td+model")

        return self._built("deploy", build) / "cavia-td+model"

    def runs(self) -> dict[str, Path]:
        """Two runs ``a`` and ``b`` (different weights) and ``bundle`` exported from ``a``, as
        tests/training/test_export_safety.py's ``runs`` fixture."""

        def build(root: Path) -> None:
            from robometa.cli import main as cli_main
            from robometa.testing import random_policy

            for seed, name in enumerate(("a", "b"), start=1):
                random_policy("cavia", "td", hidden=(8,), seed=seed).save(root / "runs" / name)
            argv = ["export", str(root / "runs" / "a"), "--out", str(root / "bundles" / "a")]
            ran = call(cli_main, argv)
            if ran.code != 0:
                raise RuntimeError(f"exporting the fixture run failed: {ran.err}{ran.trace}")

        root = self._built("safety", build)
        return {
            "a": root / "runs" / "a",
            "b": root / "runs" / "b",
            "bundle": root / "bundles" / "a",
        }

    def finished_run(self) -> Path:
        """A finished 300-step DQN run of test_bad_input.py's ``TINY`` config."""

        def build(root: Path) -> None:
            from robometa.config import config_from_dict
            from robometa.train import train

            B = load_tests("training/test_bad_input.py")
            with redirect_stdout(io.StringIO()):
                train(config_from_dict(B.TINY), root / "run")

        return self._built("finished", build) / "run"

    def close(self) -> None:
        for closer in self.cache.pop("closers", []):
            closer()


# ---------------------------------------------------------------------------- bundles


def copy_bundle(ctx: Context) -> Path:
    out = ctx.tmp / "bundle"
    shutil.copytree(ctx.fixtures.bundle(), out, symlinks=True)
    return out


def deploy_main(argv: list[str]) -> int:
    from robometa.deploy.cli import main

    return main(argv)


def robometa_main(argv: list[str]) -> int:
    from robometa.cli import main

    return main(argv)


DEPLOY_ERROR = "robometa-deploy: error: "


def hostile_bundle(case: Any, ctx: Context) -> Verdict:
    """One of test_bundle_hostile.py's CASES through ``Adapter.load`` and ``info``."""
    from robometa.deploy import Adapter, BundleError

    bundle = copy_bundle(ctx)
    case.mutate(bundle)
    named = [str(bundle / case.file)]
    load = judge_raised(call(Adapter.load, bundle), BundleError, named, [case.match])
    info = call(deploy_main, ["info", "--bundle", str(bundle)])
    return worst(
        ("Adapter.load", load),
        ("info", judge_cli(info, DEPLOY_ERROR, named, [case.match], exact=True, quiet=True)),
    )


def graph_of_another_onnx_ir(ctx: Context) -> Verdict:
    """test_bundle_hostile.py::test_a_graph_of_another_onnx_version_is_refused."""
    import onnx
    from robometa.deploy import Bundle, BundleError

    H = load_tests("deploy/test_bundle_hostile.py")
    bundle = copy_bundle(ctx)
    model = onnx.load(str(bundle / "policy.onnx"))
    model.ir_version = 11
    onnx.save(model, str(bundle / "policy.onnx"))
    H.rehash(bundle)
    pattern = r"policy\.onnx: ONNX IR 11, opsets .*IR 10 with opset 20"
    return judge_raised(call(Bundle.load, bundle), BundleError, patterns=[pattern])


def good_bundle(ctx: Context) -> Verdict:
    from robometa.deploy import Adapter

    bundle = copy_bundle(ctx)
    load = judge_accepted(call(Adapter.load, bundle))
    info = call(deploy_main, ["info", "--bundle", str(bundle)])
    problem = None if "verified" in info.out else "info printed no 'verified' line"
    return worst(("Adapter.load", load), ("info", cli_accepted(info, problem)))


def symlinked_bundle_dir(ctx: Context) -> Verdict:
    """test_a_symlinked_bundle_directory_is_the_same_bundle: ``current -> v3``."""
    from robometa.deploy import Bundle

    link = ctx.tmp / "current"
    link.symlink_to(ctx.fixtures.bundle(), target_is_directory=True)
    ran = call(Bundle.load, link)
    same = ran.error is None and ran.value.digest == Bundle.load(ctx.fixtures.bundle()).digest
    return judge_accepted(ran, None if same else "another digest through the symlink")


def user_files_beside_bundle(ctx: Context) -> Verdict:
    """test_files_beside_the_bundle_are_never_read_and_do_not_change_it."""
    from robometa.deploy import Bundle

    bundle = copy_bundle(ctx)
    digest = Bundle.load(bundle).digest
    (bundle / "notes.txt").write_text("rig 3, left motor rewired")
    (bundle / "adapter-state.npz").write_bytes(b"not even an npz")
    before = snapshot(bundle)
    ran = call(Bundle.load, bundle)
    problem = None if ran.error or ran.value.digest == digest else "the digest changed"
    return lost(judge_accepted(ran, problem), changed(before, bundle, "the bundle directory"))


def bundle_cases() -> list[Case]:
    H = load_tests("deploy/test_bundle_hostile.py")
    cases = [Case("good bundle loads and info verifies it", "bundles", good_bundle, control=True)]
    cases += [Case(f"bundle {c.id}", "bundles", partial(hostile_bundle, c)) for c in H.CASES]
    cases += [
        Case("bundle graph-onnx-ir-11", "bundles", graph_of_another_onnx_ir),
        Case("symlinked bundle directory loads", "bundles", symlinked_bundle_dir, control=True),
        Case("user files beside the bundle", "bundles", user_files_beside_bundle, control=True),
    ]
    return cases


# ---------------------------------------------------------------------------- runtime calls

STEPS_TYPE = r"steps must be an integer in \[0, 10000\] \(MAX_ADAPT_STEPS\), got"


def filled(ctx: Context, n: int = 20, **kwargs: Any) -> Any:
    from robometa.deploy import Adapter

    L = load_tests("deploy/test_runtime_limits.py")
    adapter = Adapter.load(ctx.fixtures.bundle(), **kwargs)
    L.fill(adapter, n)
    return adapter


def load_with(kwargs: dict, error: type, message: str, ctx: Context) -> Verdict:
    from robometa.deploy import Adapter

    return judge_raised(call(Adapter.load, ctx.fixtures.bundle(), **kwargs), error, [], [message])


def adapt_with(args: tuple, kwargs: dict, error: type, message: str, ctx: Context) -> Verdict:
    """``adapt`` with bad arguments: refused, and the parameters are still the meta ones."""
    adapter = filled(ctx)
    verdict = judge_raised(call(adapter.adapt, *args, **kwargs), error, [], [message])
    moved = adapter.params["context"] is not adapter.meta_params["context"]
    return downgrade(verdict, "the parameters changed" if moved else None)


def observe_refused(args: tuple, reason: str, ctx: Context) -> Verdict:
    """``observe`` refuses by returning False and counting the reason."""
    from robometa.deploy import Adapter

    adapter = Adapter.load(ctx.fixtures.bundle())
    ran = call(adapter.observe, *args)
    if ran.error is not None:
        return escaped(ran)
    if ran.value is not False or len(adapter.buffer):
        return SILENT, f"observe returned {ran.value!r}, buffer holds {len(adapter.buffer)}"
    if adapter.rejected != {reason: 1}:
        return UNCLEAR, f"rejected counts {adapter.rejected}, expected {{{reason!r}: 1}}"
    return CLEAR, f"observe returned False, rejected {reason}"


def observe_stored(reward: Any, ctx: Context) -> Verdict:
    import numpy as np
    from robometa.deploy import Adapter

    adapter = Adapter.load(ctx.fixtures.bundle())
    z = np.zeros(4, np.float32)
    ran = call(adapter.observe, z, 1, reward, z, False)
    stored = ran.value is True and bool(np.isfinite(adapter.buffer.ordered().reward).all())
    return judge_accepted(ran, None if stored else f"observe returned {ran.value!r}")


def bad_state(key: str, change: Callable, message: str, ctx: Context) -> Verdict:
    """A saved state with one bad entry: refused, and the adapter's own buffer untouched."""
    import numpy as np
    from robometa.deploy import Adapter, StateError

    L = load_tests("deploy/test_runtime_limits.py")
    bundle = ctx.fixtures.bundle()
    adapter = filled(ctx, 30, tolerance=math.inf)
    z = np.zeros(4, np.float32)
    adapter.observe(z, 9, 1.0, z, False)
    adapter.adapt(2)
    path = adapter.save_state(ctx.tmp / "state.npz")
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays[key] = change(arrays.get(key))
    np.savez(path, **arrays)
    fresh = Adapter.load(bundle)
    L.fill(fresh, 12, seed=5)
    before = fresh.buffer.ordered()
    verdict = judge_raised(call(fresh.load_state, path), StateError, [], [message])
    after = fresh.buffer.ordered()
    same = all(np.array_equal(a, b) for a, b in zip(after, before, strict=True))
    same = same and fresh.params["context"] is fresh.meta_params["context"]
    return lost(verdict, None if same else "the adapter's own buffer or parameters changed")


def untouched_robot(C: ModuleType, ran: Ran) -> Ran:
    """The loop tests' ``Untouchable`` robot raises AssertionError when moved: acceptance."""
    if isinstance(ran.error, AssertionError) and "despite a bad argument" in str(ran.error):
        ran.value, ran.error = f"moved the robot ({ran.error})", None
    return ran


def rounds_with(kwargs: dict, error: type, message: str, ctx: Context) -> Verdict:
    from robometa.deploy import Adapter
    from robometa.deploy.loop import run_rounds

    C = load_tests("deploy/test_loop_cli.py")
    adapter = Adapter.load(ctx.fixtures.bundle())
    args = {"rounds": 1, "support": 5, **kwargs}
    ran = untouched_robot(C, call(run_rounds, adapter, C.Untouchable(), **args))
    return judge_raised(ran, error, [], [message])


def loop_call(what: str, error: type, message: str, ctx: Context) -> Verdict:
    """collect / greedy_return with bad counts (test_collect_and_greedy_return_check_their_counts)."""
    import numpy as np
    from robometa.deploy import Adapter
    from robometa.deploy.loop import collect, greedy_return

    C = load_tests("deploy/test_loop_cli.py")
    adapter = Adapter.load(ctx.fixtures.bundle())
    calls = {
        "collect(n=-1)": lambda: collect(
            adapter, C.Untouchable(), -1, 0.1, np.random.default_rng(0)
        ),
        "greedy_return(episodes=2.0)": lambda: greedy_return(adapter, C.Untouchable(), 2.0),
        "greedy_return(max_episode_steps=0)": lambda: greedy_return(
            adapter, C.Untouchable(), 1, max_episode_steps=0
        ),
    }
    ran = untouched_robot(C, call(calls[what]))
    return judge_raised(ran, error, [], [message])


def bad_eval_reward(reward: Any, ctx: Context) -> Verdict:
    """A robot returning ``reward`` at step 3 of an evaluation (test_a_bad_reward_in_an_evaluation_is_named)."""
    from robometa.deploy import Adapter
    from robometa.deploy.loop import greedy_return

    C = load_tests("deploy/test_loop_cli.py")

    class BadReward(C.FakeCartPole):
        def step(self, action):
            obs, _, terminated, truncated, info = super().step(action)
            return obs, reward if self.t == 3 else 1.0, terminated, truncated, info

    ran = call(greedy_return, Adapter.load(ctx.fixtures.bundle()), BadReward(), 1)
    return judge_raised(ran, ValueError, [], [r"reward .* in evaluation episode 0, step 2; expe"])


def adapter_control(what: str, ctx: Context) -> Verdict:
    import numpy as np
    from robometa.deploy import Adapter

    bundle = ctx.fixtures.bundle()
    if what == "defaults":
        ran = call(Adapter.load, bundle)
        ok = ran.error is None and ran.value.buffer.capacity == 64
        return judge_accepted(ran, None if ok else "capacity is not the support size 64")
    if what == "numpy capacity":
        ran = call(Adapter.load, bundle, capacity=np.int64(7))
        ok = ran.error is None and ran.value.buffer.capacity == 7
        return judge_accepted(ran, None if ok else "capacity is not 7")
    adapter = filled(ctx)
    ran = call(adapter.adapt, np.int64(2))
    ok = ran.error is None and ran.value.steps == 2
    return judge_accepted(ran, None if ok else "did not take 2 steps")


def runtime_cases() -> list[Case]:
    import numpy as np

    L = load_tests("deploy/test_runtime_limits.py")
    C = load_tests("deploy/test_loop_cli.py")
    cat = "runtime"
    z = np.zeros(4, np.float32)
    cases = [
        Case("Adapter.load with the defaults", cat, partial(adapter_control, "defaults"), True),
        Case(
            "Adapter.load(capacity=np.int64(7))",
            cat,
            partial(adapter_control, "numpy capacity"),
            True,
        ),
        Case("adapt(np.int64(2))", cat, partial(adapter_control, "numpy steps"), True),
    ]
    for (reward,) in parametrized(
        L.TestObserveAsStored.test_the_largest_float32_rewards_are_stored_finite
    ):
        cases.append(
            Case(
                f"observe(reward={show(reward)}) stored", cat, partial(observe_stored, reward), True
            )
        )
    table = L.TestConstructorArguments.test_bad_arguments_name_the_argument_value_and_range
    for kwargs, error, message in parametrized(table):
        args = ", ".join(f"{k}={show(v)}" for k, v in kwargs.items())
        cases.append(Case(f"Adapter.load({args})", cat, partial(load_with, kwargs, error, message)))
    for (steps,) in parametrized(L.TestAdaptSteps.test_steps_must_be_an_int_not_coerced):
        cases.append(
            Case(
                f"adapt({show(steps)})",
                cat,
                partial(adapt_with, (steps,), {}, TypeError, STEPS_TYPE),
            )
        )
    for (steps,) in parametrized(
        L.TestAdaptSteps.test_steps_beyond_the_maximum_raise_before_any_work
    ):
        cases.append(
            Case(
                f"adapt({steps})",
                cat,
                partial(adapt_with, (steps,), {}, ValueError, rf"MAX_ADAPT_STEPS\), got {steps}$"),
            )
        )
    cases.append(
        Case(
            "adapt(1, from_meta='no')",
            cat,
            partial(
                adapt_with,
                (1,),
                {"from_meta": "no"},
                TypeError,
                "from_meta must be True, False or None, got str",
            ),
        )
    )
    for (reward,) in parametrized(
        L.TestObserveAsStored.test_rewards_beyond_float32_are_rejected_not_stored_as_inf
    ):
        cases.append(
            Case(
                f"observe(reward={show(reward)})",
                cat,
                partial(observe_refused, (z, 1, reward, z, False), "non_finite_reward"),
            )
        )
    for (term,) in parametrized(
        L.TestObserveAsStored.test_huge_terminated_is_rejected_not_an_overflow
    ):
        cases.append(
            Case(
                f"observe(terminated={show(term)})",
                cat,
                partial(observe_refused, (z, 1, 1.0, z, term), "bad_terminated"),
            )
        )
    cases.append(
        Case(
            "observe(action=10**400)",
            cat,
            partial(observe_refused, (z, 10**400, 1.0, z, False), "action_out_of_range"),
        )
    )
    for key, change, message in parametrized(
        L.TestLoadStateChecksTheBuffer.test_bad_entries_are_refused_and_nothing_changes
    ):
        label = re.sub(r"\\", "", message)[:40]
        cases.append(
            Case(f"load_state {key}: {label}", cat, partial(bad_state, key, change, message))
        )
    for kwargs, error, message in parametrized(
        C.TestLoop.test_bad_counts_are_refused_before_the_robot_moves
    ):
        args = ", ".join(f"{k}={show(v)}" for k, v in kwargs.items())
        cases.append(Case(f"run_rounds({args})", cat, partial(rounds_with, kwargs, error, message)))
    cases += [  # test_bad_arguments (inline)
        Case(
            "run_rounds(epsilon=2.0)",
            cat,
            partial(rounds_with, {"epsilon": 2.0}, ValueError, "epsilon"),
        ),
        Case(
            "run_rounds(support_from='adapted')",
            cat,
            partial(
                rounds_with, {"support_from": "adapted"}, ValueError, "support_from must be one of"
            ),
        ),
        Case(
            "collect(n=-1)",
            cat,
            partial(
                loop_call,
                "collect(n=-1)",
                ValueError,
                r"n must be an integer .* \(MAX_SUPPORT\), got -1",
            ),
        ),
        Case(
            "greedy_return(episodes=2.0)",
            cat,
            partial(
                loop_call,
                "greedy_return(episodes=2.0)",
                TypeError,
                r"episodes .* \(MAX_EVAL_EPISODES\), got float",
            ),
        ),
        Case(
            "greedy_return(max_episode_steps=0)",
            cat,
            partial(
                loop_call,
                "greedy_return(max_episode_steps=0)",
                ValueError,
                r"max_episode_steps .* got 0",
            ),
        ),
    ]
    for (reward,) in parametrized(C.TestLoop.test_a_bad_reward_in_an_evaluation_is_named):
        cases.append(
            Case(
                f"robot reward {show(reward)} in an evaluation",
                cat,
                partial(bad_eval_reward, reward),
            )
        )
    return cases


# ---------------------------------------------------------------------------- deploy CLI


def fake_rounds(ctx: Context) -> list[dict]:
    """``run_rounds`` in the deploy CLI replaced by one round-0 result; records its calls."""
    import robometa.deploy.cli as deploy_cli
    from robometa.deploy.loop import RoundResult

    seen: list[dict] = []

    def run_rounds(adapter: Any, env: Any, **kwargs: Any) -> list:
        seen.append(kwargs)
        return [RoundResult(0, 0, 0, None, 12.0, acting_round=0)]

    ctx.mp.setattr(deploy_cli, "run_rounds", run_rounds)
    return seen


def adapt_args(ctx: Context, *extra: str) -> list[str]:
    return ["adapt", "--bundle", str(ctx.fixtures.bundle()), "--sample-test-task", "3", *extra]


def bad_deploy_flag(flag: str, value: str, message: str, ctx: Context) -> Verdict:
    seen = fake_rounds(ctx)
    args = adapt_args(ctx, flag, value)
    if flag == "--sample-test-task":
        args = args[:3] + args[5:]
    verdict = judge_cli(
        call(deploy_main, args), "robometa-deploy adapt: error: ", [f"argument {flag}: "], [message]
    )
    return (SILENT, f"the rounds ran with {flag} {value}") if seen else verdict


def deploy_error(extra: list[str], message: str, ctx: Context) -> Verdict:
    seen = fake_rounds(ctx)
    args = ["adapt", "--bundle", str(ctx.fixtures.bundle()), *extra]
    verdict = judge_cli(call(deploy_main, args), DEPLOY_ERROR, [message])
    return (SILENT, "the rounds ran") if seen else verdict


def keep_best_without_eval(ctx: Context) -> Verdict:
    """test_keep_best_needs_an_evaluation (inline)."""
    seen = fake_rounds(ctx)
    ran = call(deploy_main, adapt_args(ctx, "--keep", "best", "--eval-episodes", "0"))
    needle = "--keep best compares measured returns: --eval-episodes must be >= 1"
    verdict = judge_cli(ran, DEPLOY_ERROR, [needle])
    return (SILENT, "the rounds ran") if seen else verdict


def missing_bundle(ctx: Context) -> Verdict:
    """test_missing_bundle (inline)."""
    ran = call(deploy_main, ["info", "--bundle", str(ctx.tmp / "none")])
    return judge_cli(ran, DEPLOY_ERROR, ["does not exist"])


def deploy_info_control(ctx: Context) -> Verdict:
    ran = call(deploy_main, ["info", "--bundle", str(ctx.fixtures.bundle())])
    return cli_accepted(ran, None if "verified" in ran.out else "no 'verified' line")


def deploy_adapt_control(ctx: Context) -> Verdict:
    seen = fake_rounds(ctx)
    ran = call(deploy_main, adapt_args(ctx, "--keep", "best", "--capacity", "7", "--support", "5"))
    ok = seen and seen[0]["keep"] == "best" and seen[0]["support"] == 5
    return cli_accepted(ran, None if ok else f"run_rounds got {seen}")


def deploy_real_adapt(ctx: Context) -> Verdict:
    """A real round on a simulated robot, saving the state and the JSON."""
    from robometa.deploy import Adapter

    state, report = ctx.tmp / "state.npz", ctx.tmp / "rounds.json"
    args = adapt_args(
        ctx,
        "--rounds",
        "1",
        "--support",
        "20",
        "--steps",
        "1",
        "--eval-episodes",
        "1",
        "--save-state",
        str(state),
        "--json",
        str(report),
    )
    ran = call(deploy_main, args)
    problem = None
    if ran.code == 0:
        restored = Adapter.load(ctx.fixtures.bundle())
        restored.load_state(state)
        rounds = json.loads(report.read_text())["rounds"]
        if len(restored.buffer) != 20 or len(rounds) != 2:
            problem = f"state holds {len(restored.buffer)}, JSON {len(rounds)} rounds"
    return cli_accepted(ran, problem)


def deploy_cli_cases() -> list[Case]:
    C = load_tests("deploy/test_loop_cli.py")
    cat = "deploy-cli"
    cases = [
        Case("info on the good bundle", cat, deploy_info_control, True),
        Case("adapt --keep best --capacity 7 --support 5", cat, deploy_adapt_control, True),
        Case(
            "adapt a real round, --save-state and --json", cat, deploy_real_adapt, True, quick=False
        ),
    ]
    for flag, value, message in parametrized(C.TestCommandLine.test_bad_flags_are_named):
        cases.append(
            Case(f"adapt {flag} {value}", cat, partial(bad_deploy_flag, flag, value, message))
        )
    for extra, message in parametrized(C.TestCommandLine.test_errors_are_reported):
        cases.append(Case(f"adapt {' '.join(extra)}", cat, partial(deploy_error, extra, message)))
    cases += [
        Case("adapt --keep best --eval-episodes 0", cat, keep_best_without_eval),
        Case("info --bundle a missing directory", cat, missing_bundle),
    ]
    return cases


# -------------------------------------------------------------------------------- export


def export_cli(*args: str) -> Ran:
    return call(robometa_main, ["export", *args])


EXPORT_ERROR = "robometa export: error: "


def refused_export(
    ctx: Context,
    args: Sequence[str],
    needles: Sequence[str],
    protected: Path,
    what: str,
) -> Verdict:
    """An export that must be refused, leaving ``protected`` and the directory around it as
    they were."""
    before, names = snapshot(protected), sorted(p.name for p in protected.parent.iterdir())
    verdict = judge_cli(export_cli(*args), EXPORT_ERROR, needles)
    left = sorted(p.name for p in protected.parent.iterdir())
    verdict = downgrade(
        verdict, None if left == names else f"left {sorted(set(left) - set(names))}"
    )
    return lost(verdict, changed(before, protected, what))


def export_web_app(overwrite: bool, ctx: Context) -> Verdict:
    """test_a_web_app_with_its_own_manifest_is_refused_and_untouched."""
    runs = ctx.fixtures.runs()
    web = ctx.tmp / "site"
    web.mkdir()
    (web / "index.html").write_text("<html></html>")
    (web / "manifest.json").write_text(json.dumps({"name": "app", "start_url": "/"}))
    args = [str(runs["a"]), "--out", str(web), *(["--overwrite"] if overwrite else [])]
    needles = [
        f"bundle output {web} is a non-empty directory that is not a robometa",
        "manifest.json was not written by robometa",
    ]
    return refused_export(ctx, args, needles, web, "the web app's directory")


def export_no_manifest(ctx: Context) -> Verdict:
    """test_a_directory_without_a_manifest_is_refused_even_with_overwrite."""
    runs = ctx.fixtures.runs()
    out = ctx.tmp / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    args = [str(runs["a"]), "--out", str(out), "--overwrite"]
    needles = [f"{out} is a non-empty directory", "no manifest.json"]
    return refused_export(ctx, args, needles, out, "the user's directory")


def export_existing_bundle(ctx: Context) -> Verdict:
    """test_an_existing_bundle_needs_overwrite."""
    runs = ctx.fixtures.runs()
    out = ctx.tmp / "bundle"
    shutil.copytree(runs["bundle"], out)
    needles = [f"bundle output {out} already holds a robometa bundle; pass --overwrite"]
    return refused_export(ctx, [str(runs["b"]), "--out", str(out)], needles, out, "the bundle")


def export_bundle_with_user_files(overwrite: bool, ctx: Context) -> Verdict:
    """test_a_bundle_holding_user_files_is_refused_naming_them."""
    E = load_tests("training/test_export_safety.py")
    runs = ctx.fixtures.runs()
    out = ctx.tmp / "bundle"
    shutil.copytree(runs["bundle"], out)
    for name, data in E.USER_FILES.items():
        (out / name).write_bytes(data)
    (out / "logs").mkdir()
    (out / "logs" / "day1.txt").write_text("log")
    args = [str(runs["b"]), "--out", str(out), *(["--overwrite"] if overwrite else [])]
    needles = [
        f"bundle output {out} holds a robometa bundle and also adapter-state.npz, logs, "
        "notes.txt, which robometa did not write",
        f"move them out of {out}, then export with --overwrite",
    ]
    return refused_export(ctx, args, needles, out, "the bundle and the user's files in it")


def export_out_dot(content: str, ctx: Context) -> Verdict:
    """test_out_dot_is_refused_and_the_directory_kept."""
    runs = ctx.fixtures.runs()
    cwd = ctx.tmp / "here"
    if content == "bundle":
        shutil.copytree(runs["bundle"], cwd)
    else:
        cwd.mkdir()
    if content == "files":
        (cwd / "notes.txt").write_text("mine")
    ctx.mp.chdir(cwd)
    needles = [f"bundle output . is the current directory ({cwd.resolve()})", "--out bundle"]
    verdict = refused_export(
        ctx, [str(runs["a"]), "--out", ".", "--overwrite"], needles, cwd, "the current directory"
    )
    return downgrade(verdict, None if Path.cwd() == cwd.resolve() else "the cwd moved")


def export_dangling_symlink(ctx: Context) -> Verdict:
    runs = ctx.fixtures.runs()
    dangling = ctx.tmp / "dangling"
    dangling.symlink_to(ctx.tmp / "nowhere")
    ran = export_cli(str(runs["a"]), "--out", str(dangling))
    verdict = judge_cli(ran, EXPORT_ERROR, [f"{dangling} is a symlink to", "does not exist"])
    return downgrade(verdict, None if not (ctx.tmp / "nowhere").exists() else "created nowhere/")


def export_symlink_to_foreign(ctx: Context) -> Verdict:
    """test_a_dangling_symlink_or_one_to_a_foreign_directory_is_refused (second half)."""
    runs = ctx.fixtures.runs()
    web = ctx.tmp / "web"
    web.mkdir()
    (web / "manifest.json").write_text("{}")
    link = ctx.tmp / "to-web"
    link.symlink_to(web)
    before = snapshot(web)
    ran = export_cli(str(runs["a"]), "--out", str(link), "--overwrite")
    verdict = judge_cli(ran, EXPORT_ERROR, [f"{link} (symlink to {web.resolve()})"])
    return lost(verdict, changed(before, web, "the directory the symlink points to"))


def export_env_id_module(where: str, ctx: Context) -> Verdict:
    """test_an_env_id_naming_a_module_is_refused_before_anything_is_imported."""
    from robometa.testing import random_policy

    bad = "this:robometa/CartPole-v0"
    policy = random_policy("cavia", hidden=(8,))
    if where == "env_id":
        policy.env_id = bad
    else:
        policy.config["env"] = {"id": bad}
    run = ctx.tmp / "run"
    policy.save(run)
    imported_before = "this" in sys.modules
    ran = export_cli(str(run), "--out", str(ctx.tmp / "run-bundle"))
    if not imported_before and "this" in sys.modules:
        del sys.modules["this"]
        return SILENT, f"the module 'this' named in {where} was imported"
    line = f"{run}/policy.pt: {where} {bad!r} is not a registered"
    verdict = judge_cli(ran, EXPORT_ERROR, [line])
    return downgrade(verdict, "created run-bundle/" if (ctx.tmp / "run-bundle").exists() else None)


def export_moved_aside_restored(ctx: Context) -> Verdict:
    """test_a_bundle_moved_aside_by_a_killed_export_is_restored: the previous bundle comes
    back (then the export is refused: it needs --overwrite)."""
    E = load_tests("training/test_export_safety.py")
    runs = ctx.fixtures.runs()
    out = ctx.tmp / "bundle"
    shutil.copytree(runs["bundle"], ctx.tmp / ".bundle.old-999999")
    (ctx.tmp / ".bundle.robometa-new-999998-x1").mkdir()
    (ctx.tmp / ".bundle.robometa-new-999998-x1" / "policy.onnx").write_bytes(b"half")
    ran = export_cli(str(runs["b"]), "--out", str(out))
    verdict = judge_cli(ran, EXPORT_ERROR, ["already holds a robometa bundle"])
    loss = (
        None
        if out.exists() and E.holds_policy(out, runs["a"])
        else "the bundle moved aside was not restored"
    )
    left = sorted(p.name for p in ctx.tmp.iterdir())
    return lost(downgrade(verdict, None if left == ["bundle"] else f"left {left}"), loss)


def export_control(kind: str, ctx: Context) -> Verdict:
    """Exports that must work: into a new directory, over its own bundle with --overwrite,
    through a symlink, and past leftovers holding a user's file (kept)."""
    from robometa.deploy import Adapter

    E = load_tests("training/test_export_safety.py")
    runs = ctx.fixtures.runs()
    out = ctx.tmp / "bundle"
    target, extra, keep = out, [], {}
    if kind == "overwrite":
        shutil.copytree(runs["bundle"], out)
        (ctx.tmp / "notes.txt").write_text("next to the bundle")
        extra = ["--overwrite"]
        keep["notes.txt"] = ctx.tmp / "notes.txt"
    elif kind == "symlink":
        target = ctx.tmp / "real"
        target.mkdir()
        out = ctx.tmp / "current"
        out.symlink_to(target, target_is_directory=True)
    elif kind == "leftovers":
        shutil.copytree(runs["bundle"], out)
        mine = ctx.tmp / ".bundle.backup"  # the user's own hidden copy
        shutil.copytree(runs["bundle"], mine)
        odd = ctx.tmp / ".bundle.robometa-old-999997-zz"  # robometa's name, a user file inside
        shutil.copytree(runs["bundle"], odd)
        (odd / "diary.txt").write_text("mine")
        extra = ["--overwrite"]
        keep = {".bundle.backup": mine, "diary.txt": odd / "diary.txt"}
    before = {name: snapshot(path) for name, path in keep.items()}
    ran = export_cli(str(runs["b"]), "--out", str(out), *extra)
    problem = None
    if ran.code == 0:
        if not (E.holds_policy(target, runs["b"]) and Adapter.load(out).obs_dim == 4):
            problem = "--out does not hold the exported policy"
        elif kind == "symlink" and not out.is_symlink():
            problem = "the symlink was replaced by a directory"
    loss = next(
        (
            f"{name} changed"
            for name, path in keep.items()
            if not path.exists() or snapshot(path) != before[name]
        ),
        None,
    )
    return lost(cli_accepted(ran, problem), loss)


def export_cases() -> list[Case]:
    cat = "export"
    return [
        Case("export into a new directory", cat, partial(export_control, "new"), True),
        Case(
            "export --overwrite over its own bundle",
            cat,
            partial(export_control, "overwrite"),
            True,
        ),
        Case(
            "export through a symlink to a directory", cat, partial(export_control, "symlink"), True
        ),
        Case(
            "export past leftovers holding a user file",
            cat,
            partial(export_control, "leftovers"),
            True,
        ),
        Case(
            "export over a web app with its own manifest.json", cat, partial(export_web_app, False)
        ),
        Case("export --overwrite over a web app", cat, partial(export_web_app, True)),
        Case("export --overwrite over a directory without manifest", cat, export_no_manifest),
        Case("export over a bundle without --overwrite", cat, export_existing_bundle),
        Case(
            "export over a bundle holding user files",
            cat,
            partial(export_bundle_with_user_files, False),
        ),
        Case(
            "export --overwrite over a bundle holding user files",
            cat,
            partial(export_bundle_with_user_files, True),
        ),
        Case("export --out . (empty)", cat, partial(export_out_dot, "empty")),
        Case("export --out . (user files)", cat, partial(export_out_dot, "files")),
        Case("export --out . (a bundle)", cat, partial(export_out_dot, "bundle")),
        Case("export --out a dangling symlink", cat, export_dangling_symlink),
        Case(
            "export --overwrite --out a symlink to a foreign directory",
            cat,
            export_symlink_to_foreign,
        ),
        Case(
            "export a run whose env_id imports a module",
            cat,
            partial(export_env_id_module, "env_id"),
        ),
        Case(
            "export a run whose config env.id imports a module",
            cat,
            partial(export_env_id_module, "config env.id"),
        ),
        Case("export after a kill left the bundle moved aside", cat, export_moved_aside_restored),
    ]


# --------------------------------------------------------------------------------- kills


def export_site(ctx: Context) -> dict[str, Any]:
    """The warm exporting process of test_export_safety.py (``Zygote``), its site with the
    user's files next to the bundle, and the time of one unkilled export."""
    if "zygote" not in ctx.fixtures.cache:
        import robometa.bundle as writer

        E = load_tests("training/test_export_safety.py")
        runs = ctx.fixtures.runs()
        root = ctx.fixtures.root / f"zygote-{os.getpid()}"
        shutil.rmtree(root, ignore_errors=True)
        (root / "x").mkdir(parents=True)
        (root / "y").mkdir()
        if not writer._exchange(root / "x", root / "y"):
            raise RuntimeError("the kill cases need Linux renameat2(RENAME_EXCHANGE)")
        out = root / "site" / "bundle"
        out.parent.mkdir()
        E.add_user_files(out.parent)
        zygote = E.Zygote(runs["a"], root / "warm", out, root / "zygote.log")
        ctx.fixtures.cache.setdefault("closers", []).append(zygote.close)
        t0 = time.monotonic()
        zygote.export(runs["a"])
        ctx.fixtures.cache["zygote"] = {
            "z": zygote,
            "out": out,
            "duration": time.monotonic() - t0,
            "runs": runs,
            "E": E,
            "log": root / "zygote.log",
        }
    return ctx.fixtures.cache["zygote"]


def site_user_files(out: Path) -> dict[str, dict[str, str]]:
    return {name: snapshot(out.parent / name) for name in ("notes", ".bundle.backup")}


def bundle_held(site: dict[str, Any]) -> str | None:
    """Which run (a or b) --out holds complete, or None."""
    from robometa.deploy import Adapter

    out, runs, E = site["out"], site["runs"], site["E"]
    try:
        if Adapter.load(out).obs_dim != 4:
            return None
        for name in ("a", "b"):
            if E.holds_policy(out, runs[name]):
                return name
    except Exception:
        return None
    return None


def kill_export(point: str, index: int, ctx: Context) -> Verdict:
    """One export killed: at a seeded random delay (``point`` "random") or at a step of the
    swap (test_sigkill_at_each_step_of_the_swap); none for the control."""
    site = export_site(ctx)
    z, out = site["z"], site["out"]
    before_run, users = bundle_held(site), site_user_files(out)
    run = "b" if before_run == "a" else "a"
    delay = None
    if point == "random":
        delay = random.Random(KILL_SEED + index).uniform(0.0, 1.1 * site["duration"])
    ran = call(z.export, site["runs"][run], point, kill_after=delay)
    if ran.error is not None:
        log = site["log"].read_text()[-400:] if site["log"].exists() else ""
        return TRACEBACK, f"{type(ran.error).__name__}: {one_line(ran.error)[:200]} {one_line(log)}"
    held = bundle_held(site)
    loss = None if held else "--out holds no complete bundle"
    if site_user_files(out) != users:
        loss = "the user's files next to the bundle changed"
    when = f"at {point}" if delay is None else f"after {delay * 1000:.0f} ms"
    if point == "none":
        verdict = (ACCEPTED if held == run else REFUSED), f"exported run {run}; --out holds {held}"
        return lost(verdict, loss)
    verdict = (
        INTACT,
        f"killed {when}: {'mid-export' if ran.value else 'finished first'}; "
        f"--out holds run {held} (before: {before_run})",
    )
    return lost(verdict, loss)


SAVE_LOOP = """
import sys, time
from robometa.deploy import Adapter
bundle, path, n, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
adapter = Adapter.load(bundle, capacity=n)
adapter.load_state(path)
t0 = time.perf_counter()
adapter.save_state(path)
print("ready", time.perf_counter() - t0, flush=True)
while mode == "loop":
    adapter.save_state(path)
"""


def state_site(ctx: Context) -> dict[str, Any]:
    """A 4 MB adapter state (50,000 transitions) with the user's notes beside it, as in
    test_runtime_writes.py::test_writers_killed_mid_save_leave_nothing_after_the_next_save."""
    if "state" not in ctx.fixtures.cache:
        import numpy as np

        W = load_tests("deploy/test_runtime_writes.py")
        bundle = ctx.fixtures.bundle()
        root = ctx.fixtures.root / f"state-{os.getpid()}"
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir()
        path = W.adapted(SimpleNamespace(path=bundle)).save_state(root / "state.npz")
        with np.load(path) as npz:
            arrays = {k: npz[k] for k in npz.files}
        n = STATE_TRANSITIONS
        rng = np.random.default_rng(1)
        obs = (rng.normal(size=(n, 4)) * 0.1).astype(np.float32)
        arrays.update(
            {
                "buffer:obs": obs,
                "buffer:next_obs": obs * 0.9,
                "buffer:action": rng.integers(3, size=n),
                "buffer:reward": np.ones(n, np.float32),
                "buffer:terminated": np.zeros(n, np.float32),
            }
        )
        np.savez(path, **arrays)
        (root / "notes.txt").write_text("the user's notes beside the state")
        ctx.fixtures.cache["state"] = {
            "path": path,
            "bundle": bundle,
            "expected": state_digest(bundle, path),
        }
    return ctx.fixtures.cache["state"]


def state_digest(bundle: Path, path: Path) -> str:
    """The buffer and parameters a state file restores (a fresh load; it also cleans up)."""
    from robometa.deploy import Adapter

    adapter = Adapter.load(bundle, capacity=STATE_TRANSITIONS)
    adapter.load_state(path)
    digest = hashlib.sha256()
    for array in (*adapter.buffer.ordered(), *(adapter.params[k] for k in sorted(adapter.params))):
        digest.update(array.tobytes())
    return digest.hexdigest()


def kill_save_state(index: int | None, ctx: Context) -> Verdict:
    """A process saving the state in a loop, SIGKILLed at a seeded random delay (``index``
    None: the control, one save and a normal exit)."""
    site = state_site(ctx)
    path = site["path"]
    notes = snapshot(path.parent / "notes.txt")
    mode = "once" if index is None else "loop"
    log = (ctx.tmp / "writer.log").open("w")
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            SAVE_LOOP,
            str(site["bundle"]),
            str(path),
            str(STATE_TRANSITIONS),
            mode,
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    try:
        words = read_line(child.stdout, 30).split()
        if words[:1] != ["ready"]:
            child.kill()
            child.wait()
            err = (ctx.tmp / "writer.log").read_text()
            return TRACEBACK, f"the writer never got ready: {one_line(err)[-300:]}"
        detail = "saved once and exited"
        if index is not None:
            delay = random.Random(KILL_SEED + 1000 + index).uniform(0.0, 3 * float(words[1]))
            time.sleep(delay)
            mid = any(p.name.startswith(".state.npz.") for p in path.parent.iterdir())
            os.kill(child.pid, signal.SIGKILL)
            detail = (
                f"killed after {delay * 1000:.0f} ms ({'mid-write' if mid else 'between writes'})"
            )
        code = child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        log.close()
    try:
        restored = state_digest(site["bundle"], path) == site["expected"]
    except Exception as exc:
        return LOST, f"{detail}; the state no longer loads: {type(exc).__name__}: {one_line(exc)}"
    if not restored:
        return LOST, f"{detail}; the state restores other transitions or parameters"
    if snapshot(path.parent / "notes.txt") != notes:
        return LOST, f"{detail}; the user's notes beside it changed"
    left = sorted(p.name for p in path.parent.iterdir() if p.name not in ("state.npz", "notes.txt"))
    detail += "; the state restores whole" + (f"; left {left} after the next load" if left else "")
    if index is None:
        return (ACCEPTED, detail) if code == 0 else (REFUSED, f"the writer exited {code}")
    return INTACT, detail


def read_line(stream: Any, timeout: float) -> str:
    sel = selectors.DefaultSelector()
    sel.register(stream, selectors.EVENT_READ)
    if not sel.select(timeout):
        return ""
    return stream.readline()


def kill_cases() -> list[Case]:
    load_tests("training/test_export_safety.py")
    load_tests("deploy/test_runtime_writes.py")
    cat = "kills"
    cases = [Case("export, not killed", cat, partial(kill_export, "none", 0), True, quick=True)]
    cases += [
        Case(f"export SIGKILL #{i}", cat, partial(kill_export, "random", i), quick=i == 0)
        for i in range(KILLS_PER_KIND)
    ]
    cases += [
        Case(f"export SIGKILL {point}", cat, partial(kill_export, point, 0), quick=False)
        for point in ("before-exchange", "after-exchange", "mid-cleanup")
    ]
    cases.append(
        Case("save_state, not killed", cat, partial(kill_save_state, None), True, quick=True)
    )
    cases += [
        Case(f"save_state SIGKILL #{i}", cat, partial(kill_save_state, i), quick=i == 0)
        for i in range(KILLS_PER_KIND)
    ]
    return cases


# --------------------------------------------------------------------------- write faults


def adapted(ctx: Context) -> Any:
    W = load_tests("deploy/test_runtime_writes.py")
    return W.adapted(SimpleNamespace(path=ctx.fixtures.bundle()))


def save_state_fault(kind: str, ctx: Context) -> Verdict:
    """test_runtime_writes.py TestWriteFailures: disk full (the previous state kept, no
    partial file), a path under a regular file, a missing directory."""
    from robometa.deploy.runtime import WriteError

    W = load_tests("deploy/test_runtime_writes.py")
    adapter = adapted(ctx)
    if kind == "disk full":
        path = adapter.save_state(ctx.tmp / "state.npz")
        before = snapshot(path)
        W.disk_full(ctx.mp)
        pattern = rf"^{re.escape(str(path))}: cannot write \(No space left on device\)"
        verdict = judge_raised(call(adapter.save_state, path), WriteError, [], [pattern])
        message = verdict[1]
        left = sorted(p.name for p in ctx.tmp.iterdir())
        complaint = ("the message names the temporary file" if ".tmp" in message else None) or (
            None if left == ["state.npz"] else f"left {left}"
        )
        return lost(downgrade(verdict, complaint), changed(before, path, "the previous state"))
    if kind == "under a file":
        (ctx.tmp / "file").write_text("not a directory")
        target = ctx.tmp / "file" / "state.npz"
        pattern = rf"^{re.escape(str(target))}: cannot write \(Not a directory\)"
        verdict = judge_raised(call(adapter.save_state, target), WriteError, [], [pattern])
        ok = (ctx.tmp / "file").read_text() == "not a directory"
        return lost(verdict, None if ok else "the regular file changed")
    target = ctx.tmp / "missing" / "state.npz"
    pattern = rf"^{re.escape(str(target))}: cannot write \(No such file"
    return judge_raised(call(adapter.save_state, target), WriteError, [], [pattern])


def save_state_control(ctx: Context) -> Verdict:
    from robometa.deploy import Adapter

    adapter = adapted(ctx)
    ran = call(adapter.save_state, ctx.tmp / "state.npz")
    problem = None
    if ran.error is None:
        fresh = Adapter.load(ctx.fixtures.bundle())
        fresh.load_state(ran.value)
        problem = None if len(fresh.buffer) == len(adapter.buffer) else "another buffer came back"
    return judge_accepted(ran, problem)


def deploy_cli_write_fault(kind: str, ctx: Context) -> Verdict:
    """test_runtime_writes.py TestCommandLineOutputs: --save-state under a regular file (refused
    before adapting); the disk full for the state (the JSON still written, the previous state
    unchanged); the JSON's write failing (the state still saved)."""
    import errno

    from robometa.deploy import Adapter

    W = load_tests("deploy/test_runtime_writes.py")
    seen = fake_rounds(ctx)
    state, report = ctx.tmp / "state.npz", ctx.tmp / "rounds.json"
    if kind == "under a file":
        (ctx.tmp / "file").write_text("")
        state = ctx.tmp / "file" / "state.npz"
        ran = call(deploy_main, adapt_args(ctx, "--save-state", str(state)))
        verdict = judge_cli(
            ran, DEPLOY_ERROR, [f"{state}: cannot write (Not a directory)"], exact=True
        )
        return downgrade(verdict, "adapted before refusing" if seen else None)
    if kind == "state disk full":
        adapted(ctx).save_state(state)  # a previous state, which must survive
        before = snapshot(state)
        W.disk_full(ctx.mp)
        ran = call(deploy_main, adapt_args(ctx, "--save-state", str(state), "--json", str(report)))
        error = (
            f"{state}: cannot write (No space left on device); any previous file there is unchanged"
        )
        verdict = judge_cli(ran, DEPLOY_ERROR, [error], exact=True)
        loss = changed(before, state, "the previous state")
        try:
            doc = json.loads(report.read_text())
            if doc["rounds"][0]["greedy_return"] != 12.0 or doc["state"]["saved"] is not False:
                loss = loss or f"the JSON says {doc}"
        except (OSError, ValueError, KeyError) as exc:
            loss = loss or f"the rounds' JSON was not written ({exc})"
        return lost(verdict, loss)
    replace = os.replace

    def full_for_json(src: Any, dst: Any) -> None:
        if Path(dst) == report:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        replace(src, dst)

    ctx.fault.setattr(os, "replace", full_for_json)
    ran = call(deploy_main, adapt_args(ctx, "--save-state", str(state), "--json", str(report)))
    ctx.fault.undo()
    verdict = judge_cli(ran, DEPLOY_ERROR, [f"{report}: cannot write (No space left on device)"])
    try:
        Adapter.load(ctx.fixtures.bundle()).load_state(state)
        loss = None
    except Exception as exc:
        loss = f"the state was not saved ({type(exc).__name__}: {one_line(exc)})"
    left = sorted(p.name for p in ctx.tmp.iterdir())
    return lost(downgrade(verdict, None if left == ["state.npz"] else f"left {left}"), loss)


def tiny_config(ctx: Context) -> Path:
    B = load_tests("training/test_bad_input.py")
    path = ctx.tmp / "tiny.yaml"
    path.write_text(B.TINY_TEXT)
    return path


def temp_files(run: Path) -> list[str]:
    return [p.name for p in run.parent.rglob("*") if p.name.endswith(".tmp")]


TRAIN_ERROR = "robometa train: error: "


def train_write_fault(kind: str, ctx: Context) -> Verdict:
    """test_bad_input.py's write failures during training (inline there): the disk full at the
    first / a later checkpoint or in a metrics row, a read-only policy.pt, a failed plot."""
    import errno

    import torch

    import robometa.train as train_module

    B = load_tests("training/test_bad_input.py")
    config, run = tiny_config(ctx), ctx.tmp / "runs" / "run"
    save = torch.save
    calls: list[int] = []
    ckpt = run / "checkpoint.pt"
    if kind == "first checkpoint":

        def patched(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
            if hasattr(f, "write"):
                f.write(b"PK\x03\x04 half a checkpoint")
            B._enospc()

        ctx.fault.setattr(torch, "save", patched)
        needles = [f"cannot write {ckpt}: No space left on device", "nothing of the run was kept"]
    elif kind == "later checkpoint":

        def patched(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
            calls.append(1)
            if len(calls) == 2:
                f.write(b"half")
                B._enospc()
            save(obj, f, *args, **kwargs)

        ctx.fault.setattr(torch, "save", patched)
        needles = [
            f"cannot write {ckpt}: No space left on device",
            f"the checkpoint at 0 env steps is intact: resume with robometa train --resume {run}",
        ]
    elif kind == "metrics row":
        ctx.fault.setattr(train_module, "open", half_second_metrics_append(B), raising=False)
        needles = [f"cannot write {run / 'metrics.csv'}: No space left on device"]
    elif kind == "read-only policy.pt":
        replace = os.replace

        def read_only(src: Any, dst: Any) -> None:
            if str(dst).endswith("policy.pt"):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS))
            replace(src, dst)

        ctx.fault.setattr(os, "replace", read_only)
        needles = [f"cannot write {run / 'policy.pt'}: Read-only file system", "resume with"]
    else:  # the plot
        import matplotlib.figure

        ctx.fault.setattr(matplotlib.figure.Figure, "savefig", B._enospc)
        needles = [
            f"cannot write {run / 'learning_curve.png'}: No space left on device",
            "the run itself finished",
        ]
    ran = call(robometa_main, ["train", str(config), "--out", str(run)])
    ctx.fault.undo()
    verdict = judge_cli(ran, TRAIN_ERROR, needles)
    return lost(downgrade(verdict, train_leftovers(kind, run)), train_loss(kind, run))


def half_second_metrics_append(B: ModuleType) -> Callable:
    """``open`` whose second append to metrics.csv writes 7 bytes, then the disk is full."""
    import builtins

    real_open = builtins.open
    appends: list[object] = []

    class HalfWriter:
        def __init__(self, f: Any) -> None:
            self.f = f

        def __getattr__(self, name: str) -> Any:
            return getattr(self.f, name)

        def __enter__(self) -> HalfWriter:
            return self

        def __exit__(self, *exc: object) -> None:
            self.f.close()

        def write(self, data: Any) -> int:
            self.f.write(data[:7])
            B._enospc()
            return 0

    def failing_open(path: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        f = real_open(path, mode, *args, **kwargs)
        if str(path).endswith("metrics.csv") and "a" in mode:
            appends.append(path)
            if len(appends) == 2:
                return HalfWriter(f)
        return f

    return failing_open


def train_leftovers(kind: str, run: Path) -> str | None:
    if kind == "first checkpoint" and run.parent.exists():
        return f"left {run.parent}"
    left = temp_files(run) if run.parent.exists() else []
    return f"left temporary files {left}" if left else None


def train_loss(kind: str, run: Path) -> str | None:
    """What the run must still hold after the failed write."""
    import torch

    try:
        if kind == "later checkpoint":
            steps = torch.load(run / "checkpoint.pt", weights_only=True)["algorithm"]["env_steps"]
            return None if steps == 0 else f"the last checkpoint is at {steps} steps, not 0"
        if kind == "metrics row":
            text = (run / "metrics.csv").read_text()
            whole = text.endswith("\n") and len(text.splitlines()) == 2
            return None if whole else f"metrics.csv is not whole: {text[-60:]!r}"
        if kind == "plot":
            finished = torch.load(run / "checkpoint.pt", weights_only=True)["finished"]
            return None if finished and (run / "policy.pt").exists() else "the finished run is gone"
    except Exception as exc:
        return f"{type(exc).__name__}: {one_line(exc)}"
    return None


def unwritable_run_dir(where: str, ctx: Context) -> Verdict:
    """test_an_unwritable_out_is_one_error_line_naming_it."""
    blocker = ctx.tmp / "blocker"
    blocker.write_text("not a directory")
    run = blocker / "run" if where == "parent is a file" else blocker
    ran = call(robometa_main, ["train", str(tiny_config(ctx)), "--out", str(run)])
    reason = "Not a directory" if where == "parent is a file" else "it is a file"
    verdict = judge_cli(ran, TRAIN_ERROR, [f"cannot create run directory {run}", reason])
    ok = blocker.is_file() and blocker.read_text() == "not a directory"
    return lost(verdict, None if ok else "the regular file in the way changed")


def dump_tasks_fault(kind: str, ctx: Context) -> Verdict:
    """test_task_files.py: dump_tasks under a regular file / on a full disk (old file kept)."""
    import errno

    from robometa.envs import dump_tasks
    from robometa.envs.cartpole import CARTPOLE_DYNAMICS as SPACE

    if kind == "under a file":
        blocker = ctx.tmp / "blocker"
        blocker.write_text("a regular file")
        ran = call(dump_tasks, [SPACE.nominal()], blocker / "robots.yaml")
        verdict = judge_raised(
            ran, ValueError, [], [r"cannot write task file .*blocker/robots\.yaml: Not a"]
        )
        return lost(
            verdict, None if blocker.read_text() == "a regular file" else "the file changed"
        )
    path = ctx.tmp / "robots.yaml"
    dump_tasks([SPACE.nominal()], path)
    before = snapshot(path)

    def full(self: Path, target: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    ctx.fault.setattr(Path, "replace", full)
    ran = call(dump_tasks, SPACE.sample(3, seed=0), path)
    ctx.fault.undo()
    verdict = judge_raised(
        ran, ValueError, [], [r"cannot write task file .*robots\.yaml: No space left"]
    )
    left = sorted(p.name for p in ctx.tmp.iterdir())
    verdict = downgrade(verdict, None if left == ["robots.yaml"] else f"left {left}")
    return lost(verdict, changed(before, path, "the previous task file"))


def write_fault_cases() -> list[Case]:
    load_tests("deploy/test_runtime_writes.py")
    load_tests("training/test_bad_input.py")
    cat = "write-faults"
    cases = [Case("save_state to a new file, load_state back", cat, save_state_control, True)]
    cases += [
        Case(f"save_state: {k}", cat, partial(save_state_fault, k))
        for k in ("disk full", "under a file", "missing directory")
    ]
    cases += [
        Case(f"adapt --save-state: {k}", cat, partial(deploy_cli_write_fault, k))
        for k in ("under a file", "state disk full", "json disk full")
    ]
    cases += [
        Case(f"train: {k}", cat, partial(train_write_fault, k))
        for k in (
            "first checkpoint",
            "later checkpoint",
            "metrics row",
            "read-only policy.pt",
            "plot",
        )
    ]
    cases += [
        Case(f"train --out: {w}", cat, partial(unwritable_run_dir, w))
        for w in ("parent is a file", "out is a file")
    ]
    cases += [
        Case(f"dump_tasks: {k}", cat, partial(dump_tasks_fault, k))
        for k in ("under a file", "disk full")
    ]
    return cases


# ---------------------------------------------------------------------- configs and --set


def bad_config(text: str | bytes, needles: tuple[str, ...], ctx: Context) -> Verdict:
    config, out = ctx.tmp / "exp.yaml", ctx.tmp / "run"
    config.write_bytes(text.encode() if isinstance(text, str) else text)
    ran = call(robometa_main, ["train", str(config), "--out", str(out)])
    verdict = judge_cli(ran, TRAIN_ERROR, [str(config), *needles])
    complaint = (
        f"the error line is {len(verdict[1])} characters" if len(verdict[1]) >= 600 else None
    )
    return downgrade(verdict, complaint or ("created run/" if out.exists() else None))


def bad_set(item: str, needles: tuple[str, ...], ctx: Context) -> Verdict:
    out = ctx.tmp / "run"
    ran = call(robometa_main, ["train", str(tiny_config(ctx)), "--out", str(out), "--set", item])
    start = "^" + re.escape(f"{TRAIN_ERROR}--set {item[:40]}")
    verdict = judge_cli(ran, TRAIN_ERROR, needles, [start])
    return downgrade(verdict, "created run/" if out.exists() else None)


def bad_checkpoint(spoil: Callable[[Path], None], needle: str, ctx: Context) -> Verdict:
    """--resume on a spoiled checkpoint: refused, nothing rewritten, no pickled code run."""
    run = ctx.tmp / "run"
    shutil.copytree(ctx.fixtures.finished_run(), run)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        spoil(run)
    before = snapshot(run)
    ran = call(robometa_main, ["train", "--resume", str(run)])
    if (run / "executed").exists():
        return SILENT, "the checkpoint's pickled code ran"
    verdict = judge_cli(ran, TRAIN_ERROR, [str(run / "checkpoint.pt"), needle])
    return lost(verdict, changed(before, run, "the run directory"))


def train_control(kind: str, ctx: Context) -> Verdict:
    """Good configs: the tiny one, one with a byte order mark, a good --set, a finished run
    resumed."""
    B = load_tests("training/test_bad_input.py")
    config, run = tiny_config(ctx), ctx.tmp / "run"
    argv = ["train", str(config), "--out", str(run)]
    if kind == "bom":
        config.write_bytes(b"\xef\xbb\xbf" + B.TINY_TEXT.encode())
    elif kind == "set":
        argv += ["--set", "network.hidden=[16]"]
    elif kind == "resume":
        shutil.copytree(ctx.fixtures.finished_run(), run)
        argv = ["train", "--resume", str(run)]
    ran = call(robometa_main, argv)
    return cli_accepted(ran, None if (run / "policy.pt").exists() else "no policy.pt written")


def config_cases() -> list[Case]:
    B = load_tests("training/test_bad_input.py")
    cat = "configs"
    cases = [
        Case("train the tiny config", cat, partial(train_control, "tiny"), True),
        Case("train a config with a byte order mark", cat, partial(train_control, "bom"), True),
        Case("train --set network.hidden=[16]", cat, partial(train_control, "set"), True),
        Case("train --resume a finished run", cat, partial(train_control, "resume"), True),
    ]
    cases += [
        Case(f"config: {name}", cat, partial(bad_config, text, needles))
        for name, text, needles in B.BAD_CONFIGS
    ]
    cases += [
        Case(f"--set: {name}", cat, partial(bad_set, item, needles))
        for name, item, needles in B.BAD_SETS
    ]
    cases += [
        Case(f"--resume checkpoint: {name}", cat, partial(bad_checkpoint, spoil, needle))
        for name, spoil, needle in B.BAD_CHECKPOINTS
    ]
    return cases


# ----------------------------------------------------------------------------- task files


def bad_task_file(
    filename: str, content: str | bytes, needles: tuple[str, ...], ctx: Context
) -> Verdict:
    """load_tasks refuses it with a ValueError naming the file; so does robometa-deploy
    adapt --task."""
    from robometa.envs import load_tasks
    from robometa.envs.cartpole import CARTPOLE_DYNAMICS as SPACE

    path = ctx.tmp / filename
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    api = judge_raised(call(load_tasks, path, SPACE), ValueError, [str(path), *needles])
    if api[0] == CLEAR and ("\n" in api[1] or len(api[1]) >= 650):
        api = UNCLEAR, f"the message spans lines or is {len(api[1])} characters long"
    seen = fake_rounds(ctx)
    args = ["adapt", "--bundle", str(ctx.fixtures.bundle()), "--task", str(path)]
    cli = judge_cli(call(deploy_main, args), DEPLOY_ERROR, [str(path), *needles], exact=True)
    if seen:
        cli = SILENT, "the rounds ran on it"
    return worst(("load_tasks", api), ("robometa-deploy adapt --task", cli))


def good_task_file(kind: str, ctx: Context) -> Verdict:
    """test_what_dump_tasks_writes_reads_back_in_both_formats; a byte order mark and an env
    key; the deploy CLI on a written file."""
    from robometa.envs import dump_tasks, load_tasks
    from robometa.envs.cartpole import CARTPOLE_DYNAMICS as SPACE

    tasks = SPACE.sample(5, seed=3, split="test")
    path = ctx.tmp / ("robots.json" if kind == "json" else "robots.yaml")
    if kind == "bom":
        path.write_bytes(b"\xef\xbb\xbfenv: robometa/CartPole-v0\ntasks: [{cart_mass: 1.5}]\n")
        ran = call(load_tasks, path, SPACE)
        ok = ran.error is None and ran.value[0]["cart_mass"] == 1.5
        return judge_accepted(ran, None if ok else f"read {show(ran.value, 60)}")
    dump_tasks(tasks, path, env_id="robometa/CartPole-v0")
    if kind == "cli":
        seen = fake_rounds(ctx)
        ran = call(
            deploy_main, ["adapt", "--bundle", str(ctx.fixtures.bundle()), "--task", str(path)]
        )
        return cli_accepted(ran, None if seen else "the rounds did not run")
    ran = call(load_tasks, path, SPACE)
    return judge_accepted(ran, None if ran.value == tasks else "read other tasks than written")


def task_file_cases() -> list[Case]:
    T = load_tests("envs/test_task_files.py")
    cat = "task-files"
    cases = [
        Case("task file written by dump_tasks (YAML)", cat, partial(good_task_file, "yaml"), True),
        Case("task file written by dump_tasks (JSON)", cat, partial(good_task_file, "json"), True),
        Case("task file with a byte order mark and env", cat, partial(good_task_file, "bom"), True),
        Case(
            "robometa-deploy adapt --task on a good file", cat, partial(good_task_file, "cli"), True
        ),
    ]
    cases += [
        Case(f"task file: {name}", cat, partial(bad_task_file, filename, content, needles))
        for name, filename, content, needles in T.BAD_TASK_FILES
    ]
    return cases


# ------------------------------------------------------------------------- robometa flags


def bad_robometa_flag(argv: list[str], needle: str, ctx: Context) -> Verdict:
    config, out = tiny_config(ctx), ctx.tmp / "out"
    args = [a.format(config=config, out=out) for a in argv]
    ran = call(robometa_main, args)
    verdict = judge_cli(
        ran,
        f"robometa {args[0]}: error: ",
        [needle],
        [r"allowed range|expected adaptation step counts"],
    )
    made = [p.name for p in ctx.tmp.glob("out*")] + (
        ["runs"] if (ctx.tmp / "runs").exists() else []
    )
    return downgrade(verdict, f"created {made}" if made else None)


def robometa_flag_control(kind: str, ctx: Context) -> Verdict:
    """Flags at their limits are accepted (test_the_flag_bounds_accept_their_limits)."""
    if kind == "configs":
        ran = call(robometa_main, ["configs"])
        return cli_accepted(ran, None if ran.out.strip() else "listed nothing")
    run = ctx.tmp / "run"
    argv = [
        "train",
        str(tiny_config(ctx)),
        "--out",
        str(run),
        "--seed",
        "4294967295",
        "--steps",
        "300",
    ]
    ran = call(robometa_main, argv)
    return cli_accepted(ran, None if (run / "policy.pt").exists() else "no policy.pt written")


def robometa_cli_cases() -> list[Case]:
    B = load_tests("training/test_bad_input.py")
    cat = "robometa-cli"
    cases = [
        Case(
            "train --seed 4294967295 --steps 300",
            cat,
            partial(robometa_flag_control, "train"),
            True,
        ),
        Case("configs", cat, partial(robometa_flag_control, "configs"), True),
    ]
    cases += [
        Case(f"robometa {name}", cat, partial(bad_robometa_flag, argv, needle))
        for name, argv, needle in B.BAD_FLAGS
    ]
    return cases


BUILDERS: dict[str, Callable[[], list[Case]]] = {
    "bundles": bundle_cases,
    "runtime": runtime_cases,
    "deploy-cli": deploy_cli_cases,
    "export": export_cases,
    "kills": kill_cases,
    "write-faults": write_fault_cases,
    "configs": config_cases,
    "task-files": task_file_cases,
    "robometa-cli": robometa_cli_cases,
}


def all_cases(slugs: Iterable[str]) -> tuple[list[Case], dict[str, str]]:
    """The cases of the categories, with unique names; and the categories whose tables could
    not be read (slug -> why)."""
    cases: list[Case] = []
    failed: dict[str, str] = {}
    for slug in slugs:
        try:
            with redirect_stdout(io.StringIO()):
                built = BUILDERS[slug]()
        except Exception as exc:
            failed[slug] = f"{type(exc).__name__}: {one_line(exc)}"
            continue
        seen: dict[str, int] = {}
        for case in built:
            n = seen[case.name] = seen.get(case.name, 0) + 1
            cases.append(case if n == 1 else dataclasses.replace(case, name=f"{case.name} #{n}"))
    return cases, failed


def quick_selection(cases: list[Case]) -> list[Case]:
    """Per category: the cases marked quick, else the first control and two other cases."""
    chosen: list[Case] = []
    for slug in BUILDERS:
        mine = [c for c in cases if c.category == slug]
        if any(c.quick for c in mine):
            chosen += [c for c in mine if c.quick]
            continue
        controls = [c for c in mine if c.control and c.quick is not False][:1]
        others = [c for c in mine if not c.control and c.quick is not False][:2]
        chosen += [c for c in mine if c in controls or c in others]
    return chosen


# ------------------------------------------------------------------------------- worker


def worker(fixtures_root: Path, result_fd: int, slugs: list[str]) -> int:
    """Run the cases named on stdin, one JSON line per case on ``result_fd``."""
    import pytest
    import torch

    torch.set_num_threads(1)
    cases = {c.name: c for c in all_cases(slugs)[0]}
    fixtures = Fixtures(fixtures_root)
    home = Path.cwd()
    with os.fdopen(result_fd, "w") as results:
        results.write(json.dumps({"ready": len(cases)}) + "\n")  # the cases' clocks start now
        results.flush()
        try:
            for line in sys.stdin:
                case = cases[line.rstrip("\n")]
                tmp = Path(tempfile.mkdtemp(prefix="case-", dir=fixtures_root))
                mp, fault = pytest.MonkeyPatch(), pytest.MonkeyPatch()
                mp.chdir(tmp)
                t0 = time.perf_counter()
                try:
                    outcome, detail = case.run(Context(tmp, mp, fixtures, fault))
                except Exception as exc:
                    tail = traceback.format_exc().strip().splitlines()[-6:]
                    outcome, detail = HARNESS, f"{type(exc).__name__}: {exc} | " + " / ".join(tail)
                finally:
                    fault.undo()
                    mp.undo()
                    os.chdir(home)
                    shutil.rmtree(tmp, ignore_errors=True)
                seconds = time.perf_counter() - t0
                doc = {"outcome": outcome, "detail": one_line(detail)[:400], "seconds": seconds}
                results.write(json.dumps(doc) + "\n")
                results.flush()
        finally:
            fixtures.close()
    return 0


class Worker:
    """The worker process, seen from the harness: a hang kills it with all it started."""

    def __init__(self, fixtures_root: Path, slugs: list[str], log: Path) -> None:
        read, write = os.pipe()
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        self.log = log.open("a")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "--worker",
                str(fixtures_root),
                "--result-fd",
                str(write),
                "--only",
                ",".join(slugs),
                "--out",
                os.devnull,
            ],
            stdin=subprocess.PIPE,
            stdout=self.log,
            stderr=self.log,
            pass_fds=(write,),
            start_new_session=True,
            text=True,
            env=env,
            cwd=fixtures_root,
        )
        os.close(write)
        self.results = os.fdopen(read)
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.results, selectors.EVENT_READ)
        line = self.results.readline() if self.sel.select(STARTUP_TIMEOUT) else ""
        if not line:
            self.close(kill=True)
            tail = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the worker did not start in {STARTUP_TIMEOUT} s:\n{tail}")

    def run(self, name: str, timeout: float) -> dict[str, Any] | None:
        """The case's result; None if it did not answer in time. Raises EOFError if the worker
        died."""
        try:
            self.proc.stdin.write(name + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError as exc:
            raise EOFError("the worker had exited") from exc
        if not self.sel.select(timeout):
            return None
        line = self.results.readline()
        if not line:
            raise EOFError(f"the worker died (exit status {self.proc.wait()})")
        return json.loads(line)

    def close(self, kill: bool = False) -> None:
        if kill:  # its whole session: the zygote and state writers it started too
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(BrokenPipeError):  # a worker that died cannot be told
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.results.close()
        self.log.close()


def run_cases(cases: list[Case], root: Path, timeout: float) -> list[dict[str, Any]]:
    log = root / "worker.log"
    slugs = sorted({c.category for c in cases})
    fixtures_root = root / "work"
    fixtures_root.mkdir()
    records: list[dict[str, Any]] = []
    current: Worker | None = None
    for i, case in enumerate(cases):
        if current is None:
            current = Worker(fixtures_root, slugs, log)
        t0 = time.perf_counter()
        try:
            result = current.run(case.name, timeout)
        except EOFError as exc:
            tail = log.read_text(errors="replace")[-300:] if log.exists() else ""
            result = {"outcome": TRACEBACK, "detail": f"{exc}: {one_line(tail)}"}
            current.close(kill=True)
            current = None
        if result is None:
            result = {"outcome": HANG, "detail": f"no answer in {timeout:g} s"}
            current.close(kill=True)
            current = None
        result.setdefault("seconds", time.perf_counter() - t0)
        records.append(
            {
                "name": case.name,
                "category": TITLES[case.category],
                "control": case.control,
                **result,
            }
        )
        if result["outcome"] not in (CLEAR, INTACT, ACCEPTED):
            print(
                f"  [{i + 1}/{len(cases)}] {case.name}: {result['outcome']}: "
                f"{result['detail'][:160]}",
                file=sys.stderr,
            )
    if current is not None:
        current.close()
    return records


# ------------------------------------------------------------------------------- report


def tally(records: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    table: dict[str, dict[str, int]] = {}
    for _, title in CATEGORIES:
        mine = [r for r in records if r["category"] == title]
        if not mine:
            continue
        row = {"tried": len(mine), "controls": sum(r["control"] for r in mine)}
        row.update({o: sum(r["outcome"] == o for r in mine) for o in OUTCOMES})
        table[title] = row
    return table


COLUMNS = (  # (header, key)
    ("tried", "tried"),
    ("clear", CLEAR),
    ("intact", INTACT),
    ("controls ok", ACCEPTED),
    ("unclear", UNCLEAR),
    ("traceback", TRACEBACK),
    ("silent", SILENT),
    ("hang", HANG),
    ("lost", LOST),
)


def print_table(table: dict[str, dict[str, int]], totals: dict[str, int]) -> None:
    widths = [max(len(h), 5) + 2 for h, _ in COLUMNS]
    print(
        f"{'category':19}" + "".join(f"{h:>{w}}" for (h, _), w in zip(COLUMNS, widths, strict=True))
    )
    for title, row in [*table.items(), ("total", totals)]:
        cells = [
            f"{row[ACCEPTED]}/{row['controls']}" if key == ACCEPTED else str(row[key])
            for _, key in COLUMNS
        ]
        print(f"{title:19}" + "".join(f"{c:>{w}}" for c, w in zip(cells, widths, strict=True)))
    others = {o: totals[o] for o in (REFUSED, HARNESS) if totals[o]}
    if others:
        print("also: " + ", ".join(f"{n} {o}" for o, n in others.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a control and a few cases per category (the smoke test)",
    )
    parser.add_argument(
        "--only",
        default="",
        metavar="CATEGORY,...",
        help="categories to run: " + ", ".join(s for s, _ in CATEGORIES),
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per case (hang)")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result-fd", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    by_name = {title: slug for slug, title in CATEGORIES} | {s: s for s, _ in CATEGORIES}
    wanted = [w.strip() for w in args.only.split(",") if w.strip()]
    unknown = [w for w in wanted if w not in by_name]
    if unknown:
        parser.error(f"--only: unknown categories {unknown}; choose from {list(BUILDERS)}")
    slugs = [by_name[w] for w in wanted] or list(BUILDERS)
    if args.worker is not None:
        return worker(args.worker, args.result_fd, slugs)

    t0 = time.perf_counter()
    cases, unreadable = all_cases(slugs)
    if args.quick:
        cases = quick_selection(cases)
    for slug, why in unreadable.items():
        print(f"cannot read the cases of {TITLES[slug]}: {why}", file=sys.stderr)
    print(f"{len(cases)} cases in {len({c.category for c in cases})} categories", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="robometa-robustness-") as tmp:
        records = run_cases(cases, Path(tmp), args.timeout)
    wall = time.perf_counter() - t0

    table = tally(records)
    totals = {k: sum(row[k] for row in table.values()) for k in ("tried", "controls", *OUTCOMES)}
    target_met = all(totals[o] == 0 for o in TARGET)
    harness_failed = bool(unreadable) or totals[HARNESS] > 0
    from robometa import __version__

    doc = {
        "benchmark": "robustness",
        "command": " ".join(
            [Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]
        ),
        "quick": args.quick,
        "timeout_s": args.timeout,
        "wall_s": wall,
        "target": TARGET_TEXT,
        "outcomes": list(OUTCOMES),
        "categories": table,
        "totals": totals,
        "unreadable_categories": {TITLES[s]: why for s, why in unreadable.items()},
        "controls_accepted": totals[ACCEPTED] == totals["controls"],
        "harness_failed": harness_failed,
        "target_met": target_met,
        "not_clear": [
            f"{r['category']}: {r['name']}: {r['outcome']}"
            for r in records
            if r["outcome"] not in (CLEAR, INTACT, ACCEPTED)
        ],
        "cases": records,
        "environment": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "robometa": __version__,
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print_table(table, totals)
    print(f"target: {TARGET_TEXT}: {'met' if target_met else 'MISSED'}")
    print(f"wall time {wall:.0f} s; wrote {args.out}")
    return 1 if harness_failed else 0


if __name__ == "__main__":
    sys.exit(main())
