"""The training harness shared by every algorithm: progress, metrics, checkpoints, resume.

A run directory holds ``config.yaml`` (the validated config), ``metrics.csv``, ``checkpoint.pt``
(everything needed to continue: algorithm state, replay, optimizer, RNG states), with model
selection ``selection.csv``, and at the end ``policy.pt`` (what eval and export read) and
``learning_curve.png``.

Checkpoints are episode boundaries: every env restarts right after one, in interrupted and
uninterrupted runs alike, so a run resumed from a checkpoint continues exactly as if it had
never stopped (same seed, CPU). A new run writes its first checkpoint at env step 0, before
any step, so a run killed at any point after it started can be resumed. Ctrl-C writes one more
where it stops, a boundary the uninterrupted run would not have had (see :func:`train`).
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import signal
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

import numpy as np
import torch
import yaml

from robometa import __version__
from robometa.config import META_ALGORITHMS, Config, config_from_dict, load_config
from robometa.policy import Policy

CHECKPOINT_FORMAT = 1
#: files whose presence marks a directory as holding a run (training into it refuses)
RUN_FILES = ("checkpoint.pt", "policy.pt", "config.yaml", "metrics.csv")
METRIC_FIELDS = (
    "env_steps",
    "episodes",
    "return_mean",
    "return_last",
    "loss",
    "epsilon",
    "steps_per_s",
    "wall_s",
)


class Algorithm(Protocol):
    env_steps: int
    rng: np.random.Generator

    @property
    def steps_per_iteration(self) -> int:
        """Env steps one ``iterate()`` takes: a run ends at the first multiple of this at or
        past ``dqn.total_steps``."""
        ...

    def iterate(self) -> dict[str, Any]: ...
    def boundary(self) -> None: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...
    def policy(self) -> Policy: ...
    def close(self) -> None: ...


def make_algorithm(cfg: Config) -> Algorithm:
    if cfg.algorithm in META_ALGORITHMS:
        from robometa.meta import MetaLearner

        return MetaLearner(cfg)
    from robometa.dqn import DQN

    return DQN(cfg)


def final_env_steps(env_steps: int, total: int, per_iteration: int) -> int:
    """Where a run now at ``env_steps`` ends: training iterates whole iterations of
    ``per_iteration`` env steps until ``total`` is reached, so it may pass ``total``."""
    if env_steps >= total:
        return env_steps
    return env_steps + math.ceil((total - env_steps) / per_iteration) * per_iteration


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` to a temp file, fsync, then rename: a kill mid-write keeps the old file."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped :func:`train`; the checkpoint it wrote first resumes at ``env_steps``."""

    def __init__(self, run_dir: Path, env_steps: int) -> None:
        super().__init__(f"interrupted at {env_steps} env steps; checkpoint in {run_dir}")
        self.run_dir = run_dir
        self.env_steps = env_steps


