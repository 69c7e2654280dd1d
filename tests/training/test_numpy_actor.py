"""The numpy actor used for collection and evaluation agrees with the torch Q-network."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robometa.networks import NetworkSpec, QNetwork, q_values
from robometa.rollout import greedy_act_fn


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
