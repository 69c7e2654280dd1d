"""The Q-network, used functionally: parameters are a dict of tensors.

One module serves every method. Its input is the normalized observation, optionally followed by
a context vector (CAVIA: the only thing adapted per task) and, for the privileged oracle, the
normalized dynamics parameters (appended to the observation by the env wrapper). It has two
heads on a shared body: Q-values per action, and a dynamics head that predicts the normalized
next-state change for every action (the ``model`` inner loss: no reward needed on the robot).

Normalization constants are buffers, fitted once before training and never adapted; they are
exported inside the ONNX graphs.

Acting once per environment step is faster in numpy than through torch's per-call overhead:
:meth:`QNetwork.numpy_actor` is the Q path as a numpy function (what
:func:`robometa.rollout.greedy_act_fn` uses; a network class without one is run through torch).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call

from robometa.deploy.collection import ActFn

Params = dict[str, Tensor]


@dataclass(frozen=True)
class NetworkSpec:
    """Shape of a Q-network (everything needed to rebuild it from a checkpoint)."""

    obs_dim: int
    n_actions: int
    hidden: tuple[int, ...] = (64, 64)
    context_dim: int = 0
    activation: str = "relu"

    def __post_init__(self) -> None:
        if self.obs_dim < 1 or self.n_actions < 1:
            raise ValueError(f"obs_dim and n_actions must be >= 1, got {self}")
        if not self.hidden or any(h < 1 for h in self.hidden):
            raise ValueError(
                f"hidden sizes must be a non-empty list of positive ints, got {self.hidden}"
            )
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation {self.activation!r} is not one of {sorted(ACTIVATIONS)}")


ACTIVATIONS = {"relu": nn.functional.relu, "tanh": torch.tanh, "elu": nn.functional.elu}
#: the same activations in numpy (:meth:`QNetwork.numpy_actor`)
NUMPY_ACTIVATIONS = {
    "relu": lambda x: np.maximum(x, 0.0),
    "tanh": np.tanh,
    "elu": lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0.0))),
}


class QNetwork(nn.Module):
    """MLP body with a Q head and a dynamics-model head (see module docstring)."""

    def __init__(self, spec: NetworkSpec) -> None:
        super().__init__()
        self.spec = spec
        sizes = [spec.obs_dim + spec.context_dim, *spec.hidden]
        self.body = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))
        self.q_head = nn.Linear(sizes[-1], spec.n_actions)
        self.model_head = nn.Linear(sizes[-1], spec.n_actions * spec.obs_dim)
        if spec.context_dim:
            self.context = nn.Parameter(torch.zeros(spec.context_dim))
        self.register_buffer("obs_mean", torch.zeros(spec.obs_dim))
        self.register_buffer("obs_std", torch.ones(spec.obs_dim))
        self.register_buffer("delta_std", torch.ones(spec.obs_dim))
        nn.init.uniform_(self.q_head.weight, -1e-3, 1e-3)
        nn.init.zeros_(self.q_head.bias)

    def features(self, obs: Tensor) -> Tensor:
        context = self.context.expand(obs.shape[0], -1) if self.spec.context_dim else None
        return self.body_features(obs, context)

    def body_features(self, obs: Tensor, condition: Tensor | None = None) -> Tensor:
        """The body on ``[(obs - mean) / std, condition]``: ``condition`` already has the
        observation's leading shape (``None``: the body reads the observation alone). Every
        family's network conditions its body through this."""
        x = (obs - self.obs_mean) / self.obs_std
        if condition is not None:
            x = torch.cat([x, condition], dim=-1)
        act = ACTIVATIONS[self.spec.activation]
        for layer in self.body:
            x = act(layer(x))
        return x

    def heads(self, h: Tensor, obs: Tensor, with_model: bool) -> tuple[Tensor, Tensor | None]:
        """The Q head on the body's output ``h`` and, with ``with_model``, the dynamics head's
        normalized state change ``obs.shape[:-1] + (n_actions, obs_dim)``."""
        if not with_model:
            return self.q_head(h), None
        delta = self.model_head(h).view(*obs.shape[:-1], self.spec.n_actions, self.spec.obs_dim)
        return self.q_head(h), delta

    def forward(self, obs: Tensor, with_model: bool = True) -> tuple[Tensor, Tensor | None]:
        """Q-values ``(B, A)`` and predicted normalized state change ``(B, A, obs_dim)``.

        ``with_model=False`` skips the dynamics head (acting and TD targets do not need it).
        """
        h = self.features(obs)
        if not with_model:
            return self.q_head(h), None
        delta = self.model_head(h).view(obs.shape[0], self.spec.n_actions, self.spec.obs_dim)
        return self.q_head(h), delta

    def set_normalization(self, obs_mean: Tensor, obs_std: Tensor, delta_std: Tensor) -> None:
        """Fix the input and model-target scales (from rollouts before training)."""
        floor = 1e-3
        self.obs_mean.copy_(obs_mean)
        self.obs_std.copy_(obs_std.clamp_min(floor))
        self.delta_std.copy_(delta_std.clamp_min(floor))

    def params(self) -> Params:
        """A detached copy of the parameters as a plain dict (the functional form)."""
        return {k: v.detach().clone() for k, v in self.named_parameters()}

    def numpy_actor(self, params: Params) -> ActFn | None:
        """The greedy single-observation actor of the Q path under ``params``, in numpy: the
        weights are copied once, and ``act(obs)`` equals ``q_values(self, params,
        obs).argmax()``. ``None`` (act through torch instead) for a subclass that changes
        :meth:`features` or :meth:`forward`, or whose body or Q head is not the plain linear
        layers this copy assumes: it would not be its own Q path."""
        cls = type(self)
        if cls.forward is not QNetwork.forward or cls.features is not QNetwork.features:
            return None
        linear = [*self.body, self.q_head]
        if len(self.body) != len(self.spec.hidden) or any(type(m) is not nn.Linear for m in linear):
            return None
        spec = self.spec

        def array(name: str, transpose: bool = False) -> np.ndarray:
            value = params[name].detach().numpy()
            return (value.T if transpose else value).copy()

        layers = [
            (array(f"body.{i}.weight", True), array(f"body.{i}.bias"))
            for i in range(len(spec.hidden))
        ]
        w_q, b_q = array("q_head.weight", True), array("q_head.bias")
        mean, std = self.obs_mean.numpy().copy(), self.obs_std.numpy().copy()
        context = array("context") if spec.context_dim else None
        activation = NUMPY_ACTIVATIONS[spec.activation]

        def act(obs: np.ndarray) -> int:
            x = (np.asarray(obs, np.float32) - mean) / std
            if context is not None:
                x = np.concatenate([x, context])
            for w, b in layers:
                x = activation(x @ w + b)
            return int(np.argmax(x @ w_q + b_q))

        return act


def q_values(net: QNetwork, params: Params, obs: Tensor) -> Tensor:
    """Q-values of ``obs`` under ``params`` (a full parameter dict)."""
    return functional_call(net, params, (obs, False))[0]


def q_and_delta(net: QNetwork, params: Params, obs: Tensor) -> tuple[Tensor, Tensor]:
    return functional_call(net, params, (obs,))


def head_names(net: nn.Module | Iterable[str]) -> tuple[str, ...]:
    """Parameters of the two output heads, Q and dynamics model: what ANIL adapts (its body
    stays the meta-learned one), in training, evaluation, export and ``random_policy``.
    ``net``: a network, or its parameter names (in their order)."""
    names = [n for n, _ in net.named_parameters()] if isinstance(net, nn.Module) else net
    return tuple(n for n in names if n.startswith(("q_head.", "model_head.")))
