"""The ``dr-history`` baseline (robometa.methods.dr_history): domain-randomized DQN whose
input is also its last ``memory.history`` transitions of the episode. The window (empty at
every episode start, the last k transitions in order), the replay's two windows and the TD
target's use of the next one, the numpy actor against torch, the registry (not a
meta-learner) and the config rules, a short run that trains, resumes exactly, saves, loads
and evaluates with its memory running, and the ``history`` bundle it exports (parity with
the torch-free runtime)."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from robometa.deploy import Adapter
from robometa.deploy.bundle import MANIFEST_FILE
from robometa.deploy.history import HistoryAdapter

import robometa.algorithms as algorithms
from robometa.adaptation import Batch, double_dqn_target
from robometa.bundle import export_bundle
from robometa.bundle_dr_history import check_parity, parity_rollout
from robometa.config import load_config
from robometa.evaluate import TaskSet, evaluate_method, with_support
from robometa.methods.dr_history import (
    DRHistoryActor,
    DRHistoryDQN,
    DRHistoryMethod,
    DRHistoryQNetwork,
    WindowBatch,
    dr_history_q,
    history_dim,
    history_features,
    untrained_policy,
    window_masks,
)
from robometa.methods.rma import ordered_window, window_row, window_width
from robometa.policy import Policy
from robometa.rollout import episode_return, make_env
from robometa.train import train

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "cartpole_dr-history.yaml"

SHORT = [
    "logging.progress=false",
    "logging.eval_every=0",
    "logging.tensorboard=false",
    "logging.checkpoint_every=400",
    "dqn.learning_starts=100",
    "dqn.buffer_size=2000",
]


def _transitions(n: int, seed: int = 0) -> list[tuple[np.ndarray, int, np.ndarray]]:
    """``n`` transitions of one episode (each starts where the previous one ended)."""
    rng = np.random.default_rng(seed)
    obs = rng.normal(0.0, 0.05, 4).astype(np.float32)
    out = []
    for _ in range(n):
        nxt = (obs + rng.normal(0.0, 0.02, 4)).astype(np.float32)
        out.append((obs, int(rng.integers(3)), nxt))
        obs = nxt
    return out


# ---------------------------------------------------------------------------- the window


@pytest.mark.parametrize("n_step", [1, 3])
def test_the_window_is_empty_at_episode_start_and_holds_the_last_k_transitions_in_order(
    n_step: int,
) -> None:
    cfg = load_config(CONFIG, [*SHORT, f"dqn.n_step={n_step}"], steps=400)
    learner = DRHistoryDQN(cfg)
    k, width, d = learner.length, learner.width, learner.net.spec.obs_dim
    assert k == cfg.memory.history == 4
    assert not learner.counts.any() and not learner.windows.any()
    seen: list[list[np.ndarray]] = [[] for _ in learner.envs]
    restarts = [0] * len(learner.envs)
    store, restart = learner._store_unless_rejected, learner._restart

    def recording_store(i, obs, action, reward, next_obs, terminated, info):
        store(i, obs, action, reward, next_obs, terminated, info)
        if not info.get("physics_error", False):
            seen[i].append(window_row(obs, action, next_obs, learner.n_actions))

    def recording_restart(i: int) -> np.ndarray:
        obs = restart(i)
        # the episode that just ended left a full history behind; the new one starts empty
        assert learner.counts[i] == 0 and not learner.windows[i].any()
        seen[i].clear()
        restarts[i] += 1
        return obs

    learner._store_unless_rejected = recording_store  # type: ignore[method-assign]
    learner._restart = recording_restart  # type: ignore[method-assign]
    for _ in range(60):  # 240 env steps: several CartPole episodes end on every env
        learner.iterate()
        for i, rows in enumerate(seen):
            window, mask = ordered_window(rows, k, width)
            assert np.array_equal(learner.windows[i], window.numpy())
            assert np.array_equal(learner.masks()[i], mask.numpy())
    assert min(restarts) >= 1
    buf = learner.buffer
    n = len(buf)
    masks = window_masks(buf.count[:n], k)
    # every stored window is what the action was taken with: its newest row ends at obs
    has = buf.count[:n] > 0
    np.testing.assert_allclose(
        buf.window[:n, -1, :d][has] + buf.window[:n, -1, -d:][has], buf.obs[:n][has], atol=1e-6
    )
    # the next window is the one before next_obs (n_step transitions later)
    np.testing.assert_allclose(
        buf.next_window[:n, -1, :d] + buf.next_window[:n, -1, -d:], buf.next_obs[:n], atol=1e-6
    )
    alive = buf.terminated[:n] == 0
    expected = np.minimum(buf.count[:n] + n_step, k)
    assert np.array_equal(buf.next_count[:n][alive], expected[alive])
    if n_step == 1:  # consecutive transitions of one env: the next window is the next one's
        assert np.array_equal(buf.next_window[0], buf.window[len(learner.envs)])
    assert masks[buf.count[:n] == 0].sum() == 0
    learner.close()


def test_the_actor_is_torch_clears_at_every_episode_start_and_masked_rows_do_not_count() -> None:
    policy = untrained_policy(seed=1, history=4)
    net, params = policy.net, policy.params
    actor = DRHistoryActor(net, params)
    steps = _transitions(7, seed=2)
    probe = np.stack([o for o, _, _ in steps])
    assert not actor.z.any()  # the empty window's features: all zero
    rows, last = [], actor.z
    for o, a, o2 in steps:
        assert actor(o) in (0, 1, 2)
        actor.observe(o, a, 1.0, o2, False)
        rows.append(window_row(o, a, o2, 3))
        window, mask = ordered_window(rows, 4, window_width(net.spec))
        with torch.no_grad():
            z = history_features(net, window, mask)
            q = dr_history_q(net, params, torch.from_numpy(probe), z).numpy()
        assert z.shape == (history_dim(4, 3, 4),) == (48,)
        assert np.abs(actor.z - z.numpy()).max() <= 1e-5
        assert np.abs(np.stack([actor.q_values(p) for p in probe]) - q).max() <= 1e-5
        assert np.abs(actor.z - last).max() > 1e-4  # the window moves every step
        last = actor.z
    assert np.array_equal(actor.window[0][0].numpy(), rows[-4])  # oldest of the last 4
    # garbage in the padding is masked out
    window, mask = ordered_window(rows[:2], 4, window_width(net.spec))
    garbage = window.clone()
    garbage[:2] = 100.0 * torch.randn(2, window.shape[1])
    assert torch.equal(history_features(net, window, mask), history_features(net, garbage, mask))
    # continuing the episode keeps the window; a terminal step or a new episode clears it
    o, a, o2 = steps[-1][2], 0, steps[-1][2] + 0.01
    actor(o)
    assert actor.z.any()
    actor.observe(o, a, 1.0, o2, True)
    assert not actor.z.any()
    actor.observe(*_transitions(1, seed=5)[0][:2], 1.0, o2, False)
    assert actor.z.any()
    actor(steps[0][0])  # not the last next_obs: a reset observation
    assert not actor.z.any()


def test_the_td_target_reads_the_next_window() -> None:
    cfg = load_config(CONFIG, SHORT, steps=400)
    learner = DRHistoryDQN(cfg)
    net, k, w = learner.net, learner.length, learner.width
    gen = torch.Generator().manual_seed(0)
    n = 16
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen))
    learner.target_net.load_state_dict(dict(net.named_parameters()), strict=False)
    with torch.no_grad():
        for p in learner.target_net.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    batch = Batch(
        torch.randn(n, 4, generator=gen),
        torch.randint(0, 3, (n,), generator=gen),
        torch.randn(n, generator=gen),
        torch.randn(n, 4, generator=gen),
        (torch.arange(n) % 5 == 0).float(),
    )
    window = torch.randn(n, k, w, generator=gen)
    next_window = torch.randn(n, k, w, generator=gen)
    mask = torch.from_numpy(window_masks(np.arange(n) % (k + 1), k))
    next_mask = torch.from_numpy(window_masks(np.minimum(np.arange(n) % (k + 1) + 1, k), k))
    wb = WindowBatch(batch, window, mask, next_window, next_mask)
    with torch.no_grad():
        loss = learner.td_loss(wb)
        z, z_next = net.history_z(window, mask), net.history_z(next_window, next_mask)
        q_sa = net(batch.obs, False, z)[0].gather(1, batch.action[:, None])[:, 0]
        target = double_dqn_target(
            net(batch.next_obs, False, z_next)[0],
            learner.target_net(batch.next_obs, False, z_next)[0],
            batch.reward,
            batch.terminated,
            cfg.dqn.gamma,
        )
        expected = torch.nn.functional.huber_loss(q_sa, target, delta=cfg.dqn.huber_delta)
        stale = learner.td_loss(wb._replace(next_window=window, next_mask=mask))
    assert torch.allclose(loss, expected, atol=1e-6)
    assert abs(float(stale) - float(loss)) > 1e-4  # the next window matters
    learner.close()


# ---------------------------------------------------------------------------- registry, config


def test_the_registry_lists_it_as_a_baseline_that_does_not_adapt() -> None:
    spec = algorithms.get("dr-history")
    assert (spec.family, spec.adapts, spec.fine_tunes, spec.privileged, spec.bundle_kind) == (
        "history",
        False,
        False,
        False,
        "history",
    )
    assert "dr-history" in algorithms.builtin_names()
    assert "dr-history" not in algorithms.adapting()  # never a meta-learner in a claim check
    assert spec.label("train") == "dr-history"
    assert spec.load() is DRHistoryDQN and DRHistoryDQN.network_class is DRHistoryQNetwork


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("network.context_dim=3", r"'network.context_dim': dr-history conditions Q .* got 3"),
        ("memory.history=0", r"memory.history.*0"),
        ("memory.history=1001", r"memory.history.*1001"),
    ],
)
def test_config_rules_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_config(CONFIG, [override])


def test_a_replay_too_big_for_memory_is_refused_naming_the_keys() -> None:
    cfg = load_config(CONFIG, ["dqn.buffer_size=10000000", "memory.history=1000"])
    with pytest.raises(ValueError, match=r"'dqn.buffer_size' \(10000000\) and 'memory.history'"):
        DRHistoryDQN(cfg)


@pytest.mark.parametrize("family", ["cartpole", "diffdrive"])
def test_the_shipped_configs_have_the_dr_budget_and_dqn_settings(family: str) -> None:
    cfg = load_config(ROOT / "configs" / f"{family}_dr-history.yaml")
    dr = load_config(ROOT / "configs" / f"{family}_dr.yaml")
    assert cfg.algorithm == "dr-history" and dr.algorithm == "dqn"
    assert cfg.dqn == dr.dqn and cfg.env == dr.env and cfg.network == dr.network
    assert cfg.logging == dr.logging and cfg.seed == dr.seed and cfg.threads == dr.threads
    assert cfg.adaptation.support_size == dr.adaptation.support_size
    assert cfg.memory.history in (4, 8)


# ---------------------------------------------------------------------------- a short run


def test_a_short_run_trains_resumes_exactly_saves_loads_and_evaluates_with_memory(
    tmp_path: Path,
) -> None:
    cfg = load_config(CONFIG, SHORT, steps=1200)
    policy = train(cfg, tmp_path / "run")
    assert policy.adapt_steps == 0 and policy.lrs == {} and not policy.privileged
    start = DRHistoryDQN(cfg)
    assert (start.net.body[0].weight - policy.params["body.0.weight"]).abs().max() > 1e-4
    start.close()
    # killed past the checkpoint at 800, then resumed: the uninterrupted parameters
    train(cfg, tmp_path / "resumed", stop_after=1000)
    resumed = train(None, tmp_path / "resumed", resume=True)  # type: ignore[arg-type]
    assert all(torch.equal(resumed.params[k], v) for k, v in policy.params.items())
    loaded = Policy.load(tmp_path / "run")
    assert type(loaded.net) is DRHistoryQNetwork and loaded.net.spec == policy.net.spec
    assert all(torch.equal(loaded.params[k], v) for k, v in policy.params.items())
    # the harness's method: memory running, fresh per robot, no fine-tuning
    method = DRHistoryDQN.evaluation_method(loaded, "dr-history", 0.3, lrs={})
    assert isinstance(method, DRHistoryMethod) and not method.privileged
    assert with_support(method, 10).support_size == 10
    with pytest.raises(ValueError, match="does not adapt and is not fine-tuned"):
        DRHistoryDQN.evaluation_method(loaded, "x", 0.3, lrs={"body.0.weight": torch.tensor(1.0)})
    env = make_env(loaded.env_id)
    tasks = env.unwrapped.sample_tasks(2, seed=0, split="test")
    env.close()
    res = evaluate_method(method, [TaskSet("t", tasks)], [0], episodes=2)
    assert np.array(res["t"]).shape == (2, 1) and np.all(np.array(res["t"]) > 0)
    # what an episode of the harness sees: z moves along the episode, and every episode
    # (the second after a time-limit truncation, without a terminal flag) starts empty
    zs: list[np.ndarray] = []

    class Recording(DRHistoryActor):
        def __call__(self, obs: np.ndarray) -> int:
            action = super().__call__(obs)
            zs.append(self.z)
            return action

    actor = Recording(loaded.net, loaded.params)
    short = make_env(loaded.env_id, max_episode_steps=12)
    lengths = []
    for e in range(2):
        before = len(zs)
        episode_return(short, actor, tasks[0], seed=e)
        lengths.append(len(zs) - before)
    short.close()
    first, second = zs[: lengths[0]], zs[lengths[0] :]
    for episode in (first, second):
        assert not episode[0].any()  # empty at the episode's start
        assert all(np.abs(a - b).max() > 1e-6 for a, b in itertools.pairwise(episode))
    assert lengths[0] == 12  # truncated (no terminal flag), and still reset before episode 2


# ---------------------------------------------------------------------------- the bundle


def test_the_export_is_a_history_bundle_the_runtime_serves_within_parity(tmp_path: Path) -> None:
    policy = untrained_policy(seed=3, history=4, support_size=40)
    bundle = export_bundle(policy, tmp_path / "bundle")  # runs check_parity before the swap
    manifest = json.loads((bundle / MANIFEST_FILE).read_text())
    assert manifest["kind"] == "history" and manifest["algorithm"] == "dr-history"
    section = manifest["history"]
    assert (section["length"], section["width"], section["context_dim"]) == (4, 11, 48)
    adapter = Adapter.load(bundle)
    assert type(adapter) is HistoryAdapter and not adapter.context.any()
    assert [i.name for i in adapter._history.get_inputs()] == ["window", "mask"]
    report = check_parity(policy, bundle, seed=4)
    assert max(report.values()) <= 1e-5, report
    # Q over a rollout: the runtime against torch on the actor's windows
    rollout = parity_rollout(policy, 12, seed=7)
    actor = DRHistoryActor(policy.net, policy.params)
    probe = np.stack([t[0] for t in rollout[:5]])
    for t in rollout:
        assert adapter.observe(*t)
        actor.observe(*t)
        with torch.no_grad():
            q = dr_history_q(policy.net, policy.params, torch.from_numpy(probe), None).numpy()
        runtime = adapter.q_values(probe)
        assert np.abs(runtime - np.stack([actor.q_values(p) for p in probe])).max() <= 1e-5
        assert np.abs(runtime - q).max() > 1e-4  # the window changes Q (vs the empty one)
    # a different k is a different bundle shape
    other = replace(policy.net.spec, history=2, context_dim=history_dim(4, 3, 2))
    assert DRHistoryQNetwork(other).body[0].in_features == 4 + 24
