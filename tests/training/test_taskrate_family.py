"""``taskrate``: generated inner learning rates (positive, bounded, a function of the support),
its config rules, a tiny run that trains, saves, loads and evaluates, and (slow) a short
pinned run whose adaptation beats no adaptation on fixed training robots."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import robometa.algorithms as algorithms
from robometa.adaptation import Batch
from robometa.config import load_config
from robometa.evaluate import run_evaluation
from robometa.methods.taskrate import (
    RATE_RANGE,
    TaskRateLearner,
    TaskRateMethod,
    adapt_with_rates,
    generated_rates,
    rate_layers,
    untrained_policy,
)
from robometa.policy import Policy
from robometa.train import train

ROOT = Path(__file__).resolve().parents[2]
YAML = ROOT / "configs" / "cartpole_taskrate.yaml"
TINY = [
    "dqn.total_steps=120",
    "logging.progress=false",
    "logging.tensorboard=false",
    "logging.log_every=40",
    "logging.checkpoint_every=80",
    "logging.eval_every=0",
    "network.hidden=[16, 16]",
    "network.context_dim=4",
    "meta.task_pool=4",
    "meta.meta_batch=2",
    "meta.collect_steps=10",
    "meta.updates_per_collect=2",
    "meta.query_batch=16",
    "meta.target_update_interval=3",
    "adaptation.support_size=20",
    "adaptation.steps=2",
]


def support(n: int, seed: int) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    obs = 0.05 * torch.randn(n, 4, generator=gen)
    return Batch(
        obs,
        torch.randint(0, 3, (n,), generator=gen),
        torch.ones(n),
        obs + 0.02 * torch.randn(n, 4, generator=gen) * (1 + seed),
        torch.zeros(n),
    )


def test_taskrate_is_registered_as_a_gradient_method_with_its_own_kind() -> None:
    spec = algorithms.get("taskrate")
    assert (spec.family, spec.adapts, spec.bundle_kind) == ("gradient", True, "taskrate")
    assert spec.load() is TaskRateLearner


def test_generated_rates_are_positive_bounded_and_one_per_layer_and_step() -> None:
    policy = untrained_policy(steps=3, lr=0.01)
    with torch.no_grad():
        rates = generated_rates(policy.net, policy.params, policy.lrs, support(50, 0))
    assert rates.shape == (3, len(rate_layers(list(policy.params)))) == (3, 4)
    assert bool((rates >= 0.01 / RATE_RANGE).all()) and bool((rates <= 0.01 * RATE_RANGE).all())
    # a rate network driven to saturation still stays inside the bounds (and positive)
    params = dict(policy.params)
    params["rate.1.bias"] = torch.full_like(params["rate.1.bias"], 1e6)
    params["rate.1.bias"][::2] = -1e6
    with torch.no_grad():
        saturated = generated_rates(policy.net, params, policy.lrs, support(50, 0))
    assert torch.isfinite(saturated).all()
    assert float(saturated.max()) == pytest.approx(0.01 * RATE_RANGE, rel=1e-5)
    assert float(saturated.min()) == pytest.approx(0.01 / RATE_RANGE, rel=1e-5)


def test_changing_the_support_changes_the_rates() -> None:
    policy = untrained_policy(steps=3)
    with torch.no_grad():
        a = generated_rates(policy.net, policy.params, policy.lrs, support(50, 0))
        b = generated_rates(policy.net, policy.params, policy.lrs, support(50, 3))
        again = generated_rates(policy.net, policy.params, policy.lrs, support(50, 0))
    assert float((a - b).abs().max()) > 1e-4
    assert torch.equal(a, again)
    with pytest.raises(ValueError, match="support.*empty"):
        generated_rates(policy.net, policy.params, policy.lrs, support(0, 0))


def test_adapting_uses_the_generated_rates_and_only_the_q_network_changes() -> None:
    policy = untrained_policy(steps=2, lr=0.01)
    params, rates, losses = adapt_with_rates(policy, support(40, 1), 2)
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    changed = sorted(k for k in params if not torch.equal(params[k], policy.params[k]))
    assert changed == sorted(policy.lrs)
    assert not any(k.startswith(("encoder.", "rate.")) for k in changed)
    # one step of layer q_head.bias moved by exactly its generated rate times the gradient
    from robometa.adaptation import adapt_step

    lrs = {
        k: rates[0, rate_layers(list(policy.params)).index(k.rsplit(".", 1)[0])] for k in policy.lrs
    }
    one, _ = adapt_step(policy.net, policy.params, lrs, support(40, 1), policy.inner)
    first, _, _ = adapt_with_rates(policy, support(40, 1), 1)
    for k in policy.lrs:
        assert torch.allclose(one[k], first[k], atol=0, rtol=0), k


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("network.context_dim=0", "network.context_dim"),
        ("adaptation.steps=0", "adaptation.steps"),
        ("meta.learn_lrs=true", "meta.learn_lrs"),
        ("meta.collect_steps=0", "meta.collect_steps"),
    ],
)
def test_config_errors_name_the_key_and_the_file(override: str, key: str) -> None:
    with pytest.raises(ValueError, match=rf"'{key}'.*taskrate.*cartpole_taskrate"):
        load_config(YAML, [*TINY, override])


def test_a_tiny_run_trains_the_rate_network_saves_loads_and_evaluates(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    cfg = load_config(YAML, TINY)
    learner = TaskRateLearner(cfg)
    try:
        start = {k: v.detach().clone() for k, v in learner.meta_params.items()}
        assert torch.equal(start["rate.1.weight"], torch.zeros_like(start["rate.1.weight"]))
        learner.iterate()
        moved = {k for k, v in learner.meta_params.items() if not torch.equal(v, start[k])}
    finally:
        learner.close()
    # the outer loss reaches the rate network through theta' = theta - lr(z) g (first order)
    assert {"rate.1.weight", "rate.1.bias", "q_head.weight"} <= moved
    policy = train(cfg, tmp_path / "run")
    loaded = Policy.load(tmp_path / "run")
    assert type(loaded.net).__name__ == "TaskRateNetwork"
    assert loaded.net.spec.summary_dim == 4 and loaded.net.spec.rate_steps == 2
    for k, v in policy.params.items():
        assert torch.equal(v, loaded.params[k]), k
    assert all(float(v) == pytest.approx(cfg.adaptation.lr) for v in loaded.lrs.values())
    method = TaskRateLearner.evaluation_method(loaded, "taskrate", 0.3)
    assert isinstance(method, TaskRateMethod)
    report = run_evaluation(
        [tmp_path / "run"],
        n_tasks=2,
        episodes=1,
        steps=[0, 2],
        out=tmp_path / "eval",
        show_progress=False,
        supports=[10, 20],
    )
    rows = {(r["group"], r["support"], r["steps"]) for r in report["summary"]}
    assert ("id", 10, 0) in rows and ("ood", 20, 2) in rows
    saved = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert all(math.isfinite(r["return"]) for r in saved["summary"])
    with pytest.raises(ValueError, match="generates its inner learning rates"):
        TaskRateLearner.evaluation_method(loaded, "x", 0.3, lrs={"q_head.bias": torch.tensor(1.0)})
