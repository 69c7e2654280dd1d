"""Building blocks for tests, benchmarks and examples that need a policy without training.

``random_policy(method)`` is a randomly initialized :class:`~robometa.policy.Policy` shaped like
a trained run of ``method``: the parameters it adapts and its learning rates. Export checks,
the deploy tests and the latency and robustness benchmarks use it.
"""

from __future__ import annotations

import torch

from robometa.adaptation import InnerLoss
from robometa.networks import NetworkSpec, QNetwork, head_names
from robometa.policy import Policy

#: method shapes ``random_policy`` builds: which parameters adapt, and how.
RANDOM_POLICY_METHODS: tuple[str, ...] = ("maml", "anil", "cavia", "metasgd", "dqn")


def random_policy(
    method: str = "cavia",
    inner: str = "td",
    *,
    env_id: str = "robometa/CartPole-v0",
    hidden: tuple[int, ...] = (32, 32),
    privileged: bool = False,
    seed: int = 0,
) -> Policy:
    """A randomly initialized policy shaped like ``method``'s (no training needed).

    For export checks, tests and benchmarks without a trained run: ``maml`` adapts every
    parameter, ``anil`` the two output heads (Q and dynamics, as ANIL training adapts), ``cavia`` a 2-d context vector, ``metasgd`` every parameter
    with per-parameter learning rates, ``dqn`` nothing (the bundle then fine-tunes). The Q head
    is scaled up so greedy actions differ between observations.
    """
    import gymnasium as gym

    import robometa.envs  # registers the robot families

    if method not in RANDOM_POLICY_METHODS:
        raise ValueError(f"method {method!r} is not one of {RANDOM_POLICY_METHODS}")
    if env_id not in robometa.envs.FAMILIES:  # gymnasium.make would import a "module:" prefix
        raise ValueError(
            f"env_id {env_id!r} is not a registered robometa family "
            f"(one of {', '.join(robometa.envs.FAMILIES)})"
        )
    env = gym.make(env_id)
    try:
        obs_dim = env.observation_space.shape[0]
        n_actions = int(env.action_space.n)
        if privileged:
            obs_dim += len(env.unwrapped.dynamics_space)
        high = torch.as_tensor(env.observation_space.high, dtype=torch.float32)
    finally:
        env.close()
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = QNetwork(
        NetworkSpec(obs_dim, n_actions, hidden, context_dim=2 if method == "cavia" else 0)
    )
    scale = torch.ones(obs_dim)
    scale[: len(high)] = high.clamp(max=10.0) / 40  # typical magnitudes are ~1/40 of the bounds
    net.set_normalization(
        0.1 * scale * torch.randn(obs_dim, generator=gen),
        scale,
        0.1 * scale,
    )
    with torch.no_grad():
        net.q_head.weight.normal_(0.0, 1.0, generator=gen)
        if method == "cavia":
            net.context.normal_(0.0, 0.5, generator=gen)
    params = net.params()
    if method == "maml":
        lrs = {k: torch.tensor(0.01) for k in params}
    elif method == "anil":
        lrs = {k: torch.tensor(0.05) for k in head_names(net)}  # both heads, as training
    elif method == "cavia":
        lrs = {"context": torch.tensor(0.5)}
    elif method == "metasgd":
        lrs = {k: 0.02 * torch.rand(v.shape, generator=gen) for k, v in params.items()}
    else:
        lrs = {}
    return Policy(
        algorithm=method,
        env_id=env_id,
        net=net,
        params=params,
        lrs=lrs,
        inner=InnerLoss(kind=inner),
        adapt_steps=3,
        support_size=64,
        privileged=privileged,
        config={"method": method, "inner": inner, "seed": seed, "random_policy": True},
    )
