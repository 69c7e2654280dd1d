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

Writing fails safely. Whole files (the checkpoint, ``policy.pt``, ``config.yaml``, the plot, a
rewritten ``metrics.csv``) are written to a temporary file next to the target
(``.<name>.robometa-tmp-<pid>-<random>.tmp``), fsynced and renamed over it, so a full disk, a
read-only medium or a kill leaves the previous file as it was; rows appended to the CSV files
are taken back when they cannot be written whole. A failure is a :class:`RunWriteError`, one
line naming the path, which also says what is kept: a run that failed before its first
checkpoint takes back the files it wrote (the same command works once there is room), a later
one keeps its last checkpoint for ``--resume``. Temporary files a killed process left are
removed when the run next starts or resumes. ``--resume`` reads only a checkpoint this
robometa can continue (:func:`read_checkpoint`); anything else is a :class:`CheckpointError`
naming the file.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import os
import shlex
import signal
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch

import robometa.algorithms
from robometa import __version__
from robometa.config import Config, config_from_dict, load_config
from robometa.distributed import Backend, BackendError
from robometa.envs.safe_load import parse_yaml, read_text
from robometa.methods.base import Method
from robometa.policy import (  # the one atomic writer; importable from here as before
    POLICY_FILE,
    Policy,
    RunWriteError,
    os_reason,
    save_atomic,
    write_atomic,
)

CHECKPOINT_FORMAT = 1
#: files whose presence marks a directory as holding a run (training into it refuses)
RUN_FILES = ("checkpoint.pt", "policy.pt", "config.yaml", "metrics.csv")
#: every file a run directory gets: only their temporary files are ever cleaned up
WRITTEN_FILES = (*RUN_FILES, "selection.csv", "learning_curve.png")
#: what an uninterrupted checkpoint holds (and its type); read_checkpoint checks each
CHECKPOINT_KEYS: dict[str, type] = {
    "config": str,
    "algorithm": dict,
    "rng": dict,
    "episodes": int,
    "recent_returns": list,
}
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


def make_algorithm(cfg: Config, backend: Backend | None = None) -> Method:
    """The trainer of ``cfg.algorithm``, as the registry (:mod:`robometa.algorithms`) names it,
    its tasks' work run by ``backend`` (None: in this process). A trainer must take at least
    one env step per iteration, or a run would never end."""
    cls = robometa.algorithms.load(cfg.algorithm)
    if backend is None or backend.name == "local":
        alg = cls(cfg)
    elif backend.name in cls.backends:
        alg = cls(cfg, backend=backend)
    else:
        able = [n for n in robometa.algorithms.names() if backend.name in _backends(n)]
        raise ValueError(
            f"algorithm {cfg.algorithm!r} trains on the {', '.join(cls.backends)} backend only; "
            f"--backend {backend.name} runs the tasks of {', '.join(able)}"
        )
    try:
        per_iteration = alg.steps_per_iteration
    except BaseException:
        alg.close()
        raise
    if not isinstance(per_iteration, int) or isinstance(per_iteration, bool) or per_iteration < 1:
        alg.close()
        raise ValueError(
            f"algorithm {cfg.algorithm!r}: its trainer {type(alg).__name__} takes "
            f"{per_iteration!r} env steps per iteration; it must take an integer >= 1 (check "
            "the config keys that size its iterations)"
        )
    return alg


def _backends(algorithm: str) -> tuple[str, ...]:
    try:
        return robometa.algorithms.load(algorithm).backends
    except Exception:  # a plug-in that cannot be imported is listed by its own error
        return ()


def _adapts(algorithm: str) -> bool:
    """Whether ``algorithm`` was trained to adapt (the learning curve's label; a run of an
    algorithm not registered in this process is drawn as one that does not)."""
    return algorithm in robometa.algorithms.adapting()