class _StopRequest:
    """While training, Ctrl-C (SIGINT) asks the loop to stop at its next safe point.

    A KeyboardInterrupt raised mid-iteration would leave a half-updated state (envs stepped
    but not counted, an optimizer step half done), so the first Ctrl-C only sets
    ``requested``; the loop checkpoints after the iteration and stops. A second Ctrl-C
    interrupts at once (the last checkpoint stays). Installed only in the main thread, and
    not where SIGINT is ignored (a background job keeps ignoring it).
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None
        self._installed = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> _StopRequest:
        if (
            threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN
        ):
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            previous = self._previous
            signal.signal(
                signal.SIGINT, previous if previous is not None else signal.default_int_handler
            )


class MetricsLog:
    """Accumulates episode returns and losses; writes CSV rows (and TensorBoard if present)."""

    def __init__(self, run_dir: Path, resume_step: int | None, tensorboard: bool) -> None:
        self.path = run_dir / "metrics.csv"
        self.episodes = 0
        self.recent: deque[float] = deque(maxlen=20)
        self.last_return = math.nan
        self.losses: list[float] = []
        self.last_step: int | None = None  # env step of the last row written
        if resume_step is not None and self.path.exists():
            rows = [r for r in self.read(self.path) if int(r["env_steps"]) <= resume_step]
            self._write_all(rows)
            if rows:
                self.episodes = int(rows[-1]["episodes"])
                self.last_step = int(rows[-1]["env_steps"])
        else:
            self._write_all([])
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional: CSV is always written
                SummaryWriter = None
            if SummaryWriter is not None:
                self.writer = SummaryWriter(str(run_dir / "tb"))

    @staticmethod
    def read(path: Path) -> list[dict[str, str]]:
        with open(path, newline="") as f:
            return list(csv.DictReader(f))

    def _write_all(self, rows: list[dict[str, str]]) -> None:
        with open(self.path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=METRIC_FIELDS)
            w.writeheader()
            w.writerows(rows)

    def update(self, metrics: dict[str, Any]) -> None:
        for r in metrics.get("returns", []):
            self.episodes += 1
            self.recent.append(r)
            self.last_return = r
        self.losses.extend(metrics.get("loss", []))

    def row(self, env_steps: int, epsilon: float, sps: float, wall: float) -> dict[str, Any]:
        loss = float(np.mean(self.losses)) if self.losses else math.nan
        self.losses = []
        row = {
            "env_steps": env_steps,
            "episodes": self.episodes,
            "return_mean": float(np.mean(self.recent)) if self.recent else math.nan,
            "return_last": self.last_return,
            "loss": loss,
            "epsilon": epsilon,
            "steps_per_s": sps,
            "wall_s": wall,
        }
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=METRIC_FIELDS).writerow(row)
        if self.writer is not None:
            for k in ("return_mean", "loss", "epsilon", "steps_per_s"):
                self.writer.add_scalar(k, row[k], env_steps)
        self.last_step = env_steps
        return row

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _read_selection(path: Path) -> list[dict[str, str]]:
    return MetricsLog.read(path) if path.exists() else []


def plot_learning_curve(run_dir: Path) -> Path:
    """Write ``learning_curve.png`` (see :func:`learning_curve_figure`)."""
    fig = learning_curve_figure(run_dir)  # selects the Agg backend before pyplot loads
    import matplotlib.pyplot as plt

    out = run_dir / "learning_curve.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def learning_curve_figure(run_dir: Path) -> Any:
    """The learning curve of a run: the mean episode return and, with model selection, the
    greedy return on training tasks (what selection ranks, after adaptation for the adapting
    algorithms) on the same axes; the training loss beside them. A single row is drawn as a
    point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = MetricsLog.read(run_dir / "metrics.csv")
    selection = _read_selection(run_dir / "selection.csv")
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    steps = [int(r["env_steps"]) for r in rows]
    marker = "o" if len(rows) == 1 else None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
    ax1.plot(
        steps,
        [float(r["return_mean"]) for r in rows],
        marker=marker,
        label="episode return (mean of last 20, exploring)",
    )
    if selection:
        adapts = cfg["algorithm"] in META_ALGORITHMS
        ax1.plot(
            [int(r["env_steps"]) for r in selection],
            [float(r["train_task_return"]) for r in selection],
            marker="o",
            markersize=3,
            color="tab:green",
            label="greedy return on training tasks" + (" after adaptation" if adapts else ""),
        )
    ax1.set(
        xlabel="environment steps",
        ylabel="return",
        title=f"{cfg['algorithm']} on {cfg['env']['id']}",
    )
    ax1.legend(fontsize=8)
    losses = [float(r["loss"]) for r in rows]
    ax2.plot(steps, losses, marker=marker, color="tab:red")
    ax2.set(xlabel="environment steps", ylabel="training loss")
    if any(x > 0 for x in losses):  # NaN before the first gradient step: nothing to log-scale
        ax2.set_yscale("log")
    else:
        ax2.text(0.5, 0.5, "no gradient steps yet", ha="center", transform=ax2.transAxes)
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


SELECTION_SEED = 5_000  # training-split tasks for model selection (eval uses other seeds)


def selection_return(policy: Policy, cfg: Config) -> float:
    """Mean greedy return on fixed *training* tasks, after adaptation for the meta-learners.

    The same protocol as evaluation (support set, adapt, greedy episode) on tasks drawn from
    the train split, so choosing the best policy never looks at held-out robots.
    """
    from robometa.evaluate import PolicyMethod, TaskSet, evaluate_method
    from robometa.rollout import make_env

    env = make_env(cfg.env.id, cfg.env.dynamics)
    space = env.unwrapped.dynamics_space
    env.close()
    n = cfg.logging.eval_tasks
    if cfg.env.tasks == "nominal":
        tasks = [space.nominal()] * n
    else:
        tasks = space.sample(n, seed=SELECTION_SEED, split="train")
    adapts = cfg.algorithm in META_ALGORITHMS
    method = PolicyMethod(
        "selection", policy, cfg.adaptation.support_epsilon, lrs=None if adapts else {}
    )
    res = evaluate_method(
        method,
        [TaskSet("selection", tasks)],
        [policy.adapt_steps if adapts else 0],
        1,
        cfg.env.dynamics,
    )
    return float(np.mean([r[0] for r in res["selection"]]))


