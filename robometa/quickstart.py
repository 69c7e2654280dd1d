"""``robometa quickstart``: the whole promise on one small budget.

1. meta-train CAVIA (model inner loss) on the cart-pole family, and a domain-randomized DQN
   baseline on the same task distribution (a finished run of the same config, budget and seed
   is reused, an interrupted one resumed);
2. evaluate both on held-out robots (adaptation curves);
3. export the meta-trained policy as an ONNX bundle;
4. through the deploy runtime (numpy + onnxruntime), adapt on three held-out robot
   configurations, one with the motor mounted reversed, and compare with the baseline;
5. write ``report.md`` with the tables, a bar chart per robot and a GIF of the robot that
   adaptation helps most, before and after.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np

from robometa.envs import Task, dump_tasks

#: the shipped configs (package data ``robometa.configs``), found in any install
CONFIGS = Path(str(files("robometa.configs")))

EVAL_EPISODES = 3  # greedy episodes per robot behind "before", "after" and the DR baseline
GIF_EVERY = 2  # keep every 2nd env step in the GIF (25 fps: real time at the env's 50 Hz)
GIF_FPS = 25
PARITY_COLUMN = "ONNX runtime vs torch, max abs parameter difference"


@dataclass
class RobotRow:
    name: str
    task: dict[str, float]
    before: float
    after: float
    baseline: float
    adapt_report: dict[str, Any]
    max_param_diff_vs_torch: float
    eval_seed: int

    @property
    def gain(self) -> float:
        return self.after - self.before


def held_out_robots(space: Any, seed: int) -> list[tuple[str, Task]]:
    """Three held-out configurations: one from the test ranges with the motor reversed, one
    with it mounted normally, and one more test-range draw."""
    draws = space.sample(3, seed=seed, split="test")
    return [
        ("reversed motor", Task({**draws[0], "motor_sign": -1})),
        ("normal motor", Task({**draws[1], "motor_sign": 1})),
        ("test-range draw", draws[2]),
    ]


# ---------------------------------------------------------------------------- training


def _looks_like_run(run_dir: Path) -> bool:
    return (run_dir / "config.yaml").exists() or (run_dir / "checkpoint.pt").exists()


def trained_env_steps(run_dir: Path) -> int:
    """Env steps the run actually trained (its final checkpoint), not the requested budget."""
    import torch

    state = torch.load(run_dir / "checkpoint.pt", weights_only=True, map_location="cpu")
    return int(state["algorithm"]["env_steps"])


def ensure_trained(
    name: str, run_dir: Path, config: Path, steps: int, seed: int, progress: bool
) -> str:
    """Reuse a finished run of this config, budget and seed; resume an interrupted one;
    retrain over a stale one (only if robometa wrote it). Returns "reused", "resumed" or
    "trained"."""
    from robometa.config import load_config
    from robometa.train import run_status, train

    def cfg_with(show: bool) -> Any:
        return load_config(
            config, [f"logging.progress={str(show).lower()}"], steps=steps, seed=seed
        )

    cfg = cfg_with(progress)
    status = run_status(run_dir, cfg)
    if status == "stale" and run_status(run_dir, cfg_with(not progress)) != "stale":
        # Only the progress bar differs: a display setting, not a different run.
        status = run_status(run_dir, cfg_with(not progress))
    what = f"{name} ({config.name}, {steps} env steps, seed {seed})"
    if status == "finished":
        print(f"[1/5] reusing the finished run {run_dir}: {what}")
        return "reused"
    if status == "resumable":
        print(f"[1/5] resuming the interrupted run {run_dir}: {what}")
        train(None, run_dir, resume=True)
        return "resumed"
    if status == "stale":
        if _looks_like_run(run_dir):
            print(f"[1/5] {run_dir} holds a run of another config, budget or seed: retraining")
            shutil.rmtree(run_dir)
        elif any(run_dir.iterdir()):
            raise FileExistsError(
                f"{run_dir} exists and is not a robometa run (no config.yaml or checkpoint.pt);"
                " the quickstart trains there: move it away or choose another --out"
            )
    print(f"[1/5] training {what} -> {run_dir}")
    train(cfg, run_dir)
    return "trained"


# ---------------------------------------------------------------------------- adaptation


def runtime_parity(adapter: Any, meta: Any) -> float:
    """Max abs difference between the runtime's raw adapted parameters (``adapt.onnx`` steps
    from the meta-parameters, no guard) and torch's ``adapt`` on the same transitions."""
    import torch

    from robometa.adaptation import Batch, adapt

    train_part, _ = adapter.split(adapter.buffer.ordered())
    current = adapter.meta_params
    for _ in range(meta.adapt_steps):
        new, _loss = adapter.step(current, train_part)
        current.update(new)
    batch = Batch(*(torch.from_numpy(np.asarray(x)) for x in train_part))
    with torch.no_grad():
        torch_params, _ = adapt(
            meta.net, meta.params, meta.lrs, batch, meta.inner, meta.adapt_steps
        )
    return max(float(np.abs(current[k] - torch_params[k].numpy()).max()) for k in meta.lrs)


