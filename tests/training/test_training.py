"""The training harness: same seed same run, kill and resume, run directory, oracle input."""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from robometa.envs.cartpole import CARTPOLE_DYNAMICS

from robometa.cli import main as cli_main
from robometa.config import config_from_dict
from robometa.methods.dqn import DQN
from robometa.train import train

WALL_CLOCK = ("steps_per_s", "wall_s")

# A small but real run: 1500 env steps, learning from step 200, checkpoints every 500 steps.
# log_every does not divide checkpoint_every, so a checkpoint falls between metric rows.
SMALL = {
    "algorithm": "dqn",
    "seed": 3,
    "env": {"id": "robometa/CartPole-v0", "tasks": "train", "num_envs": 2},
    "network": {"hidden": [32, 32]},
    "dqn": {
        "total_steps": 1500,
        "learning_starts": 200,
        "buffer_size": 1000,
        "batch_size": 32,
        "target_update_interval": 100,
        "exploration_fraction": 0.5,
        "n_step": 3,  # pending partial windows must not break exact resume
    },
    "logging": {
        "log_every": 300,
        "checkpoint_every": 500,
        "progress": False,
        "tensorboard": False,
    },
}


def metrics(run: Path) -> list[dict[str, str]]:
    """metrics.csv without the wall-clock columns (they differ between any two runs)."""
    with open(run / "metrics.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k not in WALL_CLOCK} for row in csv.DictReader(f)]


def policy_tensors(run: Path) -> dict[str, torch.Tensor]:
    state = torch.load(run / "policy.pt", weights_only=True)
    return {**state["params"], **{f"buffer.{k}": v for k, v in state["buffers"].items()}}


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted run of SMALL, shared by the tests that only read it."""
    run = tmp_path_factory.mktemp("reference") / "run"
    train(config_from_dict(SMALL), run)
    return run


class TestRunDirectory:
    def test_holds_every_file(self, reference_run: Path) -> None:
        names = {p.name for p in reference_run.iterdir()}
        assert {
            "config.yaml",
            "metrics.csv",
            "checkpoint.pt",
            "policy.pt",
            "learning_curve.png",
        } <= names
        assert not [n for n in names if n.endswith(".tmp")]  # atomic writes leave no temp file
        png = (reference_run / "learning_curve.png").read_bytes()
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000
        assert yaml.safe_load((reference_run / "config.yaml").read_text()) == (
            config_from_dict(SMALL).to_dict()
        )

    def test_metrics_rows(self, reference_run: Path) -> None:
        rows = metrics(reference_run)
        assert [int(r["env_steps"]) for r in rows] == [300, 600, 900, 1200, 1500]
        episodes = [int(r["episodes"]) for r in rows]
        assert episodes == sorted(episodes) and episodes[0] > 0
        assert all(float(r["loss"]) > 0 for r in rows)  # learning starts at step 200
        assert float(rows[-1]["epsilon"]) == pytest.approx(0.05)

    def test_checkpoint_loads_without_pickled_code(self, reference_run: Path) -> None:
        state = torch.load(reference_run / "checkpoint.pt", weights_only=True)
        assert state["format"] == 1
        assert state["torch_version"] == str(torch.__version__)
        alg = state["algorithm"]
        assert alg["env_steps"] == 1500
        assert alg["grad_steps"] == (1500 - 200) // 2 + 1  # one update per vector step
        assert len(alg["buffer"]["action"]) == 1000  # full: capacity 1000
        assert set(alg["net"]) >= {"body.0.weight", "q_head.weight", "obs_mean"}
        assert alg["optimizer"]["state"]  # Adam moments travel with the run
        assert set(state["rng"]) == {"torch", "numpy"}
        assert yaml.safe_load(state["config"])["seed"] == 3

    def test_training_into_an_existing_run_refuses(self, reference_run: Path) -> None:
        before = (reference_run / "metrics.csv").read_text()
        with pytest.raises(FileExistsError, match=r"already holds a run .*--resume"):
            train(config_from_dict(SMALL), reference_run)
        assert (reference_run / "metrics.csv").read_text() == before

    def test_training_into_a_run_killed_before_its_first_checkpoint_refuses(
        self, tmp_path: Path
    ) -> None:
        (tmp_path / "config.yaml").write_text("algorithm: dqn\n")
        with pytest.raises(FileExistsError, match=r"already holds a run \(config\.yaml\)"):
            train(config_from_dict(SMALL), tmp_path)


def test_same_seed_same_run(reference_run: Path, tmp_path: Path) -> None:
    train(config_from_dict(SMALL), tmp_path / "again")
    assert metrics(tmp_path / "again") == metrics(reference_run)
    assert_same_tensors(policy_tensors(tmp_path / "again"), policy_tensors(reference_run))


def test_another_seed_another_run(reference_run: Path, tmp_path: Path) -> None:
    cfg = config_from_dict({**SMALL, "seed": 4})
    train(cfg, tmp_path / "other", stop_after=600)
    assert metrics(tmp_path / "other")[:2] != metrics(reference_run)[:2]


def test_killed_run_resumes_to_the_uninterrupted_result(
    reference_run: Path, tmp_path: Path
) -> None:
    config = tmp_path / "small.yaml"
    config.write_text(yaml.safe_dump(SMALL))
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "robometa.cli", "train", str(config), "--out", str(run)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONHASHSEED": "0"},
    )
    try:
        # Kill between the first (500) and second (1000) checkpoints, after the 600-step row:
        # the resumed run must replay steps 500..600 and rewrite that row identically.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            rows = metrics(run) if (run / "metrics.csv").exists() else []
            if (run / "checkpoint.pt").exists() and rows and int(rows[-1]["env_steps"]) >= 600:
                break
            time.sleep(0.01)
        assert proc.poll() is None, f"run ended before it was killed: {proc.stderr.read()!r}"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert not (run / "policy.pt").exists()
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ckpt["algorithm"]["env_steps"] == 500

    assert cli_main(["train", "--resume", str(run)]) == 0

    assert metrics(run) == metrics(reference_run)
    assert_same_tensors(policy_tensors(run), policy_tensors(reference_run))
    final = torch.load(run / "checkpoint.pt", weights_only=True)["algorithm"]
    expected = torch.load(reference_run / "checkpoint.pt", weights_only=True)["algorithm"]
    assert_same_tensors(final["target"], expected["target"])
    assert final["grad_steps"] == expected["grad_steps"]


def test_resume_in_process_after_stop_after(reference_run: Path, tmp_path: Path) -> None:
    """``stop_after`` between checkpoints, then resume: also the uninterrupted result."""
    run = tmp_path / "run"
    train(config_from_dict(SMALL), run, stop_after=1100)
    train(None, run, resume=True)  # type: ignore[arg-type]
    assert metrics(run) == metrics(reference_run)
    assert_same_tensors(policy_tensors(run), policy_tensors(reference_run))


def test_resume_without_checkpoint_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(FileNotFoundError, match=r"cannot resume: no checkpoint at .*checkpoint"):
        train(None, tmp_path, resume=True)  # type: ignore[arg-type]
    assert cli_main(["train", "--resume", str(tmp_path / "nope")]) == 2
    assert "cannot resume: no checkpoint at" in capsys.readouterr().err


class TestOracle:
    def test_observation_carries_the_dynamics_parameters(self) -> None:
        cfg = config_from_dict({**SMALL, "algorithm": "oracle"})
        agent = DQN(cfg)
        try:
            space = agent.space
            base_dim = agent.envs[0].unwrapped.observation_space.shape[0]
            assert base_dim == 4 and len(space) == 10
            assert agent.net.spec.obs_dim == base_dim + len(space)
            assert agent.obs.shape == (2, base_dim + len(space))
            for i, env in enumerate(agent.envs):
                expected = space.normalized(env.unwrapped.get_task())
                np.testing.assert_allclose(agent.obs[i, base_dim:], expected, atol=1e-6)
            # The parameters enter the network as the wrapper normalized them.
            assert agent.net.obs_mean[base_dim:].eq(0).all()
            assert agent.net.obs_std[base_dim:].eq(1).all()
            # Two envs, two different robots (domain randomization per env and episode).
            assert not np.array_equal(agent.obs[0, base_dim:], agent.obs[1, base_dim:])
            policy = agent.policy()
            assert policy.privileged and policy.lrs == {} and policy.adapt_steps == 0
        finally:
            agent.close()

    def test_trained_oracle_policy_file(self, tmp_path: Path) -> None:
        cfg = config_from_dict(
            {**SMALL, "algorithm": "oracle", "dqn": {**SMALL["dqn"], "total_steps": 400}}
        )
        train(cfg, tmp_path / "oracle")
        state = torch.load(tmp_path / "oracle" / "policy.pt", weights_only=True)
        assert state["privileged"] is True
        assert state["algorithm"] == "oracle"
        assert state["params"]["body.0.weight"].shape == (32, 4 + 10)


class TestTaskSampling:
    @staticmethod
    def tasks_seen(tasks: str, steps: int = 400) -> list:
        agent = DQN(config_from_dict({**SMALL, "env": {**SMALL["env"], "tasks": tasks}}))
        seen = [env.unwrapped.get_task() for env in agent.envs]
        try:
            for _ in range(steps // 2):
                agent.iterate()
                seen += [env.unwrapped.get_task() for env in agent.envs]
        finally:
            agent.close()
        return seen

    def test_domain_randomization_draws_a_new_train_task_per_episode(self) -> None:
        seen = self.tasks_seen("train")
        distinct = set(seen)
        assert len(distinct) > 10  # random-policy cart-pole episodes last ~20 steps
        lo, hi = CARTPOLE_DYNAMICS["pole_length"].train
        assert all(lo <= t["pole_length"] <= hi for t in distinct)

    def test_nominal_keeps_the_nominal_robot(self) -> None:
        seen = set(self.tasks_seen("nominal", steps=100))
        assert seen == {CARTPOLE_DYNAMICS.nominal()}


def test_a_config_that_cannot_build_its_env_leaves_no_run_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An unknown env id is refused by the config itself now; an env that fails to build
    # for another reason must still leave nothing behind, not even the directory.
    with pytest.raises(ValueError, match=r"config key 'env\.id': 'robometa/Nope-v0' is not one"):
        config_from_dict({**SMALL, "env": {**SMALL["env"], "id": "robometa/Nope-v0"}})

    def cannot_build(cfg: object, backend: object = None) -> None:
        raise ValueError("the simulator refused")

    monkeypatch.setattr("robometa.train.make_algorithm", cannot_build)
    with pytest.raises(ValueError, match="the simulator refused"):
        train(config_from_dict(SMALL), tmp_path / "run")
    assert not (tmp_path / "run").exists()
    monkeypatch.undo()
    train(
        config_from_dict({**SMALL, "dqn": {**SMALL["dqn"], "total_steps": 300}}), tmp_path / "run"
    )
    assert (tmp_path / "run" / "policy.pt").exists()


def test_run_logged_sends_output_and_errors_to_the_log(tmp_path: Path, capfd) -> None:
    from robometa.train import run_logged

    def noisy(x: int) -> int:
        print("to stdout")
        os.write(2, b"to fd 2\n")
        return x + 1

    def failing() -> None:
        print("before the error")
        raise ValueError("robot fell over")

    log = tmp_path / "job.log"
    assert run_logged(log, noisy, 1) == 2
    assert log.read_text() == "to stdout\nto fd 2\n"
    with pytest.raises(ValueError, match="robot fell over"):
        run_logged(log, failing, append=True)
    text = log.read_text()
    assert text.startswith("to stdout\nto fd 2\nbefore the error\n")
    assert "Traceback" in text and "ValueError: robot fell over" in text
    print("back on the terminal")
    out, err = capfd.readouterr()
    assert out == "back on the terminal\n" and err == ""


# ------------------------------------------------------------ what a first run shows


def small(**changes: dict) -> dict:
    """SMALL with some sections updated, e.g. ``small(dqn={"total_steps": 700})``."""
    return {**SMALL, **{k: {**SMALL.get(k, {}), **v} for k, v in changes.items()}}


def test_the_last_stretch_of_a_run_gets_a_metrics_row(tmp_path: Path) -> None:
    train(config_from_dict(small(dqn={"total_steps": 700})), tmp_path / "run")
    rows = metrics(tmp_path / "run")
    assert [int(r["env_steps"]) for r in rows] == [300, 600, 700]
    assert int(rows[-1]["episodes"]) > int(rows[-2]["episodes"])
    assert float(rows[-1]["loss"]) > 0  # the losses of steps 600..700, not an empty average


def test_a_run_shorter_than_log_every_still_draws_its_curve(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    from robometa.train import learning_curve_figure

    run = tmp_path / "run"
    # No gradient step either: learning starts at step 1000.
    train(
        config_from_dict(
            small(dqn={"total_steps": 300, "learning_starts": 1000}, logging={"log_every": 1000})
        ),
        run,
    )
    rows = metrics(run)
    assert [int(r["env_steps"]) for r in rows] == [300]
    assert int(rows[0]["episodes"]) > 0 and rows[0]["loss"] == "nan"
    fig = learning_curve_figure(run)
    try:
        (line,) = fig.axes[0].get_lines()
        assert list(line.get_xdata()) == [300]
        assert line.get_marker() == "o"  # a single point is drawn, not an invisible line
        assert fig.axes[1].texts[0].get_text() == "no gradient steps yet"
    finally:
        plt.close(fig)
    assert (run / "learning_curve.png").stat().st_size > 5000


def test_learning_curve_shows_the_selection_return_beside_the_episode_return(
    tmp_path: Path,
) -> None:
    import matplotlib.pyplot as plt

    from robometa.train import learning_curve_figure

    run = tmp_path / "run"
    train(
        config_from_dict(
            small(dqn={"total_steps": 600}, logging={"eval_every": 300, "eval_tasks": 2})
        ),
        run,
    )
    with open(run / "selection.csv", newline="") as f:
        selection = list(csv.DictReader(f))
    assert [int(r["env_steps"]) for r in selection] == [300, 600]
    fig = learning_curve_figure(run)
    try:
        ax = fig.axes[0]
        assert ax.get_title() == "dqn on robometa/CartPole-v0"
        assert (ax.get_xlabel(), ax.get_ylabel()) == ("environment steps", "return")
        assert [t.get_text() for t in ax.get_legend().get_texts()] == [
            "episode return (mean of last 20, exploring)",
            "greedy return on training tasks",  # dqn does not adapt
        ]
        episode, greedy = ax.get_lines()
        assert list(greedy.get_xdata()) == [300, 600]
        assert list(greedy.get_ydata()) == [float(r["train_task_return"]) for r in selection]
    finally:
        plt.close(fig)


def test_progress_bar_shows_the_selection_return_and_ends_at_its_total(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "small.yaml"
    config.write_text(yaml.safe_dump(SMALL))
    run = tmp_path / "run"
    # 2 envs step together: 601 steps end at 602, which the bar and the report both say.
    args = ["train", str(config), "--out", str(run), "--steps", "601"]
    sets = ["logging.progress=true", "logging.eval_every=300", "logging.eval_tasks=2"]
    assert cli_main(args + [a for s in sets for a in ("--set", s)]) == 0
    out, err = capsys.readouterr()
    frames = re.findall(r"(\d+)/(\d+) \[", err)
    assert frames and all(int(n) <= int(total) for n, total in frames)
    assert frames[-1] == ("602", "602")
    final = err.replace("\r", "\n").strip().splitlines()[-1]
    last_selection = metrics_file(run / "selection.csv")[-1]["train_task_return"]
    assert f"sel={float(last_selection):.1f}" in final
    assert "dqn takes 2 env steps per iteration: this run ends at 602 env steps" in err
    assert torch.load(run / "checkpoint.pt", weights_only=True)["algorithm"]["env_steps"] == 602
    assert int(metrics(run)[-1]["env_steps"]) == 602
    assert (
        out == f"run written to {run}: 602 env steps (policy.pt, metrics.csv, learning_curve.png)\n"
    )


def metrics_file(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------ Ctrl-C and early kills


@pytest.fixture
def sigint_raises() -> Iterator[None]:
    """Python's own SIGINT handling, even where the test runner was started ignoring it."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def ctrl_c_at(monkeypatch: pytest.MonkeyPatch, env_steps: int) -> None:
    """Deliver SIGINT from inside ``DQN.iterate`` once the run reaches ``env_steps``."""
    iterate = DQN.iterate

    def iterate_then_ctrl_c(self: DQN) -> dict:
        out = iterate(self)
        if self.env_steps == env_steps:
            signal.raise_signal(signal.SIGINT)
        return out

    monkeypatch.setattr(DQN, "iterate", iterate_then_ctrl_c)


def test_ctrl_c_at_a_checkpoint_resumes_to_the_uninterrupted_result(
    reference_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sigint_raises: None
) -> None:
    """The periodic checkpoint at 500 is also the interrupt's: no second env restart there."""
    from robometa.train import TrainingInterrupted

    run = tmp_path / "run"
    ctrl_c_at(monkeypatch, 500)
    with pytest.raises(TrainingInterrupted) as stop:
        train(config_from_dict(SMALL), run)
    assert stop.value.env_steps == 500
    assert torch.load(run / "checkpoint.pt", weights_only=True)["algorithm"]["env_steps"] == 500
    monkeypatch.undo()
    train(None, run, resume=True)  # type: ignore[arg-type]
    assert metrics(run) == metrics(reference_run)
    assert_same_tensors(policy_tensors(run), policy_tensors(reference_run))


def test_ctrl_c_after_the_last_step_leaves_a_resumable_not_a_finished_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sigint_raises: None
) -> None:
    from robometa.train import TrainingInterrupted, run_status

    cfg = config_from_dict(small(logging={"eval_every": 500, "eval_tasks": 2}))
    run = tmp_path / "run"
    ctrl_c_at(monkeypatch, 1500)  # the budget is reached, the final selection not yet run
    with pytest.raises(TrainingInterrupted):
        train(cfg, run)
    assert (run / "policy.pt").exists()  # model selection wrote it at 500 and 1000
    assert torch.load(run / "checkpoint.pt", weights_only=True)["algorithm"]["env_steps"] == 1500
    assert run_status(run, cfg) == "resumable"
    monkeypatch.undo()
    train(None, run, resume=True)  # type: ignore[arg-type]
    assert run_status(run, cfg) == "finished"
    assert [int(r["env_steps"]) for r in metrics_file(run / "selection.csv")] == [500, 1000, 1500]


