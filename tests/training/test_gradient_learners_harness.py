"""MetaLearner through the training harness, every algorithm on a tiny budget: the run
directory, the adapted parameters its policy names, same seed same run, checkpoint + resume."""

from __future__ import annotations

import csv
import dataclasses
import math
import re
from pathlib import Path

import pytest
import torch

import robometa.algorithms as algorithms
from robometa.cli import main as cli_main
from robometa.config import load_config
from robometa.methods.gradient import MetaLearner
from robometa.policy import Policy
from robometa.replay import ReplayBuffer
from robometa.train import train

ROOT = Path(__file__).resolve().parents[2]
CAVIA_YAML = ROOT / "configs" / "cartpole_cavia.yaml"
CARTPOLE_CONFIGS = sorted((ROOT / "configs").glob("cartpole_*.yaml"))

# 4 tasks in the pool, 2 per round; a round collects 2 x (10 support + 10 query) = 40 env steps
# and takes 2 outer steps. 120 steps = 3 rounds, a checkpoint after the second.
TINY = [
    "dqn.total_steps=120",
    "logging.progress=false",
    "logging.tensorboard=false",
    "logging.log_every=40",
    "logging.checkpoint_every=80",
    "logging.eval_every=0",  # no model selection: policy.pt is the final policy
    "network.hidden=[16, 16]",
    "meta.task_pool=4",
    "meta.meta_batch=2",
    "meta.collect_steps=10",
    "meta.updates_per_collect=2",
    "meta.query_batch=16",
    "meta.target_update_interval=3",
    "adaptation.support_size=20",
    "adaptation.steps=2",
]
HEADS = ["q_head.weight", "q_head.bias", "model_head.weight", "model_head.bias"]


def tiny_config(algorithm: str, *extra: str):
    # td+model for all of them: reptile refuses the pure model loss (tested below).
    return load_config(
        CAVIA_YAML, [f"algorithm={algorithm}", "adaptation.loss=td+model", *TINY, *extra]
    )


def policy_state(run: Path) -> dict[str, torch.Tensor]:
    state = torch.load(run / "policy.pt", weights_only=True)
    return {
        **{f"param.{k}": v for k, v in state["params"].items()},
        **{f"buffer.{k}": v for k, v in state["buffers"].items()},
        **{f"lr.{k}": v for k, v in state["lrs"].items()},
    }


def metrics(run: Path) -> list[dict[str, str]]:
    """metrics.csv rows without the wall-clock columns."""
    with open(run / "metrics.csv", newline="") as f:
        return [
            {k: v for k, v in r.items() if k not in ("steps_per_s", "wall_s")}
            for r in csv.DictReader(f)
        ]


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


@pytest.fixture(
    scope="module",
    params=[n for n in algorithms.builtin_names() if algorithms.get(n).family == "gradient"],
)
def reference(request: pytest.FixtureRequest, tmp_path_factory) -> tuple[str, Path]:
    """One uninterrupted tiny run per algorithm, shared by the tests that only read it."""
    torch.set_num_threads(1)
    algorithm = request.param
    run = tmp_path_factory.mktemp(algorithm) / "run"
    train(tiny_config(algorithm), run)
    return algorithm, run


def test_run_completes_and_writes_a_policy(reference: tuple[str, Path]) -> None:
    algorithm, run = reference
    for name in ("policy.pt", "checkpoint.pt", "config.yaml", "metrics.csv"):
        assert (run / name).exists(), name
    policy = Policy.load(run)
    assert policy.algorithm == algorithm
    assert policy.adapt_steps == 2 and policy.support_size == 20
    assert policy.inner.kind == "td+model"
    assert all(torch.isfinite(v).all() for v in policy.params.values())

    names = list(policy.params)
    if algorithm in ("cavia", "cavia-encoder"):
        assert list(policy.lrs) == ["context"]
        assert "context" in names and policy.net.spec.context_dim == 4
    elif algorithm == "anil":
        assert sorted(policy.lrs) == sorted(HEADS)
    else:  # taskrate's encoder and rate network generate its rates: they never adapt
        meta_policy = ("encoder.", "rate.") if algorithm == "taskrate" else ()
        adapted = [n for n in names if n != "context" and not n.startswith(meta_policy)]
        assert sorted(policy.lrs) == sorted(adapted)
    for k, lr in policy.lrs.items():
        if algorithm == "metasgd":
            assert lr.shape == policy.params[k].shape, k  # one learning rate per entry
            assert bool((lr > 0).all())
        else:
            assert lr.shape == (), k
            assert float(lr) == 1.0  # the config's adaptation.lr (taskrate's base), not learned
    if algorithm == "metasgd":  # learned: they moved away from their initial value 1.0
        assert any(not torch.equal(lr, torch.ones_like(lr)) for lr in policy.lrs.values())
    if algorithm not in ("cavia", "cavia-encoder"):
        assert "context" not in policy.lrs