def _truncate_selection(path: Path, env_steps: int) -> None:
    """Drop selection rows a killed run wrote after its last checkpoint."""
    if path.exists():
        lines = path.read_text().splitlines(keepends=True)
        keep = lines[:1] + [ln for ln in lines[1:] if int(ln.split(",")[0]) <= env_steps]
        path.write_text("".join(keep))


def _rng_state(alg: Algorithm) -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": alg.rng.bit_generator.state}


def checkpoint_steps(run_dir: str | Path) -> int | None:
    """Env steps of the checkpoint in ``run_dir`` (``None`` without a readable one)."""
    try:
        state = torch.load(Path(run_dir) / "checkpoint.pt", weights_only=True, map_location="cpu")
        return int(state["algorithm"]["env_steps"])
    except Exception:  # absent, half-written by an older version, or not a checkpoint
        return None


class _Run:
    """One process's share of a run: the algorithm with its metrics log and progress bar, and
    what the loop does besides iterating (metric rows, model selection, checkpoints)."""

    def __init__(
        self,
        cfg: Config,
        run_dir: Path,
        alg: Algorithm,
        log: MetricsLog,
        state: dict[str, Any] | None,
    ) -> None:
        self.cfg, self.run_dir, self.alg, self.log = cfg, run_dir, alg, log
        self.best = float(state.get("best_selection", -math.inf)) if state else -math.inf
        self.checkpointed_at: int | None = int(state["algorithm"]["env_steps"]) if state else None
        self.epsilon = math.nan
        self.t0 = self.last_t = time.perf_counter()
        self.last_steps = alg.env_steps
        self.bar: Any = None
        self.postfix: dict[str, Any] = {}
        selected = _read_selection(run_dir / "selection.csv")
        if selected:  # a resumed run shows its last selection return until the next one
            self.postfix["sel"] = f"{float(selected[-1]['train_task_return']):.1f}"

    def open_bar(self, end: int) -> None:
        from tqdm import tqdm

        self.bar = tqdm(
            total=end,
            initial=self.alg.env_steps,
            unit="step",
            mininterval=1.0,
            desc=f"{self.cfg.algorithm} {self.cfg.env.id.split('/')[-1]}",
            dynamic_ncols=True,
        )

    def _show(self) -> None:
        if self.bar is not None:
            order = ("ep", "ret", "sel", "loss", "sps", "skipped")
            self.bar.set_postfix(
                {k: self.postfix[k] for k in order if k in self.postfix}, refresh=False
            )

    def write_row(self, skipped: int = 0) -> None:
        now = time.perf_counter()
        steps = self.alg.env_steps
        sps = (steps - self.last_steps) / max(now - self.last_t, 1e-9)
        row = self.log.row(steps, self.epsilon, sps, now - self.t0)
        self.last_t, self.last_steps = now, steps
        self.postfix.update(
            ep=row["episodes"],
            ret=f"{row['return_mean']:.1f}",
            loss=f"{row['loss']:.3g}",
            sps=f"{sps:.0f}",
        )
        if skipped:
            self.postfix["skipped"] = skipped
        self._show()

    def select(self) -> None:
        """Evaluate on training tasks; ``policy.pt`` keeps the best policy so far."""
        policy = self.alg.policy()
        score = selection_return(policy, self.cfg)
        path = self.run_dir / "selection.csv"
        new_file = not path.exists()
        with open(path, "a") as f:
            if new_file:
                f.write("env_steps,train_task_return,best\n")
            f.write(f"{self.alg.env_steps},{score},{max(self.best, score)}\n")
        if score > self.best:
            self.best = score
            policy.save(self.run_dir)
        self.postfix["sel"] = f"{score:.1f}"
        self._show()

    def checkpoint(self, restart_envs: bool = True, finished: bool = False) -> None:
        """Write ``checkpoint.pt``, then restart every env (a resume replays that restart).

        ``restart_envs=False`` only for the checkpoint at env step 0: the envs were just
        started, and a resume rebuilds them identically from the seed.
        """
        alg, log = self.alg, self.log
        snapshot = {
            "format": CHECKPOINT_FORMAT,
            "robometa_version": __version__,
            "torch_version": str(torch.__version__),
            "config": yaml.safe_dump(self.cfg.to_dict(), sort_keys=False),
            "algorithm": alg.state_dict(),
            "rng": _rng_state(alg),
            "episodes": log.episodes,
            "recent_returns": list(log.recent),
            # Losses not yet averaged into a row (checkpoint_every need not be a multiple of
            # log_every): the resumed run's next row averages the same losses.
            "last_return": log.last_return,
            "pending_losses": list(log.losses),
            "best_selection": self.best,
            "envs_restarted": restart_envs,
            # Set only on the last checkpoint, after policy.pt holds the final policy.
            "finished": finished,
        }
        if restart_envs:
            alg.boundary()
        save_atomic(snapshot, self.run_dir / "checkpoint.pt")
        self.checkpointed_at = alg.env_steps

    def interrupt(self) -> None:
        """Ctrl-C: checkpoint here (unless one was just written) and stop."""
        if self.checkpointed_at != self.alg.env_steps:
            self.checkpoint()
        raise TrainingInterrupted(self.run_dir, self.alg.env_steps)