def test_a_run_killed_before_its_first_checkpoint_resumes_to_the_uninterrupted_result(
    reference_run: Path, tmp_path: Path
) -> None:
    """The checkpoint at env step 0 makes the first stretch resumable, exactly."""
    from robometa.train import run_status

    run = tmp_path / "run"
    train(config_from_dict(SMALL), run, stop_after=300)  # the first periodic one is at 500
    assert torch.load(run / "checkpoint.pt", weights_only=True)["algorithm"]["env_steps"] == 0
    assert run_status(run, config_from_dict(SMALL)) == "resumable"
    train(None, run, resume=True)  # type: ignore[arg-type]
    assert metrics(run) == metrics(reference_run)
    assert_same_tensors(policy_tensors(run), policy_tensors(reference_run))


def test_ctrl_c_in_robometa_train_checkpoints_and_says_how_to_resume(tmp_path: Path) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text(
        yaml.safe_dump(
            small(
                env={"num_envs": 1},
                dqn={"total_steps": 6000},
                logging={"log_every": 200, "checkpoint_every": 100000},
            )
        )
    )
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "robometa.cli", "train", str(config), "--out", str(run)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # As in a terminal: SIGINT is not ignored, whatever this test process inherited.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if (run / "metrics.csv").exists() and metrics(run):
                break
            time.sleep(0.01)
        assert proc.poll() is None, f"run ended before Ctrl-C: {proc.communicate()}"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert "Traceback" not in out + err
    steps = torch.load(run / "checkpoint.pt", weights_only=True)["algorithm"]["env_steps"]
    assert 200 <= steps < 6000
    lines = [ln for ln in (out + err).splitlines() if "resume" in ln]
    assert lines == [
        f"interrupted at {steps} env steps; resume with: robometa train --resume {run}"
    ]
    assert not (run / "policy.pt").exists()

    assert cli_main(["train", "--resume", str(run)]) == 0
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert state["algorithm"]["env_steps"] == 6000 and state["finished"]
    assert (run / "policy.pt").exists()