def final_env_steps(env_steps: int, total: int, per_iteration: int) -> int:
    """Where a run now at ``env_steps`` ends: training iterates whole iterations of
    ``per_iteration`` env steps until ``total`` is reached, so it may pass ``total``."""
    if env_steps >= total:
        return env_steps
    return env_steps + math.ceil((total - env_steps) / per_iteration) * per_iteration


class CheckpointError(ValueError):
    """``checkpoint.pt`` is not a checkpoint this robometa can continue (empty, truncated,
    another kind of file, a newer format); the message names the file."""


def append_text(path: Path, text: str) -> None:
    """Append ``text`` (whole CSV rows) to ``path``, or, when it cannot be written whole, take
    back what was written and raise :class:`RunWriteError`: the file keeps ending in a whole
    row."""
    data = text.encode("utf-8")
    try:
        with open(path, "ab", buffering=0) as f:
            start = f.seek(0, os.SEEK_END)
            try:
                view = memoryview(data)
                while view:
                    view = view[f.write(view) :]
            except OSError:
                f.truncate(start)
                raise
    except OSError as err:
        raise RunWriteError(f"cannot write {path}: {os_reason(err)}", path) from None


def remove_stale_temp_files(run_dir: Path) -> list[Path]:
    """Remove the temporary files of the run's files (:data:`WRITTEN_FILES`) that a killed
    process left in ``run_dir`` (as :func:`robometa.deploy.runtime.remove_stale_temp_files`
    judges them), and ``checkpoint.pt.tmp``/``policy.pt.tmp`` as robometa 0.1 named them.
    Files robometa did not name are never touched. Returns the removed paths."""
    from robometa.deploy.runtime import remove_stale_temp_files as remove_stale

    removed = [p for name in WRITTEN_FILES for p in remove_stale(run_dir / name)]
    for name in ("checkpoint.pt.tmp", "policy.pt.tmp"):
        legacy = run_dir / name
        if legacy.is_file() and not legacy.is_symlink():
            with contextlib.suppress(FileNotFoundError):  # another process removed it
                legacy.unlink()
                removed.append(legacy)
    return removed


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
            rows = [r for r in self.read(self.path) if _row_steps(r, resume_step) is not None]
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
                try:
                    self.writer = SummaryWriter(str(run_dir / "tb"))
                except OSError as err:
                    raise RunWriteError(
                        f"cannot write {run_dir / 'tb'}: {os_reason(err)}", run_dir / "tb"
                    ) from None

    @staticmethod
    def read(path: Path) -> list[dict[str, str]]:
        with open(path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))

    def _write_all(self, rows: list[dict[str, str]]) -> None:
        write_atomic(self.path, lambda f: f.write(_csv_text(rows, header=True).encode("utf-8")))

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
        append_text(self.path, _csv_text([row], header=False))
        if self.writer is not None:
            for k in ("return_mean", "loss", "epsilon", "steps_per_s"):
                self.writer.add_scalar(k, row[k], env_steps)
        self.last_step = env_steps
        return row

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _csv_text(rows: list[dict[str, Any]], header: bool) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRIC_FIELDS, lineterminator="\n")
    if header:
        writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _row_steps(row: dict[str, Any], up_to: int) -> int | None:
    """The env step of a whole metrics row at or before ``up_to``; ``None`` for a later row or
    one a killed process left half-written (missing fields)."""
    if None in row or any(row.get(k) in (None, "") for k in METRIC_FIELDS):
        return None
    try:
        steps = int(row["env_steps"])
    except ValueError:
        return None
    return steps if steps <= up_to else None


def _read_selection(path: Path) -> list[dict[str, str]]:
    return MetricsLog.read(path) if path.exists() else []