def test_policy_adapts_and_acts(reference: tuple[str, Path]) -> None:
    """The saved policy runs its adaptation on a batch and stays finite."""
    _, run = reference
    policy = Policy.load(run)
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    buf = ReplayBuffer(20, policy.net.spec.obs_dim)
    slots = state["algorithm"]["slots"]
    buf.load_state_dict(max(slots, key=lambda s: len(s["support"]["obs"]))["support"])
    assert len(buf) > 0
    params, losses = policy.adapted(buf.all())
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    changed = [k for k in params if not torch.equal(params[k], policy.params[k])]
    assert sorted(changed) == sorted(policy.lrs)
    assert policy.act(buf.all().obs, params).shape == (len(buf),)


def test_same_seed_same_policy(reference: tuple[str, Path], tmp_path: Path) -> None:
    algorithm, run = reference
    train(tiny_config(algorithm), tmp_path / "again")
    assert_same(policy_state(run), policy_state(tmp_path / "again"))
    assert metrics(run) == metrics(tmp_path / "again")


def test_resume_equals_uninterrupted(reference: tuple[str, Path], tmp_path: Path) -> None:
    algorithm, run = reference
    stopped = tmp_path / "stopped"
    train(tiny_config(algorithm), stopped, stop_after=80)
    assert (stopped / "checkpoint.pt").exists() and not (stopped / "policy.pt").exists()
    assert torch.load(stopped / "checkpoint.pt", weights_only=True)["algorithm"]["env_steps"] == 80
    train(None, stopped, resume=True)  # type: ignore[arg-type]
    assert_same(policy_state(run), policy_state(stopped))
    assert metrics(run) == metrics(stopped)


def test_different_seed_different_policy(tmp_path: Path) -> None:
    train(tiny_config("cavia", "seed=1", "dqn.total_steps=40"), tmp_path / "a")
    train(tiny_config("cavia", "seed=2", "dqn.total_steps=40"), tmp_path / "b")
    a, b = policy_state(tmp_path / "a"), policy_state(tmp_path / "b")
    assert any(not torch.equal(a[k], b[k]) for k in a if k.startswith("param."))


def test_reptile_with_the_model_loss_is_rejected(tmp_path: Path) -> None:
    # At load time, before any run directory exists (a retry into the same --out works).
    with pytest.raises(ValueError, match=r"adaptation\.loss.*reptile.*'model'.*cartpole_cavia"):
        load_config(CAVIA_YAML, ["algorithm=reptile", "adaptation.loss=model", *TINY])
    code = cli_main(
        ["train", str(CAVIA_YAML), "--out", str(tmp_path / "run"), "--set", "algorithm=reptile"]
    )
    assert code == 2 and not (tmp_path / "run").exists()
    # The learner refuses it too when handed such a config directly.
    cfg = tiny_config("reptile")
    bad = dataclasses.replace(cfg, adaptation=dataclasses.replace(cfg.adaptation, loss="model"))
    with pytest.raises(ValueError, match=r"adaptation\.loss.*reptile"):
        MetaLearner(bad)


def test_anil_with_the_model_loss_is_rejected() -> None:
    # ANIL adapts the heads only; the model loss never reaches the Q head.
    with pytest.raises(ValueError, match=r"adaptation\.loss.*anil.*'model'.*cartpole_cavia"):
        load_config(CAVIA_YAML, ["algorithm=anil", "adaptation.loss=model", *TINY])


def test_cavia_needs_a_context_vector() -> None:
    with pytest.raises(ValueError, match="network.context_dim"):
        load_config(CAVIA_YAML, ["network.context_dim=0"])