def train(
    cfg: Config, run_dir: str | Path, resume: bool = False, stop_after: int | None = None
) -> Policy:
    """Train ``cfg`` into ``run_dir`` (or continue the run there with ``resume=True``).

    The run ends at the first whole iteration at or past ``dqn.total_steps`` (a DQN iteration
    steps every env once; a meta-learner's collects a whole round of tasks), and the progress
    bar, the last ``metrics.csv`` row and the final checkpoint all show that step.

    Ctrl-C (SIGINT) stops after the current iteration: a checkpoint is written there and
    :class:`TrainingInterrupted` (a ``KeyboardInterrupt``) is raised. That checkpoint is an
    episode boundary like every other (all envs restart), so a run resumed after Ctrl-C
    continues from that boundary: it equals a run that restarted its envs at that step, not
    the uninterrupted run, whose episodes went on. A second Ctrl-C stops at once; the last
    checkpoint (at env step 0 at the latest) stays resumable.

    ``stop_after`` ends the process's work early at that env step (tests use it); the run can
    then be resumed.
    """
    with _StopRequest() as stop:
        return _train(cfg, Path(run_dir), resume, stop_after, stop)


def _train(
    cfg: Config, run_dir: Path, resume: bool, stop_after: int | None, stop: _StopRequest
) -> Policy:
    ckpt_path = run_dir / "checkpoint.pt"
    state = None
    if resume:
        if not ckpt_path.exists():
            raise FileNotFoundError(f"cannot resume: no checkpoint at {ckpt_path}")
        state = torch.load(ckpt_path, weights_only=True, map_location="cpu")
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(
                f"{ckpt_path}: checkpoint format {state.get('format')!r} is not "
                f"supported (expected {CHECKPOINT_FORMAT})"
            )
        cfg = config_from_dict(yaml.safe_load(state["config"]), source=str(ckpt_path))
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        # Also a run killed before its first checkpoint (config.yaml, metrics.csv only).
        existing = [n for n in RUN_FILES if (run_dir / n).exists()]
        if existing:
            raise FileExistsError(
                f"{run_dir} already holds a run ({', '.join(existing)}); use --resume to "
                "continue it (needs checkpoint.pt), or choose another --out"
            )

    torch.set_num_threads(1)
    alg = make_algorithm(cfg)
    if state is None:
        # Only now: an env id or dynamics override that fails to build leaves no run behind.
        cfg.dump(run_dir / "config.yaml")
    log = MetricsLog(
        run_dir, state["algorithm"]["env_steps"] if state else None, cfg.logging.tensorboard
    )
    if state is not None:
        _truncate_selection(run_dir / "selection.csv", int(state["algorithm"]["env_steps"]))
        alg.load_state_dict(state["algorithm"])
        torch.set_rng_state(state["rng"]["torch"])
        alg.rng.bit_generator.state = state["rng"]["numpy"]
        if state.get("envs_restarted", True):
            alg.boundary()
        log.episodes = int(state["episodes"])
        log.recent.extend(float(x) for x in state["recent_returns"])
        # Older checkpoints lack these two; they only affect the first row after resuming.
        log.last_return = float(state.get("last_return", math.nan))
        log.losses = [float(x) for x in state.get("pending_losses", [])]
    run = _Run(cfg, run_dir, alg, log, state)

    total = cfg.dqn.total_steps
    end = final_env_steps(alg.env_steps, total, alg.steps_per_iteration)
    if end > total and alg.env_steps < total:
        print(
            f"{cfg.algorithm} takes {alg.steps_per_iteration} env steps per iteration: this run "
            f"ends at {end} env steps (dqn.total_steps = {total})",
            file=sys.stderr,
            flush=True,
        )
    every = cfg.logging.eval_every
    next_log = (alg.env_steps // cfg.logging.log_every + 1) * cfg.logging.log_every
    next_ckpt = (alg.env_steps // cfg.logging.checkpoint_every + 1) * cfg.logging.checkpoint_every
    next_eval = (alg.env_steps // every + 1) * every if every else math.inf
    try:
        if state is None:
            run.checkpoint(restart_envs=False)  # resumable from the first second
        if cfg.logging.progress:
            run.open_bar(end)
        while True:
            if stop.requested:
                run.interrupt()
            if alg.env_steps >= total:
                break
            before = alg.env_steps
            metrics = alg.iterate()
            log.update(metrics)
            run.epsilon = metrics.get("epsilon", run.epsilon)
            if run.bar is not None:
                run.bar.update(alg.env_steps - before)
            if alg.env_steps >= next_log:
                run.write_row(metrics.get("skipped_updates", 0))
                next_log += cfg.logging.log_every
            if alg.env_steps >= next_eval and alg.env_steps < total:
                run.select()
                next_eval += every
            if alg.env_steps >= next_ckpt and alg.env_steps < total:
                run.checkpoint()
                next_ckpt += cfg.logging.checkpoint_every
            if stop_after is not None and alg.env_steps >= stop_after:
                return alg.policy()
        if log.last_step != alg.env_steps:
            run.write_row()  # the stretch since the last periodic row
        if every:
            run.select()  # the final policy competes too; policy.pt holds the best
            policy = Policy.load(run_dir)
        else:
            policy = alg.policy()
            policy.save(run_dir)
        run.checkpoint(finished=True)
    finally:
        if run.bar is not None:
            run.bar.close()
        log.close()
        alg.close()
    plot_learning_curve(run_dir)
    return policy


def run_logged(
    log: str | Path, fn: Callable[..., Any], *args: Any, append: bool = False, **kwargs: Any
) -> Any:
    """``fn(*args, **kwargs)`` with all output (progress bars, PyBullet's C-level prints
    included) sent to the file ``log``; this process's stdout and stderr come back afterwards.

    For worker processes that run several trainings or evaluations side by side. An
    exception's traceback goes to the log too before it propagates; ``append`` keeps what the
    log already holds.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    try:
        with (
            open(log, "a" if append else "w", buffering=1) as f,
            contextlib.redirect_stdout(f),
            contextlib.redirect_stderr(f),
        ):
            # Both levels: Python's sys.stdout/sys.stderr, and the file descriptors that
            # native code (PyBullet) writes to.
            os.dup2(f.fileno(), 1)
            os.dup2(f.fileno(), 2)
            try:
                return fn(*args, **kwargs)
            except BaseException:
                traceback.print_exc()  # the log shows why it stopped
                raise
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


def train_to_log(
    config: str | Path,
    run_dir: str | Path,
    log: str | Path,
    steps: int | None = None,
    seed: int | None = None,
    resume: bool = False,
) -> float:
    """Train ``config`` into ``run_dir`` (``resume``: continue its checkpoint) with all output,
    errors included, in ``log``; returns the wall-clock seconds."""

    def job() -> None:
        if resume:
            train(None, run_dir, resume=True)  # type: ignore[arg-type]
        else:
            train(load_config(config, steps=steps, seed=seed), run_dir)

    t = time.perf_counter()
    run_logged(log, job, append=resume)
    return time.perf_counter() - t


def run_status(run_dir: str | Path, cfg: Config) -> str:
    """``"finished"``, ``"resumable"`` (a checkpoint of ``cfg`` short of its budget),
    ``"stale"`` (a run of another config, or unreadable) or ``"absent"``.

    A run is finished once its final checkpoint is written, which happens after ``policy.pt``
    holds the final (selected) policy; ``policy.pt`` alone is not enough, as model selection
    writes it during training.
    """
    run_dir = Path(run_dir)
    if not run_dir.exists():
        return "absent"
    ckpt = run_dir / "checkpoint.pt"
    if not ckpt.exists():
        return "stale"
    try:
        state = torch.load(ckpt, weights_only=True, map_location="cpu")
        saved = yaml.safe_load(state["config"])
        env_steps = int(state["algorithm"]["env_steps"])
    except Exception:
        return "stale"
    if saved != yaml.safe_load(yaml.safe_dump(cfg.to_dict())):
        return "stale"
    # Older checkpoints lack the flag: their only one at the budget was the final one.
    finished = state.get("finished", env_steps >= cfg.dqn.total_steps)
    if finished and (run_dir / "policy.pt").exists():
        return "finished"
    return "resumable"