def plot_learning_curve(run_dir: Path) -> Path:
    """Write ``learning_curve.png`` (see :func:`learning_curve_figure`)."""
    fig = learning_curve_figure(run_dir)  # selects the Agg backend before pyplot loads
    import matplotlib.pyplot as plt

    out = run_dir / "learning_curve.png"
    try:
        write_atomic(out, lambda f: fig.savefig(f, format="png", dpi=100))
    finally:
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
    path = run_dir / "config.yaml"
    cfg = parse_yaml(read_text(path, "config file"), f"config file {path}")
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
        adapted = _adapts(cfg["algorithm"])
        ax1.plot(
            [int(r["env_steps"]) for r in selection],
            [float(r["train_task_return"]) for r in selection],
            marker="o",
            markersize=3,
            color="tab:green",
            label="greedy return on training tasks" + (" after adaptation" if adapted else ""),
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
    from robometa.evaluate import TaskSet, evaluate_method
    from robometa.rollout import make_env, train_tasks

    env = make_env(cfg.env.id, cfg.env.dynamics)
    space = env.unwrapped.dynamics_space
    env.close()
    tasks = train_tasks(space, cfg.env.tasks, cfg.logging.eval_tasks, SELECTION_SEED)
    spec = robometa.algorithms.get(cfg.algorithm)
    adapted = spec.adapts
    method = spec.load().evaluation_method(
        policy, "selection", cfg.adaptation.support_epsilon, lrs=None if adapted else {}
    )
    res = evaluate_method(
        method,
        [TaskSet("selection", tasks)],
        [policy.adapt_steps if adapted else 0],
        1,
        cfg.env.dynamics,
    )
    return float(np.mean([r[0] for r in res["selection"]]))


SELECTION_HEADER = "env_steps,train_task_return,best\n"


def _truncate_selection(path: Path, env_steps: int) -> None:
    """Drop selection rows a killed run wrote after its last checkpoint (or half-wrote)."""
    if not path.exists():
        return
    keep = [SELECTION_HEADER]
    for line in path.read_text(encoding="utf-8").splitlines(keepends=True)[1:]:
        fields = line.rstrip("\n").split(",")
        if line.endswith("\n") and len(fields) == 3 and fields[0].isdigit():
            if int(fields[0]) <= env_steps:
                keep.append(line)
    write_atomic(path, lambda f: f.write("".join(keep).encode("utf-8")))


def _rng_state(alg: Method) -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": alg.rng.bit_generator.state}


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint at ``path``, checked to be one this robometa wrote and can continue.

    Loaded with ``weights_only=True`` (tensors and plain data: nothing in it is imported or
    run). An empty, truncated or foreign file, a checkpoint of another format or one missing
    a part (:data:`CHECKPOINT_KEYS`) is a :class:`CheckpointError` naming the file; no file is
    a ``FileNotFoundError``.
    """
    what = f"cannot resume from {path}"
    if not path.exists():
        raise FileNotFoundError(f"cannot resume: no checkpoint at {path}")
    if not path.is_file():
        raise CheckpointError(f"{what}: it is not a file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{what}: the file is empty (a write that never finished?)")
    try:
        f = open(path, "rb")
    except OSError as err:
        raise CheckpointError(f"{what}: {os_reason(err)}") from None
    with f:
        try:
            state = torch.load(f, weights_only=True, map_location="cpu")
        except Exception as err:  # zip, pickle, weights-only refusals (a truncated zip's seek
            # is an OSError too): not a whole checkpoint
            first = (str(err).strip().splitlines() or [""])[0]
            raise CheckpointError(
                f"{what}: not a complete robometa checkpoint (truncated, or another kind of "
                f"file): {type(err).__name__}: {first:.200}"
            ) from None
    if not isinstance(state, dict):
        raise CheckpointError(
            f"{what}: it holds a {type(state).__name__}, not a robometa checkpoint"
        )
    _check_format(state, what)
    for key, kind in CHECKPOINT_KEYS.items():
        if not isinstance(state.get(key), kind):
            raise CheckpointError(
                f"{what}: its '{key}' is missing or not a {kind.__name__}: not a complete "
                "robometa checkpoint"
            )
    steps = state["algorithm"].get("env_steps")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
        raise CheckpointError(f"{what}: its algorithm state has no env step count")
    return state


def _check_format(state: dict[str, Any], what: str) -> None:
    fmt = state.get("format")
    if "format" not in state:
        raise CheckpointError(
            f"{what}: no 'format' key: not a robometa checkpoint (robometa train writes "
            "checkpoint.pt into its run directory)"
        )
    if isinstance(fmt, int) and not isinstance(fmt, bool) and fmt > CHECKPOINT_FORMAT:
        version = state.get("robometa_version", "?")
        raise CheckpointError(
            f"{what}: checkpoint format {fmt} was written by a newer robometa ({version!s:.20}); "
            f"robometa {__version__} reads format {CHECKPOINT_FORMAT}: upgrade to resume it"
        )
    if fmt != CHECKPOINT_FORMAT or isinstance(fmt, bool):
        raise CheckpointError(
            f"{what}: checkpoint format {fmt!r:.40} is not supported (robometa {__version__} "
            f"reads format {CHECKPOINT_FORMAT})"
        )


def _checkpoint_config(state: dict[str, Any], path: Path) -> Config:
    """The config a checkpoint was trained with, validated as a config file would be."""
    return config_from_dict(
        parse_yaml(state["config"], f"the config in checkpoint {path}") or {}, source=str(path)
    )


def checkpoint_steps(run_dir: str | Path) -> int | None:
    """Env steps of the checkpoint in ``run_dir`` (``None`` without a readable one)."""
    try:
        return int(read_checkpoint(Path(run_dir) / "checkpoint.pt")["algorithm"]["env_steps"])
    except (FileNotFoundError, CheckpointError):
        return None


def train(
    cfg: Config,
    run_dir: str | Path,
    resume: bool = False,
    stop_after: int | None = None,
    backend: Backend | None = None,
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
    then be resumed. ``backend``: where a meta-learner's tasks run (:mod:`robometa.distributed`;
    None: here); a run can be resumed with either.
    """
    with _StopRequest() as stop:
        run = _Run.open(cfg, Path(run_dir), resume, backend)
        try:
            run.begin()
            finished = run.iterate_until_done(stop, stop_after)
            policy = run.finish() if finished else run.alg.policy()
        except RunWriteError as err:
            raise run.write_failure(err) from None
        finally:
            run.close()
        if finished:
            _plot_finished_run(run.run_dir)
        return policy


class _Run:
    """One process's share of a run, in the order :func:`train` takes its steps.

    :meth:`open` claims the directory (or reads the checkpoint to resume) and builds the
    algorithm; :meth:`begin` puts a resumed state back (or writes a new run's ``config.yaml``)
    and opens the metrics log; :meth:`iterate_until_done` runs :meth:`step` (one iteration,
    then the metric rows, model selection and checkpoints that are due) to the end of the
    budget; :meth:`finish` writes the last row, the final policy and the final checkpoint;
    :meth:`close` releases the envs, the log and the progress bar.
    """

    def __init__(
        self,
        cfg: Config,
        run_dir: Path,
        alg: Method,
        state: dict[str, Any] | None,
        created: list[Path],
    ) -> None:
        self.cfg, self.run_dir, self.alg = cfg, run_dir, alg
        self.state = state  # the checkpoint this run resumes (None: a new run)
        self.created = created  # directories a new run made (taken back if nothing is kept)
        self.log: MetricsLog | None = None
        self.best = -math.inf  # the best selection return so far
        self.checkpointed_at: int | None = int(state["algorithm"]["env_steps"]) if state else None
        self.epsilon = math.nan
        self.t0 = self.last_t = time.perf_counter()
        self.last_steps = alg.env_steps
        self.bar: Any = None
        self.postfix: dict[str, Any] = {}
        # env steps at which the next metrics row, selection and checkpoint are due
        self.next_log = self.next_ckpt = 0
        self.next_eval: float = math.inf

    # -------------------------------------------------------------- the steps of a run

    @classmethod
    def open(cls, cfg: Config, run_dir: Path, resume: bool, backend: Backend | None = None) -> _Run:
        """Claim ``run_dir`` for a new run, or read the checkpoint (and its config) to resume;
        remove stale temporary files; build the algorithm."""
        state, created = None, []
        if resume:
            state = read_checkpoint(run_dir / "checkpoint.pt")
            cfg = _checkpoint_config(state, run_dir / "checkpoint.pt")
        else:
            created = _claim_run_dir(run_dir)
        _clean_up_temp_files(run_dir)
        torch.set_num_threads(cfg.threads)
        return cls(cfg, run_dir, _build_algorithm(cfg, created, backend), state, created)

    def begin(self) -> None:
        """Resume the checkpoint's state (a checkpoint that does not fit fails here, before any
        file of the run is touched) or write a new run's ``config.yaml``; open the metrics log."""
        state = self.state
        ckpt = self.run_dir / "checkpoint.pt"
        restored = _restore(self.alg, state, ckpt) if state is not None else None
        if state is None:
            config_text = self.cfg.to_yaml().encode("utf-8")
            write_atomic(self.run_dir / "config.yaml", lambda f: f.write(config_text))
        resume_step = int(state["algorithm"]["env_steps"]) if state is not None else None
        self.log = MetricsLog(self.run_dir, resume_step, self.cfg.logging.tensorboard)
        if restored is not None:
            self._continue_log(restored)
        self._start_clock()

    def iterate_until_done(self, stop: _StopRequest, stop_after: int | None) -> bool:
        """Iterate to the end of the budget: ``True`` there, ``False`` when ``stop_after``
        ended this process's share first. Ctrl-C checkpoints and stops (:meth:`interrupt`)."""
        end = self._announce_end()
        self._schedule()
        if self.checkpointed_at is None:
            self.checkpoint(restart_envs=False)  # resumable from the first second
        if self.cfg.logging.progress:
            self.open_bar(end)
        while True:
            if stop.requested:
                self.interrupt()
            if self.alg.env_steps >= self.cfg.dqn.total_steps:
                return True
            self.step()
            if stop_after is not None and self.alg.env_steps >= stop_after:
                return False

    def step(self) -> None:
        """One iteration, then what is due after it: a metrics row, and model selection and a
        checkpoint unless the budget is reached (:meth:`finish` does those two there)."""
        alg, log, total = self.alg, self.log, self.cfg.dqn.total_steps
        before = alg.env_steps
        metrics = alg.iterate()
        log.update(metrics)
        self.epsilon = metrics.get("epsilon", self.epsilon)
        if self.bar is not None:
            self.bar.update(alg.env_steps - before)
        if alg.env_steps >= self.next_log:
            self.write_row(metrics.get("skipped_updates", 0))
            self.next_log += self.cfg.logging.log_every
        if self.next_eval <= alg.env_steps < total:
            self.select()
            self.next_eval += self.cfg.logging.eval_every
        if self.next_ckpt <= alg.env_steps < total:
            self.checkpoint()
            self.next_ckpt += self.cfg.logging.checkpoint_every

    def finish(self) -> Policy:
        """The end of the budget: the last row, the final policy (with model selection, the
        best one competes with it; ``policy.pt`` holds the winner) and the final checkpoint."""
        if self.log.last_step != self.alg.env_steps:
            self.write_row()  # the stretch since the last periodic row
        if self.cfg.logging.eval_every:
            self.select(final=True)
            policy = Policy.load(self.run_dir)
        else:
            policy = self.alg.policy()
            save_atomic(policy.state(), self.run_dir / POLICY_FILE)
        self.checkpoint(finished=True)
        return policy

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.log is not None:
            self.log.close()
        self.alg.close()

    # -------------------------------------------------------------- beginning

    def _continue_log(self, restored: tuple[int, float, list[float], list[float]]) -> None:
        """A resumed run: the metrics as the checkpoint left them, the selection rows up to
        it, and the env restart the checkpoint recorded (older checkpoints always had one)."""
        steps = int(self.state["algorithm"]["env_steps"])
        _truncate_selection(self.run_dir / "selection.csv", steps)
        log = self.log
        log.episodes, log.last_return, log.losses = restored[:3]
        log.recent.extend(restored[3])
        if self.state.get("envs_restarted", True):
            self.alg.boundary()

    def _start_clock(self) -> None:
        """Time and steps per second count from here; a resumed run shows its best and last
        selection return until the next one."""
        if self.state is not None:
            self.best = float(self.state.get("best_selection", -math.inf))
        self.t0 = self.last_t = time.perf_counter()
        self.last_steps = self.alg.env_steps
        selected = _read_selection(self.run_dir / "selection.csv")
        if selected:
            self.postfix["sel"] = f"{float(selected[-1]['train_task_return']):.1f}"

    def _announce_end(self) -> int:
        """Where the run ends; said on stderr when whole iterations pass ``dqn.total_steps``."""
        alg, total = self.alg, self.cfg.dqn.total_steps
        end = final_env_steps(alg.env_steps, total, alg.steps_per_iteration)
        if end > total and alg.env_steps < total:
            print(
                f"{self.cfg.algorithm} takes {alg.steps_per_iteration} env steps per iteration: "
                f"this run ends at {end} env steps (dqn.total_steps = {total})",
                file=sys.stderr,
                flush=True,
            )
        return end

    def _schedule(self) -> None:
        """The first row, selection and checkpoint due after the current env step."""
        steps, logging = self.alg.env_steps, self.cfg.logging
        self.next_log = (steps // logging.log_every + 1) * logging.log_every
        self.next_ckpt = (steps // logging.checkpoint_every + 1) * logging.checkpoint_every
        every = logging.eval_every
        self.next_eval = (steps // every + 1) * every if every else math.inf

    # -------------------------------------------------------------- what is due

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

    def select(self, final: bool = False) -> None:
        """Evaluate on training tasks; ``policy.pt`` keeps the best policy so far. Before the
        end, nothing while the trainer says its policy is not
        :attr:`~robometa.methods.base.Method.selectable`; the final policy always competes."""
        if not (final or self.alg.selectable):
            return
        policy = self.alg.policy()
        score = selection_return(policy, self.cfg)
        path = self.run_dir / "selection.csv"
        header = "" if path.exists() else SELECTION_HEADER
        append_text(path, f"{header}{self.alg.env_steps},{score},{max(self.best, score)}\n")
        if score > self.best:
            self.best = score
            save_atomic(policy.state(), self.run_dir / POLICY_FILE)
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
            "config": self.cfg.to_yaml(),
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
        # Written before the envs restart: a restart that fails (a lost Ray cluster) cannot
        # cost the state already taken.
        save_atomic(snapshot, self.run_dir / "checkpoint.pt")
        self.checkpointed_at = alg.env_steps
        if restart_envs:
            alg.boundary()

    def interrupt(self) -> None:
        """Ctrl-C: checkpoint here (unless one was just written) and stop."""
        if self.checkpointed_at != self.alg.env_steps:
            self.checkpoint()
        raise TrainingInterrupted(self.run_dir, self.alg.env_steps)

    # -------------------------------------------------------------- failing

    def write_failure(self, err: RunWriteError) -> RunWriteError:
        """The error to show for a failed write, saying what the run keeps. A new run without a
        checkpoint yet takes back the files it wrote, so the same command works again later."""
        if self.checkpointed_at is None:
            for name in RUN_FILES:  # none existed when this start claimed the directory
                with contextlib.suppress(FileNotFoundError):
                    (self.run_dir / name).unlink()
            _remove_empty_dirs(self.created)
            return RunWriteError(
                f"{err}; nothing of the run was kept: run the same command again once it can "
                "be written",
                err.path,
            )
        return RunWriteError(
            f"{err}; the checkpoint at {self.checkpointed_at} env steps is intact: resume with "
            f"robometa train --resume {shlex.quote(str(self.run_dir))}",
            err.path,
        )


def _clean_up_temp_files(run_dir: Path) -> None:
    try:
        remove_stale_temp_files(run_dir)
    except OSError as err:
        raise RunWriteError(f"cannot clean up {run_dir}: {os_reason(err)}", run_dir) from None


def _build_algorithm(cfg: Config, created: list[Path], backend: Backend | None) -> Method:
    try:
        return make_algorithm(cfg, backend)
    except BaseException:  # an env that cannot be built leaves no run behind
        _remove_empty_dirs(created)
        raise


def _plot_finished_run(run_dir: Path) -> None:
    try:
        plot_learning_curve(run_dir)
    except RunWriteError as err:
        raise RunWriteError(
            f"{err}; the run itself finished (policy.pt and checkpoint.pt are written)",
            err.path,
        ) from None


def _claim_run_dir(run_dir: Path) -> list[Path]:
    """Create ``run_dir`` for a new run, refusing one that holds a run; returns the
    directories created, deepest first (a start that fails removes them again)."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RunWriteError(f"cannot create run directory {run_dir}: it is a file", run_dir)
    created, missing = [], run_dir
    while not missing.exists() and missing != missing.parent:
        created.append(missing)
        missing = missing.parent
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunWriteError(
            f"cannot create run directory {run_dir}: {os_reason(err)}", run_dir
        ) from None
    # Also a run killed before its first checkpoint (config.yaml, metrics.csv only).
    existing = [n for n in RUN_FILES if (run_dir / n).exists()]
    if existing and "checkpoint.pt" not in existing:
        raise FileExistsError(
            f"{run_dir} already holds a run ({', '.join(existing)}) that never wrote a "
            "checkpoint, so it cannot be resumed: delete it or choose another --out"
        )
    if existing:
        raise FileExistsError(
            f"{run_dir} already holds a run ({', '.join(existing)}); use --resume to "
            "continue it, or choose another --out"
        )
    return created


def _remove_empty_dirs(created: list[Path]) -> None:
    for directory in created:  # deepest first
        with contextlib.suppress(OSError):  # not empty (or gone): it stays
            directory.rmdir()


def _restore(
    alg: Method, state: dict[str, Any], path: Path
) -> tuple[int, float, list[float], list[float]]:
    """Put the checkpoint's algorithm and RNG state back; returns the metrics log's state
    (episodes, last return, pending losses, recent returns). A state that does not fit its
    own config (a hand-edited or foreign file) is a :class:`CheckpointError` naming it."""
    try:
        alg.load_state_dict(state["algorithm"])
        torch.set_rng_state(state["rng"]["torch"])
        alg.rng.bit_generator.state = state["rng"]["numpy"]
        # Older checkpoints lack the last two; they only affect the first row after resuming.
        return (
            int(state["episodes"]),
            float(state.get("last_return", math.nan)),
            [float(x) for x in state.get("pending_losses", [])],
            [float(x) for x in state["recent_returns"]],
        )
    except BackendError:  # the workers could not take the state: not the checkpoint's fault
        raise
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as err:
        first = (str(err).strip().splitlines() or [""])[0]
        raise CheckpointError(
            f"cannot resume from {path}: its state does not fit its own config "
            f"({type(err).__name__}: {first:.200})"
        ) from None


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
        state = read_checkpoint(ckpt)
        saved = parse_yaml(state["config"], f"the config in checkpoint {ckpt}")
    except (FileNotFoundError, ValueError):  # unreadable, foreign or of another format
        return "stale"
    env_steps = int(state["algorithm"]["env_steps"])
    try:  # a key added since, at its default, is the same experiment
        same = config_from_dict(saved, f"checkpoint {ckpt}").to_dict() == cfg.to_dict()
    except ValueError:  # a key since removed or renamed, or a value no longer allowed
        return "stale"
    if not same:
        return "stale"
    # Older checkpoints lack the flag: their only one at the budget was the final one.
    finished = state.get("finished", env_steps >= cfg.dqn.total_steps)
    if finished and (run_dir / "policy.pt").exists():
        return "finished"
    return "resumable"
