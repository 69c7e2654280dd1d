"""``robometa quickstart``: the whole promise on one small budget.

1. meta-train CAVIA (model inner loss) on the cart-pole family, and a domain-randomized DQN
   baseline on the same task distribution;
2. evaluate both on held-out robots (adaptation curves);
3. export the meta-trained policy as an ONNX bundle;
4. through the deploy runtime (numpy + onnxruntime), adapt on three held-out robot
   configurations, one with the motor mounted reversed, and compare with the baseline;
5. write ``report.md`` with the table and plots, and a GIF of one robot before and after.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from robometa.envs import Task, dump_tasks

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


@dataclass
class RobotRow:
    name: str
    task: dict[str, float]
    before: float
    after: float
    baseline: float
    adapt_report: dict[str, Any]
    max_param_diff_vs_torch: float


def held_out_robots(space: Any, seed: int) -> list[tuple[str, Task]]:
    """Three held-out configurations: one from the test ranges with the motor reversed, one
    with it mounted normally, and one more test-range draw."""
    draws = space.sample(3, seed=seed, split="test")
    return [
        ("reversed motor", Task({**draws[0], "motor_sign": -1})),
        ("normal motor", Task({**draws[1], "motor_sign": 1})),
        ("test-range draw", draws[2]),
    ]


def _greedy_episode_frames(
    env: Any, act: Any, task: Task, seed: int, every: int = 2
) -> tuple[list, float]:
    env.unwrapped.set_task(task)
    obs, _ = env.reset(seed=seed)
    frames, total, done, t = [env.render()], 0.0, False, 0
    while not done:
        obs, r, term, trunc, _ = env.step(act(obs))
        total += r
        done = term or trunc
        t += 1
        if t % every == 0 or done:
            frames.append(env.render())
    return frames, total


def write_gif(path: Path, before: list, after: list, fps: int = 25) -> Path:
    """Side by side: the robot with the meta-parameters (left) and after adaptation (right)."""
    import imageio.v2 as imageio

    n = max(len(before), len(after))
    pad = lambda fr: fr + [fr[-1]] * (n - len(fr))  # noqa: E731  hold the last frame
    frames = [
        np.concatenate([a, np.full((a.shape[0], 8, 3), 255, np.uint8), b], axis=1)
        for a, b in zip(pad(before), pad(after), strict=True)
    ]
    imageio.mimsave(path, frames, duration=1000 / fps, loop=0)
    return path


def run_quickstart(
    out: str | Path = "quickstart",
    meta_steps: int = 30000,
    baseline_steps: int = 30000,
    eval_tasks: int = 5,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    import torch

    from robometa.adaptation import Batch, adapt
    from robometa.bundle import export_bundle
    from robometa.config import load_config
    from robometa.deploy import Adapter
    from robometa.deploy.loop import collect as deploy_collect
    from robometa.deploy.loop import greedy_return as deploy_return
    from robometa.evaluate import run_evaluation
    from robometa.policy import Policy
    from robometa.rollout import greedy_act_fn, make_env
    from robometa.train import train

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    runs = {"cavia": out / "runs" / "cavia", "dr": out / "runs" / "dr"}
    setup = {
        "cavia": (CONFIGS / "quickstart.yaml", meta_steps),
        "dr": (CONFIGS / "cartpole_dr.yaml", baseline_steps),
    }
    for name, (config, steps) in setup.items():
        if (runs[name] / "policy.pt").exists():
            print(f"[1/5] reusing {runs[name]}")
            continue
        cfg = load_config(
            config, [f"logging.progress={str(progress).lower()}"], steps=steps, seed=seed
        )
        print(f"[1/5] training {name} ({config.name}, {steps} env steps) -> {runs[name]}")
        train(cfg, runs[name])

    print("[2/5] evaluating on held-out robots")
    report_eval = run_evaluation(
        [runs["cavia"], runs["dr"]],
        tasks="test",
        n_tasks=eval_tasks,
        episodes=1,
        out=out / "eval",
        show_progress=progress,
    )

    print("[3/5] exporting the ONNX bundle")
    bundle = export_bundle(runs["cavia"], out / "bundle")

    print("[4/5] adapting through the deploy runtime on three held-out robots")
    meta = Policy.load(runs["cavia"])
    base = Policy.load(runs["dr"])
    env = make_env(meta.env_id, meta.dynamics, render_mode="rgb_array")
    robots = held_out_robots(env.unwrapped.dynamics_space, seed=20_000 + seed)
    dump_tasks([t for _, t in robots], out / "robots.yaml", env_id=meta.env_id)
    support_eps = float(meta.config["adaptation"]["support_epsilon"])
    rows: list[RobotRow] = []
    gif_frames = None
    for i, (name, task) in enumerate(robots):
        env.unwrapped.set_task(task)
        # Exact deployed adaptation (no update clipping); the guard still checks held-out loss.
        adapter = Adapter.load(bundle, max_update_norm=None)
        rng = np.random.default_rng(seed + i)
        eval_seed = 30_000 + 100 * i
        before = deploy_return(adapter, env, 3, seed=eval_seed)
        deploy_collect(adapter, env, meta.support_size, support_eps, rng, seed=eval_seed + 50)
        report = adapter.adapt(meta.adapt_steps)
        after = deploy_return(adapter, env, 3, seed=eval_seed)
        # Parity: torch's adapt on the transitions the runtime trained on.
        train_part, _ = adapter.split(adapter.buffer.ordered())
        batch = Batch(*(torch.from_numpy(np.asarray(x)) for x in train_part))
        with torch.no_grad():
            torch_params, _ = adapt(
                meta.net, meta.params, meta.lrs, batch, meta.inner, meta.adapt_steps
            )
        diff = (
            max(float(np.abs(adapter.params[k] - torch_params[k].numpy()).max()) for k in meta.lrs)
            if report.accepted
            else float("nan")
        )
        base_act = greedy_act_fn(base.net, base.params)
        baseline = float(np.mean([_episode(env, base_act, task, eval_seed + e) for e in range(3)]))
        rows.append(RobotRow(name, dict(task), before, after, baseline, report.to_dict(), diff))
        print(
            f"      {name:16} before {before:6.1f}  after {after:6.1f}  "
            f"DR baseline {baseline:6.1f}  ({'accepted' if report.accepted else 'rolled back'})"
        )
        if gif_frames is None and name == "reversed motor":
            meta_act = greedy_act_fn(meta.net, meta.params)
            adapted_act = greedy_act_fn(
                meta.net, {k: torch.from_numpy(np.array(v)) for k, v in adapter.params.items()}
            )
            gif_frames = (
                _greedy_episode_frames(env, meta_act, task, eval_seed)[0],
                _greedy_episode_frames(env, adapted_act, task, eval_seed)[0],
            )
    env.close()

    print("[5/5] writing the report")
    gif = write_gif(out / "before_after.gif", *gif_frames) if gif_frames else None
    table = robots_table(rows)
    wall = time.perf_counter() - t0
    lines = [
        "# robometa quickstart report",
        "",
        f"CAVIA (model inner loss, {meta.adapt_steps} steps on {meta.support_size} transitions) "
        f"meta-trained for {meta_steps} env steps on `{meta.env_id}`; domain-randomized DQN "
        f"baseline for {baseline_steps} env steps. Wall-clock: {wall:.0f} s.",
        "",
        "## Deployed adaptation on three held-out robots (ONNX runtime)",
        "",
        table,
        "",
        "Returns are greedy, averaged over 3 episodes (max 200). *before*: the meta-parameters; "
        "*after*: the runtime's adapted parameters; *DR*: the baseline, which does not adapt.",
        "",
        "## Held-out evaluation (torch harness)",
        "",
        (out / "eval" / "results.md").read_text().split("\n", 2)[2].strip(),
        "",
        "![adaptation curve](eval/adaptation.png)",
        "",
        "## Learning curves",
        "",
        "![CAVIA](runs/cavia/learning_curve.png)",
        "![DR](runs/dr/learning_curve.png)",
        "",
    ]
    if gif:
        lines += [
            "## The reversed-motor robot before (left) and after (right) adaptation",
            "",
            f"![before and after]({gif.name})",
            "",
        ]
    (out / "report.md").write_text("\n".join(lines))
    result = {
        "wall_s": wall,
        "robots": [r.__dict__ for r in rows],
        "eval_summary": report_eval["summary"],
        "bundle": str(bundle),
        "report": str(out / "report.md"),
    }
    (out / "quickstart.json").write_text(json.dumps(result, indent=1))
    print()
    print(table)
    print(f"\nreport: {out / 'report.md'}   bundle: {bundle}   ({wall:.0f} s)")
    return result


def _episode(env: Any, act: Any, task: Task, seed: int) -> float:
    from robometa.rollout import episode_return

    return episode_return(env, act, task, seed)


def robots_table(rows: list[RobotRow]) -> str:
    lines = [
        "| robot | motor | return before | return after | DR baseline | runtime = torch |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        motor = "reversed" if r.task.get("motor_sign", 1) < 0 else "normal"
        parity = (
            "n/a" if np.isnan(r.max_param_diff_vs_torch) else f"{r.max_param_diff_vs_torch:.1e}"
        )
        lines.append(
            f"| {r.name} | {motor} | {r.before:.1f} | {r.after:.1f} | {r.baseline:.1f} | {parity} |"
        )
    return "\n".join(lines)