def record_before_after(
    env: Any, adapter: Any, row: RobotRow, meta: Any, every: int = GIF_EVERY
) -> tuple[list[np.ndarray], dict[str, Any]]:
    """Both panels from the same start (task and reset seed): the meta-parameters acting
    (left) and the adapted ones (right), each labelled with its episode's return."""
    from robometa.render import label_episode, record_episode, side_by_side

    task = Task(row.task)
    with adapter.acting_with_meta():
        before = record_episode(env, adapter.act, task, row.eval_seed, every)
    after = record_episode(env, adapter.act, task, row.eval_seed, every)
    adapted = f"after {meta.adapt_steps} steps on {meta.support_size} transitions"
    if not row.adapt_report["accepted"]:
        adapted += " (rolled back)"
    frames = side_by_side(
        [
            label_episode(before, f"{row.name}\nbefore adapting: return {before.total:.0f}"),
            label_episode(after, f"{row.name}\n{adapted}: return {after.total:.0f}"),
        ]
    )
    info = {
        "robot": row.name,
        "eval_seed": row.eval_seed,
        "every": every,
        "fps": GIF_FPS,
        "frames": len(frames),
        "before_return": before.total,
        "after_return": after.total,
        "before_steps": before.length,
        "after_steps": after.length,
    }
    return frames, info


def adapt_on_robots(
    env: Any, bundle: Path, meta: Any, base: Any, seed: int
) -> tuple[list[RobotRow], dict[str, Any]]:
    """Deployed adaptation on the three held-out robots; also the adapters, by robot name."""
    from robometa.deploy import Adapter
    from robometa.deploy.loop import collect as deploy_collect
    from robometa.deploy.loop import greedy_return as deploy_return
    from robometa.rollout import episode_return, greedy_act_fn

    robots = held_out_robots(env.unwrapped.dynamics_space, seed=20_000 + seed)
    support_eps = float(meta.config["adaptation"]["support_epsilon"])
    base_act = greedy_act_fn(base.net, base.params)
    rows, adapters = [], {}
    for i, (name, task) in enumerate(robots):
        env.unwrapped.set_task(task)
        # Exact deployed adaptation (no update clipping); the guard still checks held-out loss.
        adapter = Adapter.load(bundle, max_update_norm=None)
        rng = np.random.default_rng(seed + i)
        eval_seed = 30_000 + 100 * i
        before = deploy_return(adapter, env, EVAL_EPISODES, seed=eval_seed)
        deploy_collect(adapter, env, meta.support_size, support_eps, rng, seed=eval_seed + 50)
        report = adapter.adapt(meta.adapt_steps)
        after = deploy_return(adapter, env, EVAL_EPISODES, seed=eval_seed)
        baseline = float(
            np.mean(
                [episode_return(env, base_act, task, eval_seed + e) for e in range(EVAL_EPISODES)]
            )
        )
        row = RobotRow(
            name,
            dict(task),
            before,
            after,
            baseline,
            report.to_dict(),
            runtime_parity(adapter, meta),
            eval_seed,
        )
        rows.append(row)
        adapters[name] = adapter
        print(
            f"      {name:16} before {before:6.1f}  after {after:6.1f}  "
            f"DR baseline {baseline:6.1f}  ({'accepted' if report.accepted else 'rolled back'})"
        )
    return rows, adapters


# ---------------------------------------------------------------------------- report


