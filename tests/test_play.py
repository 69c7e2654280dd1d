"""`robometa play`: the video has one frame per kept step, the printed returns are eval's and
the runtime's, the task file picks the robot, and bad input is one error line naming the flag."""

from __future__ import annotations

import importlib.util
import json
import math
import re
import shutil
import sys
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pytest
from robometa.deploy import Adapter
from robometa.deploy.loop import collect as deploy_collect
from robometa.deploy.loop import greedy_return

from robometa.cli import main as cli_main
from robometa.evaluate import EVAL_SEED, PolicyMethod, TaskSet, evaluate_method
from robometa.policy import Policy
from robometa.rollout import episode_return, make_env, seed_from

QUICKSTART = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"
#: a tiny CAVIA run; the large inner learning rate makes 5 steps change what it does, so the
#: before/after parity checks below can tell the two panels apart.
TINY = [
    "--steps", "800",
    "--set", "logging.progress=false",
    "--set", "logging.eval_every=0",
    "--set", "logging.tensorboard=false",
    "--set", "adaptation.lr=30",
    "--set", "network.hidden=[32,32]",
]  # fmt: skip
ROBOTS_YAML = (
    "tasks:\n  - {motor_sign: -1, pole_length: 1.3}\n  - {motor_sign: 1, cart_mass: 2.5}\n"
)
PANEL_WIDTH = 320  # the families' render width; two panels have an 8-pixel gap between them


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A `robometa train` run directory of the tiny CAVIA config."""
    out = tmp_path_factory.mktemp("play") / "run"
    assert cli_main(["train", str(QUICKSTART), "--out", str(out), *TINY]) == 0
    return out


@pytest.fixture(scope="module")
def bundle(run: Path) -> Path:
    """The run exported with `robometa export`."""
    out = run.parent / "bundle"
    assert cli_main(["export", str(run), "--out", str(out)]) == 0
    return out


@pytest.fixture
def robots(tmp_path: Path) -> Path:
    path = tmp_path / "robots.yaml"
    path.write_text(ROBOTS_YAML)
    return path


def printed(out: str, prefix: str) -> list[float]:
    """The per-episode returns on the line that starts with ``prefix``."""
    (line,) = [ln for ln in out.splitlines() if ln.startswith(prefix)]
    text = line.split(": ", 1)[1]
    if text.startswith("return "):
        return [float(text.split()[1])]
    match = re.fullmatch(r"returns (.*) \(mean (.*)\)", text)
    assert match, line
    returns = [float(x) for x in match.group(1).split(", ")]
    assert float(match.group(2)) == pytest.approx(np.mean(returns), abs=0.05)
    return returns


def panel_frames(episode_return: float, every: int) -> int:
    """Frames of one episode: the start, every ``every``-th step and the last. CartPole pays
    +1 per step, the terminating one included, so the return is the episode length."""
    return 1 + math.ceil(episode_return / every)


def video_frames(panels: list[list[float]], every: int) -> int:
    """Panels side by side per episode (the shorter holds), the episodes one after another."""
    return sum(
        max(panel_frames(r, every) for r in episode) for episode in zip(*panels, strict=True)
    )


# ------------------------------------------------------------------------------ a run


@pytest.mark.slow
def test_playing_a_run_prints_evals_returns_and_writes_one_frame_per_kept_step(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gif = tmp_path / "run.gif"
    # Robot 1 of the test split: one where the tiny run's 5 steps change the returns.
    args = ["play", str(run), "--seed", str(EVAL_SEED), "--episodes", "2", "--every", "3"]
    args += ["--sample-test-task", "1"]
    assert cli_main([*args, "--out", str(gif)]) == 0
    out = capsys.readouterr().out
    before = printed(out, "before adapting")
    after = printed(out, "after 5 steps on 200 transitions")
    assert f"wrote {gif}" in out

    policy = Policy.load(run)
    env = make_env(policy.env_id, policy.dynamics)
    task = env.unwrapped.dynamics_space.sample(1, seed=1, split="test")[0]
    robot = ", ".join(f"{k}={v:g}" for k, v in task.items())
    assert f"robot (--sample-test-task 1): {robot}" in out
    method = PolicyMethod("cavia", policy, support_epsilon=0.3)
    initial = method.initial_actor()
    assert before == [episode_return(env, initial, task, EVAL_SEED + e) for e in range(2)]
    # robometa eval on this one robot (its first task's seed is EVAL_SEED): k = 0 and k = 5.
    [[r0, r5]] = evaluate_method(method, [TaskSet("robot", [task])], [0, 5], 2)["robot"]
    env.close()
    assert np.mean(before) == pytest.approx(r0)
    assert np.mean(after) == pytest.approx(r5)
    assert after != before  # the tiny run adapts visibly on this robot: the check can fail

    frames = imageio.mimread(gif, memtest=False)
    assert len(frames) == video_frames([before, after], every=3)
    assert {f.shape[1] for f in frames} == {2 * PANEL_WIDTH + 8}


@pytest.mark.slow
def test_task_file_and_index_choose_the_robot(
    run: Path, robots: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines, returns = [], []
    for index in (0, 1):
        gif = tmp_path / f"robot{index}.gif"
        args = ["play", str(run), "--tasks", str(robots), "--task-index", str(index)]
        assert cli_main([*args, "--no-adapt", "--every", "50", "--out", str(gif)]) == 0
        out = capsys.readouterr().out
        (line,) = [ln for ln in out.splitlines() if ln.startswith("robot (")]
        lines.append(line)
        returns.append(printed(out, "before adapting"))
        assert not [ln for ln in out.splitlines() if ln.startswith("after")]
        assert {f.shape[1] for f in imageio.mimread(gif)} == {PANEL_WIDTH}  # one panel
    assert f"--tasks {robots} --task-index 0" in lines[0]
    assert "motor_sign=-1," in lines[0] and "pole_length=1.3," in lines[0]
    assert "motor_sign=1," in lines[1] and "cart_mass=2.5," in lines[1]
    assert lines[0].split(": ", 1)[1] != lines[1].split(": ", 1)[1]

    from robometa.envs import load_tasks

    policy = Policy.load(run)
    act = PolicyMethod("cavia", policy).initial_actor()
    for index, played in enumerate(returns):
        # A fresh env per robot, as each `play` makes: PyBullet caches the regenerated URDF
        # by path, so an env rebuilt for another geometry would keep the first one's.
        env = make_env(policy.env_id, policy.dynamics)
        task = load_tasks(robots, env.unwrapped.dynamics_space)[index]
        assert played == [episode_return(env, act, task, 0)]
        env.close()


# ------------------------------------------------------------------------------ a bundle


@pytest.mark.slow
def test_playing_a_bundle_prints_the_runtimes_returns_before_and_after_adapting(
    bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gif = tmp_path / "bundle.gif"
    args = ["play", str(bundle), "--seed", "3", "--episodes", "2", "--sample-test-task", "1"]
    assert cli_main([*args, "--out", str(gif)]) == 0
    out = capsys.readouterr().out
    before = printed(out, "before adapting")
    after = printed(out, "after ")

    # The same adaptation through the runtime, by hand: support from default_rng(seed).
    adapter = Adapter.load(bundle)
    env = make_env(adapter.bundle.env_id)
    env.unwrapped.set_task(env.unwrapped.dynamics_space.sample(1, seed=1, split="test")[0])
    assert before == [greedy_return(adapter, env, 1, seed=3 + e) for e in range(2)]
    rng = np.random.default_rng(3)
    n = adapter.buffer.capacity
    deploy_collect(adapter, env, n, adapter.support_epsilon, rng, seed=seed_from(rng))
    report = adapter.adapt()
    assert after == [greedy_return(adapter, env, 1, seed=3 + e) for e in range(2)]
    env.close()
    assert report.accepted and after != before
    expected = f"after {report.steps} steps on {report.n_train} transitions "
    assert f"{expected}({report.n_holdout} held out, accepted)" in out

    frames = imageio.mimread(gif, memtest=False)
    assert len(frames) == video_frames([before, after], every=2)  # --every defaults to 2


@pytest.mark.slow
def test_a_bundle_naming_an_unknown_env_is_refused_before_anything_is_imported(
    bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    edited = tmp_path / "edited"
    shutil.copytree(bundle, edited)
    manifest = json.loads((edited / "manifest.json").read_text())
    manifest["env_id"] = "robometa_play_test_module:Env"
    (edited / "manifest.json").write_text(json.dumps(manifest))
    assert cli_main(["play", str(edited), "--out", str(tmp_path / "x.gif")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("robometa play: error: ")
    assert "env_id 'robometa_play_test_module:Env' is not a robometa robot family" in err
    assert "robometa_play_test_module" not in sys.modules
    assert not (tmp_path / "x.gif").exists()


# ------------------------------------------------------------------------------ errors


@pytest.mark.slow
@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--task-index", "2"], "--task-index 2 is outside [0, 1] (2 tasks in "),
        (["--task-index", "-1"], "--task-index -1 is outside [0, 1]"),
    ],
)
def test_a_task_index_out_of_range_is_one_error_line(
    run: Path,
    robots: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    out = tmp_path / "x.gif"
    assert cli_main(["play", str(run), "--tasks", str(robots), *extra, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("robometa play: error: ") and message in err
    assert err.count("\n") == 1 and not out.exists()


@pytest.mark.slow
def test_a_task_index_without_a_task_file_is_one_error_line(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main(["play", str(run), "--task-index", "1", "--out", str(tmp_path / "x.gif")]) == 2
    assert capsys.readouterr().err == "robometa play: error: --task-index 1 needs --tasks FILE\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--out", "play.avi"], "--out play.avi: suffix '.avi' is not one of .gif, .mp4"),
        (["--out", "play"], "--out play: suffix '(none)' is not one of .gif, .mp4"),
        (["--episodes", "0"], "--episodes must be >= 1, got 0"),
        (["--every", "0"], "--every must be >= 1, got 0"),
        (["--fps", "0"], "--fps must be >= 1, got 0"),
    ],
)
def test_bad_flags_are_one_error_line_naming_the_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    # Checked before the source is even looked at: no run is needed.
    assert cli_main(["play", str(tmp_path / "missing"), *args]) == 2
    assert capsys.readouterr().err == f"robometa play: error: {message}\n"


def test_a_path_that_is_neither_run_nor_bundle_is_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = str(tmp_path / "x.gif")
    assert cli_main(["play", str(tmp_path / "missing"), "--out", out]) == 2
    err = capsys.readouterr().err
    missing = tmp_path / "missing"
    assert (
        err == f"robometa play: error: RUN_OR_BUNDLE {missing}: no such run or bundle directory\n"
    )
    (tmp_path / "empty").mkdir()
    assert cli_main(["play", str(tmp_path / "empty"), "--out", out]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"robometa play: error: RUN_OR_BUNDLE {tmp_path / 'empty'} is neither")
    assert "(with policy.pt)" in err and "(with manifest.json)" in err


@pytest.mark.skipif(
    importlib.util.find_spec("imageio_ffmpeg") is not None, reason="imageio-ffmpeg is installed"
)
def test_mp4_without_its_writer_says_what_to_install(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main(["play", str(tmp_path), "--out", str(tmp_path / "play.mp4")]) == 2
    assert "pip install imageio-ffmpeg" in capsys.readouterr().err


@pytest.mark.slow
def test_a_dr_run_plays_one_panel_as_trained(tmp_path: Path, capsys) -> None:
    """DR does not adapt in eval (its fine-tuning tunes a rate first): play shows it as is."""
    run = tmp_path / "dr"
    args = ["train", "cartpole_dr", "--steps", "400", "--out", str(run)]
    assert cli_main([*args, "--set", "logging.progress=false"]) == 0
    gif = tmp_path / "dr.gif"
    assert cli_main(["play", str(run), "--every", "5", "--out", str(gif)]) == 0
    out = capsys.readouterr().out
    assert "dqn does not adapt (not meta-trained)" in out
    assert not [ln for ln in out.splitlines() if ln.startswith(("before", "after"))]
    assert {f.shape[1] for f in imageio.mimread(gif)} == {PANEL_WIDTH}


def test_a_directory_that_is_no_run_gets_no_run_hint(tmp_path: Path, capsys) -> None:
    assert cli_main(["play", str(tmp_path), "--out", str(tmp_path / "x.gif")]) == 2
    err = capsys.readouterr().err
    assert "is neither a run directory" in err and "has it finished" not in err