@pytest.mark.parametrize("path", CARTPOLE_CONFIGS, ids=[p.stem for p in CARTPOLE_CONFIGS])
def test_shipped_cartpole_configs_load(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.env.id == "robometa/CartPole-v0"
    suffix = path.stem.removeprefix("cartpole_")
    if suffix in algorithms.names():
        assert cfg.algorithm == suffix, f"{path.name} trains {cfg.algorithm}"
    if cfg.algorithm == "reptile":
        assert cfg.adaptation.loss != "model"


def test_outer_learning_rate_decays_linearly(tmp_path: Path) -> None:
    cfg = tiny_config("cavia", "meta.outer_lr=0.002", "meta.outer_lr_end_fraction=0.25")
    learner = MetaLearner(cfg)
    try:
        assert learner.outer_lr() == pytest.approx(0.002)
        learner.env_steps = cfg.dqn.total_steps // 2
        assert learner.outer_lr() == pytest.approx(0.002 * (1 - 0.75 * 0.5))
        learner.iterate()  # the outer steps use the scheduled rate
        progress = learner.env_steps / cfg.dqn.total_steps
        expected = 0.002 * (1 - 0.75 * progress)
        assert learner.optimizer.param_groups[0]["lr"] == pytest.approx(expected)
        learner.env_steps = 10 * cfg.dqn.total_steps  # clamped at the end value
        assert learner.outer_lr() == pytest.approx(0.0005)
    finally:
        learner.close()
    with pytest.raises(ValueError, match=r"meta\.outer_lr_end_fraction"):
        tiny_config("cavia", "meta.outer_lr_end_fraction=1.5")


def test_reptile_step_decays_with_the_outer_schedule(tmp_path: Path) -> None:
    """Reptile has no optimizer: the schedule scales its step toward the adapted parameters."""
    train(tiny_config("reptile", "meta.outer_lr_end_fraction=1.0"), tmp_path / "constant")
    train(tiny_config("reptile", "meta.outer_lr_end_fraction=0.0"), tmp_path / "decayed")
    a, b = policy_state(tmp_path / "constant"), policy_state(tmp_path / "decayed")
    assert any(not torch.equal(a[k], b[k]) for k in a if k.startswith("param."))


@pytest.mark.parametrize("algorithm", ["cavia", "reptile"])
def test_resume_with_a_decaying_outer_rate_equals_uninterrupted(
    algorithm: str, tmp_path: Path
) -> None:
    cfg = tiny_config(algorithm, "meta.outer_lr_end_fraction=0.0")
    train(cfg, tmp_path / "full")
    train(cfg, tmp_path / "stopped", stop_after=80)
    train(None, tmp_path / "stopped", resume=True)  # type: ignore[arg-type]
    assert_same(policy_state(tmp_path / "full"), policy_state(tmp_path / "stopped"))
    assert metrics(tmp_path / "full") == metrics(tmp_path / "stopped")


def test_run_status_tells_finished_resumable_stale_and_absent(tmp_path: Path) -> None:
    """What benchmarks use to decide reuse / resume / retrain."""
    from robometa.train import run_status

    cfg = tiny_config("cavia")
    assert run_status(tmp_path / "none", cfg) == "absent"
    train(cfg, tmp_path / "done")
    assert run_status(tmp_path / "done", cfg) == "finished"
    # Another budget or seed: the run is not this config's.
    assert run_status(tmp_path / "done", tiny_config("cavia", "dqn.total_steps=160")) == "stale"
    assert run_status(tmp_path / "done", tiny_config("cavia", "seed=5")) == "stale"
    train(cfg, tmp_path / "part", stop_after=80)  # a checkpoint at 80 of 120 steps
    assert run_status(tmp_path / "part", cfg) == "resumable"
    # Stopped before the first periodic checkpoint: the one at env step 0 resumes it.
    train(cfg, tmp_path / "early", stop_after=40)
    assert run_status(tmp_path / "early", cfg) == "resumable"
    (tmp_path / "early" / "checkpoint.pt").unlink()  # a run of an older version, say
    assert run_status(tmp_path / "early", cfg) == "stale"
    (tmp_path / "part" / "checkpoint.pt").write_bytes(b"")  # unreadable
    assert run_status(tmp_path / "part", cfg) == "stale"


def test_a_run_saved_before_a_config_key_existed_is_still_finished(tmp_path: Path) -> None:
    """A section added to the config since (at its defaults) is the same experiment: the run
    is reused; a key the config no longer has makes it another one."""
    import torch
    from robometa.envs.safe_load import dump_yaml, parse_yaml

    from robometa.train import run_status

    cfg = tiny_config("cavia")
    train(cfg, tmp_path / "done")
    ckpt = tmp_path / "done" / "checkpoint.pt"

    def rewrite(edit) -> None:
        state = torch.load(ckpt, weights_only=True)
        saved = parse_yaml(state["config"], "config")
        edit(saved)
        state["config"] = dump_yaml(saved)
        torch.save(state, ckpt)

    rewrite(lambda saved: saved.pop("memory"))  # written before the memory section existed
    assert run_status(tmp_path / "done", cfg) == "finished"
    rewrite(lambda saved: saved["meta"].update(retired_key=1))
    assert run_status(tmp_path / "done", cfg) == "stale"


def test_steps_that_end_mid_round_run_the_whole_round_and_say_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A round collects 40 env steps here: --steps 100 runs 3 rounds, 120 steps, and the bar,
    the final metrics row, the checkpoint and the printed summary all say 120."""
    run = tmp_path / "run"
    sets = [*TINY, "algorithm=cavia", "adaptation.loss=td+model", "logging.progress=true"]
    args = ["train", str(CAVIA_YAML), "--out", str(run), "--steps", "100"]
    assert cli_main(args + [a for s in sets for a in ("--set", s)]) == 0
    out, err = capsys.readouterr()
    assert "cavia takes 40 env steps per iteration: this run ends at 120 env steps" in err
    frames = re.findall(r"(\d+)/(\d+) \[", err)
    assert frames and all(int(n) <= int(total) for n, total in frames)
    assert frames[-1] == ("120", "120")
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert state["algorithm"]["env_steps"] == 120 and state["finished"]
    assert [int(r["env_steps"]) for r in metrics(run)] == [40, 80, 120]
    assert f"{run}: 120 env steps" in out
    learner = MetaLearner(tiny_config("cavia"))
    try:
        assert learner.steps_per_iteration == 40
    finally:
        learner.close()


def test_meta_learner_needs_collect_steps() -> None:
    with pytest.raises(ValueError, match=r"meta\.collect_steps.*cavia.*>= 1.*--set meta"):
        tiny_config("cavia", "meta.collect_steps=0")