def robots_table(rows: list[RobotRow]) -> str:
    lines = [
        f"| robot | motor | return before | return after | after - before | DR baseline | "
        f"runtime guard | {PARITY_COLUMN} |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        motor = "reversed" if r.task.get("motor_sign", 1) < 0 else "normal"
        guard = "accepted" if r.adapt_report["accepted"] else "rolled back"
        lines.append(
            f"| {r.name} | {motor} | {r.before:.1f} | {r.after:.1f} | {r.gain:+.1f} | "
            f"{r.baseline:.1f} | {guard} | {r.max_param_diff_vs_torch:.1e} |"
        )
    return "\n".join(lines)


def eval_table(summary: list[dict[str, Any]], adapt_steps: int) -> str:
    """One row per (method, task group): the return unadapted and after ``adapt_steps`` steps.

    Built from ``robometa.evaluate.summarize`` rows; the normalized score needs an oracle run,
    which the quickstart does not train, so the table shows returns only.
    """

    def fmt(r: dict[str, Any] | None) -> str:
        if r is None:
            return "does not adapt"
        return f"{r['return']:.1f} [{r['return_lo']:.1f}, {r['return_hi']:.1f}]"

    by_key = {(r["method"], r["group"], r["steps"]): r for r in summary}
    lines = [
        f"| method | robots | greedy return, 0 steps [95% CI] | greedy return, {adapt_steps} "
        "steps [95% CI] | robots (n) |",
        "|---|---|---|---|---|",
    ]
    for method, group in dict.fromkeys((r["method"], r["group"]) for r in summary):
        start = by_key[(method, group, 0)]
        lines.append(
            f"| {method} | {group} | {fmt(start)} | "
            f"{fmt(by_key.get((method, group, adapt_steps)))} | {start['n']} |"
        )
    return "\n".join(lines)


def plot_robots(rows: list[RobotRow], path: Path) -> Path:
    """Grouped bars per robot: before adapting, after adapting, and the DR baseline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.arange(len(rows))
    width = 0.27
    fig, ax = plt.subplots(figsize=(7, 3.8))
    series = [
        ("before adapting", [r.before for r in rows]),
        ("after adapting", [r.after for r in rows]),
        ("DR baseline", [r.baseline for r in rows]),
    ]
    for i, (label, values) in enumerate(series):
        bars = ax.bar(x + (i - 1) * width, values, width, label=label, color=f"C{i}")
        ax.bar_label(bars, fmt="%.0f", fontsize=8, padding=2)
    ax.set_xticks(x, [r.name for r in rows])
    ax.set(
        ylabel=f"greedy return (mean of {EVAL_EPISODES} episodes)",
        title="Deployed adaptation on three held-out robots",
    )
    ax.set_ylim(0, max(1.0, *(v for _, vs in series for v in vs)) * 1.3)  # room for the legend
    ax.legend(fontsize=8, loc="upper center", ncol=3)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def report_lines(
    meta: Any,
    trained: dict[str, int],
    requested: dict[str, int],
    actions: dict[str, str],
    rows: list[RobotRow],
    summary: list[dict[str, Any]],
    eval_tasks: int,
    gif: dict[str, Any],
    wall: float,
) -> list[str]:
    """report.md; the lines that are not images are also the printed summary."""

    def steps(name: str) -> str:
        done, asked = trained[name], requested[name]
        return f"{done} env steps" + (f" (budget {asked})" if done != asked else "")

    reused = [n for n, a in actions.items() if a == "reused"]
    note = f" ({', '.join(reused)} reused from a previous quickstart run)" if reused else ""
    best = next(r for r in rows if r.name == gif["robot"])
    return [
        "# robometa quickstart report",
        "",
        f"CAVIA (model inner loss, {meta.adapt_steps} steps on {meta.support_size} transitions) "
        f"meta-trained for {steps('cavia')} on `{meta.env_id}`; domain-randomized (DR) DQN "
        f"baseline trained for {steps('dr')}{note}. "
        f"Wall-clock: {wall:.0f} s.",
        "",
        "## Deployed adaptation on three held-out robots (ONNX runtime)",
        "",
        robots_table(rows),
        "",
        f"Returns are greedy, averaged over {EVAL_EPISODES} episodes (max 200). *before*: the "
        "meta-parameters; *after*: the runtime's parameters after adapting on the robot "
        "(*runtime guard*: the runtime keeps them only if the held-out loss did not get worse, "
        "else rolls back to the meta-parameters); *DR baseline*: DQN trained across the "
        f"training robot distribution, does not adapt. *{PARITY_COLUMN}*: the runtime's "
        "`adapt.onnx` steps against torch's `adapt` on the same transitions.",
        "",
        "![returns per robot](robots.png)",
        "",
        f"## The {best.name} robot before (left) and after (right) adaptation",
        "",
        f"The held-out robot where adapting gained most (after - before: {best.gain:+.1f}). Both "
        f"panels start from the same state (reset seed {gif['eval_seed']}); this episode: "
        f"{gif['before_return']:.0f} before, {gif['after_return']:.0f} after "
        f"(one frame per {gif['every']} env steps).",
        "",
        "![before and after](before_after.gif)",
        "",
        "## Held-out evaluation (torch harness)",
        "",
        eval_table(summary, meta.adapt_steps),
        "",
        f"*robots*: `id` = {eval_tasks} held-out robots drawn from the training ranges with "
        f"unseen seeds; `ood` = {eval_tasks} robots from the wider test ranges, out of "
        "distribution. Each method collects its support transitions with its own initial "
        "policy, then takes the gradient steps; *dr+finetune* fine-tunes the DR policy with "
        "plain gradient steps (learning rate picked on training robots). Returns: one greedy "
        "episode per robot, 95% bootstrap CI over robots. No normalized score: that needs an "
        "oracle run, which the quickstart does not train (`eval/results.md` has the raw table).",
        "",
        "![adaptation curve](eval/adaptation.png)",
        "",
        "## Learning curves",
        "",
        "![CAVIA](runs/cavia/learning_curve.png)",
        "![DR](runs/dr/learning_curve.png)",
        "",
    ]


def printed_summary(lines: list[str], out: Path) -> str:
    """report.md as text for the terminal: images become their file paths."""
    text = []
    for line in lines[2:]:
        if line.startswith("![") and "](" in line:
            alt, target = line[2:].rstrip(")").split("](", 1)
            line = f"{alt}: {out / target}"
        text.append(line)
    return "\n".join(text).strip()


@dataclass
class QuickstartRuns:
    """The two training runs, by name (``cavia``, ``dr``): their directories, configs and
    budgets, what the quickstart did with each, and the env steps each actually trained."""

    dirs: dict[str, Path]
    setup: dict[str, tuple[Path, int]]  # name -> (config file, requested env steps)
    actions: dict[str, str]  # name -> "reused", "resumed" or "trained"
    trained: dict[str, int]

    @property
    def requested(self) -> dict[str, int]:
        return {name: steps for name, (_, steps) in self.setup.items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            name: {
                "dir": str(self.dirs[name]),
                "action": self.actions[name],
                "requested_env_steps": self.setup[name][1],
                "env_steps": self.trained[name],
            }
            for name in self.dirs
        }


def train_or_reuse(
    out: Path, meta_steps: int, baseline_steps: int, seed: int, progress: bool
) -> QuickstartRuns:
    """Step 1: CAVIA and the DR baseline under ``out/runs`` (see :func:`ensure_trained`)."""
    dirs = {"cavia": out / "runs" / "cavia", "dr": out / "runs" / "dr"}
    setup = {
        "cavia": (CONFIGS / "quickstart.yaml", meta_steps),
        "dr": (CONFIGS / "cartpole_dr.yaml", baseline_steps),
    }
    actions = {
        name: ensure_trained(name, dirs[name], config, steps, seed, progress)
        for name, (config, steps) in setup.items()
    }
    trained = {name: trained_env_steps(run_dir) for name, run_dir in dirs.items()}
    return QuickstartRuns(dirs, setup, actions, trained)


def evaluate_runs(
    runs: QuickstartRuns, meta: Any, eval_tasks: int, out: Path, progress: bool
) -> dict[str, Any]:
    """Step 2: both runs through the evaluation harness, unadapted and after the meta-run's
    adaptation steps, on ``eval_tasks`` held-out robots per group (reports in ``out/eval``)."""
    from robometa.evaluate import run_evaluation

    print("[2/5] evaluating on held-out robots")
    return run_evaluation(
        [runs.dirs["cavia"], runs.dirs["dr"]],
        tasks="test",
        n_tasks=eval_tasks,
        episodes=1,
        steps=[0, meta.adapt_steps],
        out=out / "eval",
        show_progress=progress,
    )


def export_meta_run(runs: QuickstartRuns, out: Path) -> Path:
    """Step 3: the meta-trained run as an ONNX bundle in ``out/bundle`` (its own bundle)."""
    from robometa.bundle import export_bundle

    print("[3/5] exporting the ONNX bundle")
    return export_bundle(runs.dirs["cavia"], out / "bundle", overwrite=True)


def adapt_and_record(
    out: Path, bundle: Path, meta: Any, base: Any, seed: int
) -> tuple[list[RobotRow], list[np.ndarray], dict[str, Any]]:
    """Step 4: deployed adaptation on the three held-out robots (written to
    ``out/robots.yaml``), and the before/after frames of the robot it helped most."""
    from robometa.rollout import make_env

    print("[4/5] adapting through the deploy runtime on three held-out robots")
    env = make_env(meta.env_id, meta.dynamics, render_mode="rgb_array")
    try:
        rows, adapters = adapt_on_robots(env, bundle, meta, base, seed)
        dump_tasks([Task(r.task) for r in rows], out / "robots.yaml", env_id=meta.env_id)
        best = max(rows, key=lambda r: r.gain)
        frames, gif = record_before_after(env, adapters[best.name], best, meta)
    finally:
        env.close()
    return rows, frames, gif


def write_pictures(out: Path, rows: list[RobotRow], frames: list[np.ndarray]) -> None:
    """Step 5a: the before/after GIF and the bar chart per robot."""
    from robometa.render import write_video

    print("[5/5] writing the report")
    write_video(out / "before_after.gif", frames, fps=GIF_FPS)
    plot_robots(rows, out / "robots.png")


def run_quickstart(
    out: str | Path = "quickstart",
    meta_steps: int = 30000,
    baseline_steps: int = 30000,
    eval_tasks: int = 5,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Train (or reuse) CAVIA and the DR baseline, evaluate both, export CAVIA, adapt through
    the runtime on three held-out robots, and write ``report.md`` and ``quickstart.json``."""
    from robometa.policy import Policy

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    runs = train_or_reuse(out, meta_steps, baseline_steps, seed, progress)
    meta, base = Policy.load(runs.dirs["cavia"]), Policy.load(runs.dirs["dr"])
    evaluation = evaluate_runs(runs, meta, eval_tasks, out, progress)
    bundle = export_meta_run(runs, out)
    rows, frames, gif = adapt_and_record(out, bundle, meta, base, seed)
    write_pictures(out, rows, frames)
    wall = time.perf_counter() - t0
    return write_report(out, meta, runs, rows, evaluation["summary"], eval_tasks, gif, bundle, wall)


def write_report(
    out: Path,
    meta: Any,
    runs: QuickstartRuns,
    rows: list[RobotRow],
    summary: list[dict[str, Any]],
    eval_tasks: int,
    gif: dict[str, Any],
    bundle: Path,
    wall: float,
) -> dict[str, Any]:
    """Step 5b: ``report.md`` and ``quickstart.json``, and the summary printed; returns what
    ``quickstart.json`` holds."""
    lines = report_lines(
        meta, runs.trained, runs.requested, runs.actions, rows, summary, eval_tasks, gif, wall
    )
    (out / "report.md").write_text("\n".join(lines))
    result = {
        "wall_s": wall,
        "runs": runs.to_dict(),
        "robots": [{**r.__dict__, "gain": r.gain} for r in rows],
        "gif": gif,
        "eval_summary": summary,
        "bundle": str(bundle),
        "report": str(out / "report.md"),
    }
    (out / "quickstart.json").write_text(json.dumps(result, indent=1, default=_json_number))
    print()
    print(printed_summary(lines, out))
    print(f"\nreport: {out / 'report.md'}   bundle: {bundle}   ({wall:.0f} s)")
    return result


def _json_number(value: Any) -> Any:
    if isinstance(value, np.floating | np.integer):
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")
