"""The training harness shared by every algorithm: progress, metrics, checkpoints, resume.

A run directory holds ``config.yaml`` (the validated config), ``metrics.csv``, ``checkpoint.pt``
(everything needed to continue: algorithm state, replay, optimizer, RNG states), and at the end
``policy.pt`` (what eval and export read) and ``learning_curve.png``.

Checkpoints are episode boundaries: every env restarts right after one, in interrupted and
uninterrupted runs alike, so a run resumed from a checkpoint continues exactly as if it had
never stopped (same seed, CPU).
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable
from pathlib import Path
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


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` to a temp file, fsync, then rename: a kill mid-write keeps the old file."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


class MetricsLog:
    """Accumulates episode returns and losses; writes CSV rows (and TensorBoard if present)."""

    def __init__(self, run_dir: Path, resume_step: int | None, tensorboard: bool) -> None:
        self.path = run_dir / "metrics.csv"
        self.episodes = 0
        self.recent: deque[float] = deque(maxlen=20)
        self.last_return = math.nan
        self.losses: list[float] = []
        if resume_step is not None and self.path.exists():
            rows = [r for r in self.read(self.path) if int(r["env_steps"]) <= resume_step]
            self._write_all(rows)
            if rows:
                self.episodes = int(rows[-1]["episodes"])
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
        return row

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def plot_learning_curve(run_dir: Path) -> Path:
    """``learning_curve.png``: mean episode return (and loss) against environment steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = MetricsLog.read(run_dir / "metrics.csv")
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    steps = [int(r["env_steps"]) for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
    ax1.plot(steps, [float(r["return_mean"]) for r in rows])
    ax1.set(
        xlabel="environment steps",
        ylabel="episode return (mean of last 20)",
        title=f"{cfg['algorithm']} on {cfg['env']['id']}",
    )
    ax2.plot(steps, [float(r["loss"]) for r in rows], color="tab:red")
    ax2.set(xlabel="environment steps", ylabel="training loss", yscale="log")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out = run_dir / "learning_curve.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


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


def train(
    cfg: Config, run_dir: str | Path, resume: bool = False, stop_after: int | None = None
) -> Policy:
    """Train ``cfg`` into ``run_dir`` (or continue the run there with ``resume=True``).

    ``stop_after`` ends the process's work early at that env step (tests use it); the run can
    then be resumed.
    """
    run_dir = Path(run_dir)
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
        alg.boundary()
        log.episodes = int(state["episodes"])
        log.recent.extend(float(x) for x in state["recent_returns"])
        # Older checkpoints lack these two; they only affect the first row after resuming.
        log.last_return = float(state.get("last_return", math.nan))
        log.losses = [float(x) for x in state.get("pending_losses", [])]

    total = cfg.dqn.total_steps
    next_log = (alg.env_steps // cfg.logging.log_every + 1) * cfg.logging.log_every
    next_ckpt = (alg.env_steps // cfg.logging.checkpoint_every + 1) * cfg.logging.checkpoint_every
    bar = None
    if cfg.logging.progress:
        from tqdm import tqdm

        bar = tqdm(
            total=total,
            initial=alg.env_steps,
            unit="step",
            mininterval=1.0,
            desc=f"{cfg.algorithm} {cfg.env.id.split('/')[-1]}",
            dynamic_ncols=True,
        )
    t0 = time.perf_counter()
    last_t, last_steps, epsilon = t0, alg.env_steps, math.nan
    every = cfg.logging.eval_every
    next_eval = (alg.env_steps // every + 1) * every if every else math.inf
    best = float(state.get("best_selection", -math.inf)) if state else -math.inf

    def select() -> None:
        """Evaluate on training tasks; ``policy.pt`` keeps the best policy so far."""
        nonlocal best
        policy = alg.policy()
        score = selection_return(policy, cfg)
        path = run_dir / "selection.csv"
        new_file = not path.exists()
        with open(path, "a") as f:
            if new_file:
                f.write("env_steps,train_task_return,best\n")
            f.write(f"{alg.env_steps},{score},{max(best, score)}\n")
        if score > best:
            best = score
            policy.save(run_dir)

    def checkpoint() -> None:
        # The state (RNG included) is taken just before the boundary, which a resume replays.
        snapshot = {
            "format": CHECKPOINT_FORMAT,
            "robometa_version": __version__,
            "torch_version": str(torch.__version__),
            "config": yaml.safe_dump(cfg.to_dict(), sort_keys=False),
            "algorithm": alg.state_dict(),
            "rng": _rng_state(alg),
            "episodes": log.episodes,
            "recent_returns": list(log.recent),
            # Losses not yet averaged into a row (checkpoint_every need not be a multiple of
            # log_every): the resumed run's next row averages the same losses.
            "last_return": log.last_return,
            "pending_losses": list(log.losses),
            "best_selection": best,
        }
        alg.boundary()
        save_atomic(snapshot, ckpt_path)

    try:
        while alg.env_steps < total:
            before = alg.env_steps
            metrics = alg.iterate()
            log.update(metrics)
            epsilon = metrics.get("epsilon", epsilon)
            if bar is not None:
                bar.update(alg.env_steps - before)
            if alg.env_steps >= next_log:
                now = time.perf_counter()
                sps = (alg.env_steps - last_steps) / max(now - last_t, 1e-9)
                row = log.row(alg.env_steps, epsilon, sps, now - t0)
                last_t, last_steps = now, alg.env_steps
                next_log += cfg.logging.log_every
                if bar is not None:
                    bar.set_postfix(
                        ep=row["episodes"],
                        ret=f"{row['return_mean']:.1f}",
                        loss=f"{row['loss']:.3g}",
                        sps=f"{sps:.0f}",
                        **(
                            {"skipped": metrics["skipped_updates"]}
                            if metrics.get("skipped_updates")
                            else {}
                        ),
                        refresh=False,
                    )
            if alg.env_steps >= next_eval and alg.env_steps < total:
                select()
                next_eval += every
            if alg.env_steps >= next_ckpt and alg.env_steps < total:
                checkpoint()
                next_ckpt += cfg.logging.checkpoint_every
            if stop_after is not None and alg.env_steps >= stop_after:
                return alg.policy()
        if every:
            select()  # the final policy competes too; policy.pt holds the best
            policy = Policy.load(run_dir)
        else:
            policy = alg.policy()
            policy.save(run_dir)
        checkpoint()
    finally:
        if bar is not None:
            bar.close()
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
    if env_steps >= cfg.dqn.total_steps and (run_dir / "policy.pt").exists():
        return "finished"
    return "resumable"
