"""The numpy actor used for collection and evaluation agrees with the torch Q-network."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robometa.networks import NetworkSpec, QNetwork, q_values
from robometa.rollout import greedy_act_fn, torch_act_fn


@pytest.mark.parametrize(("activation", "context_dim"), [("relu", 0), ("tanh", 3), ("elu", 2)])
def test_numpy_actor_matches_torch_greedy_actions(activation, context_dim):
    torch.manual_seed(0)
    net = QNetwork(NetworkSpec(5, 4, (32, 16), context_dim, activation))
    torch.nn.init.normal_(net.q_head.weight)
    with torch.no_grad():
        net.set_normalization(torch.randn(5), torch.rand(5) + 0.5, torch.ones(5))
    params = net.params()
    if context_dim:
        params["context"] = torch.randn(context_dim)
    act = greedy_act_fn(net, params)
    obs = np.random.default_rng(0).normal(size=(300, 5)).astype(np.float32)
    expected = q_values(net, params, torch.from_numpy(obs)).argmax(1).numpy()
    assert [act(o) for o in obs] == expected.tolist()
    assert len(set(expected.tolist())) > 1, "degenerate check: every action identical"


class TorchOnlyQNetwork(QNetwork):
    """A family's network without a numpy actor."""

    numpy_actor = None


class NegatedQNetwork(QNetwork):
    """A family's network whose Q path differs from the builtin one (Q negated): the numpy
    copy of the builtin Q path must not stand in for it."""

    def forward(self, obs: torch.Tensor, with_model: bool = True) -> tuple:
        q, delta = super().forward(obs, with_model)
        return -q, delta


def _net(cls: type[QNetwork], context_dim: int = 0) -> tuple[QNetwork, dict]:
    """A small network of ``cls`` whose greedy actions differ between observations."""
    torch.manual_seed(1)
    net = cls(NetworkSpec(5, 4, (16,), context_dim, "tanh"))
    torch.nn.init.normal_(net.q_head.weight)
    with torch.no_grad():
        net.set_normalization(torch.randn(5), torch.rand(5) + 0.5, torch.ones(5))
    params = net.params()
    if context_dim:
        params["context"] = torch.randn(context_dim)
    return net, params


@pytest.mark.parametrize("cls", [TorchOnlyQNetwork, NegatedQNetwork])
def test_a_network_without_a_numpy_actor_acts_through_torch(cls: type[QNetwork]) -> None:
    net, params = _net(cls, context_dim=2)
    assert net.numpy_actor is None or net.numpy_actor(params) is None
    act = greedy_act_fn(net, params)
    obs = np.random.default_rng(1).normal(size=(200, 5)).astype(np.float32)
    expected = q_values(net, params, torch.from_numpy(obs)).argmax(1).numpy()
    assert [act(o) for o in obs] == expected.tolist()
    assert len(set(expected.tolist())) > 1, "degenerate check: every action identical"
    if cls is NegatedQNetwork:  # the builtin Q path would pick other actions
        plain = QNetwork(net.spec)
        plain.load_state_dict(net.state_dict())
        builtin = q_values(plain, params, torch.from_numpy(obs))
        assert builtin.argmax(1).tolist() != expected.tolist()


def test_the_builtin_network_has_a_numpy_actor() -> None:
    net, params = _net(QNetwork)
    assert callable(net.numpy_actor(params))
    assert torch_act_fn(net, params)(np.zeros(5, np.float32)) == greedy_act_fn(net, params)(
        np.zeros(5, np.float32)
    )