def test_train_without_a_config_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main(["train"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("robometa train: error: give a CONFIG.yaml") and "--resume" in err
    config = tmp_path / "small.yaml"
    config.write_text(yaml.safe_dump(SMALL))
    assert cli_main(["train", str(config), "--resume", str(tmp_path / "run")]) == 2
    assert "robometa train: error: --resume continues a run" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        cli_main(["train", str(config), "--steps", "0"])
    assert exit_.value.code == 2
    assert "argument --steps: '0' is not an integer >= 1" in capsys.readouterr().err


# ------------------------------------------------------------------ training tasks


class TestTrainTasks:
    """``rollout.train_tasks``: what DQN, the meta-learners and model selection train on."""

    @staticmethod
    def space():
        from robometa.rollout import make_env

        env = make_env("robometa/CartPole-v0")
        try:
            return env.unwrapped.dynamics_space
        finally:
            env.close()

    def test_nominal_draws_nothing(self) -> None:
        from robometa.rollout import train_tasks

        space, rng = self.space(), np.random.default_rng(0)
        before = rng.bit_generator.state
        assert train_tasks(space, "nominal", 3, rng) == [space.nominal()] * 3
        assert rng.bit_generator.state == before

    def test_train_draws_one_seed_from_a_generator_or_takes_a_seed(self) -> None:
        from robometa.rollout import seed_from, train_tasks

        space = self.space()
        rng, twin = np.random.default_rng(4), np.random.default_rng(4)
        tasks = train_tasks(space, "train", 5, rng)
        assert tasks == space.sample(5, seed=seed_from(twin), split="train")
        assert rng.bit_generator.state == twin.bit_generator.state  # exactly one draw
        assert len(set(map(tuple, (t.values() for t in tasks)))) == 5
        assert train_tasks(space, "train", 2, 5000) == space.sample(2, seed=5000, split="train")

    def test_every_trainer_and_selection_call_it(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import robometa.methods.dqn
        import robometa.methods.gradient
        import robometa.rollout
        from robometa.train import selection_return

        calls: list[tuple[str, int]] = []
        real = robometa.rollout.train_tasks

        def spy(space: object, which: str, n: int, seed: object) -> list:
            calls.append((which, n))
            return real(space, which, n, seed)

        for module in (robometa.methods.dqn, robometa.methods.gradient, robometa.rollout):
            monkeypatch.setattr(module, "train_tasks", spy)
        cfg = config_from_dict({**SMALL, "env": {**SMALL["env"], "tasks": "nominal"}})
        DQN(cfg).close()
        assert calls == [("nominal", 8), ("nominal", 1), ("nominal", 1)]  # scales, 2 envs
        calls.clear()
        meta = config_from_dict(
            {
                **SMALL,
                "algorithm": "cavia",
                "network": {"hidden": [8], "context_dim": 2},
                "meta": {"task_pool": 3, "collect_steps": 5},
            }
        )
        robometa.methods.gradient.MetaLearner(meta).close()
        assert calls == [("train", 3)]  # the pool
        calls.clear()

        class Stop(Exception):
            pass

        def stop(*args: object, **kwargs: object) -> None:
            raise Stop

        import robometa.evaluate

        monkeypatch.setattr(robometa.evaluate, "PolicyMethod", stop)  # evaluation starts
        with pytest.raises(Stop):
            selection_return(None, cfg)  # type: ignore[arg-type]
        assert calls == [("nominal", cfg.logging.eval_tasks)]
