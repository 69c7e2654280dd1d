"""``cavia-encoder``: CAVIA whose context starts at the encoder's guess instead of zero.

Adapting a robot, from the support set ``S``:

    context_0 = encode(S)                         (the context family's encoder, mean embedding)
    context_{i+1} = context_i - adaptation.lr * d inner_loss(context_i; S) / d context

``adaptation.steps`` refinement steps of CAVIA's inner loss (``model`` in the shipped
configs: no reward needed) on the context alone; the network's other parameters never adapt.
Step 0 is the encoder alone, so an evaluation at ``--steps 0,k`` asks whether the
refinement adds anything to the inference.

Meta-training is the gradient family's (:mod:`robometa.methods.gradient`, CAVIA's settings:
second order unless ``meta.first_order``): the outer loss of the refined context reaches the
encoder through ``context_0``, so the encoder learns a guess the steps refine well. Acting
while collecting the support uses the zero context (the meta-parameters), as CAVIA's does.

On the device (kind ``cavia-encoder``, :mod:`robometa.deploy.cavia_encoder`) ``encoder.onnx``
gives ``context_0`` from the buffer and CAVIA's ``adapt.onnx`` refines it under the gradient
kind's guard.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from robometa.adaptation import Batch, adapt_step, batched_adapt_step
from robometa.evaluate import PolicyMethod
from robometa.methods.base import refuse_learning_rates
from robometa.methods.context import ENCODER_PREFIX, encode
from robometa.methods.gradient import MetaLearner, Variant
from robometa.methods.taskrate import encoder_layers
from robometa.networks import NetworkSpec, Params, QNetwork
from robometa.policy import Policy
from robometa.rollout import ActFn


class CaviaEncoderNetwork(QNetwork):
    """CAVIA's Q-network (a ``context`` input, its forward :class:`QNetwork`'s) with the
    context family's encoder beside it (``encoder.<i>``: support -> ``context_dim``)."""

    def __init__(self, spec: NetworkSpec) -> None:
        if spec.context_dim < 1:
            raise ValueError(
                f"cavia-encoder needs a context vector (network.context_dim >= 1), got {spec}"
            )
        super().__init__(spec)
        self.encoder = encoder_layers(spec, spec.context_dim)


def initial_context(net: CaviaEncoderNetwork, params: Params, support: Batch) -> Params:
    """``params`` with the context set to the encoder's of ``support`` (zeros for an empty
    one: CAVIA's own start); a task axis in ``support`` gives one context per task."""
    return {**params, "context": encode(net, params, support)}


class CaviaEncoderLearner(MetaLearner):
    """CAVIA's harness with the encoder's initial context (module docstring)."""

    network_class: ClassVar[type[QNetwork]] = CaviaEncoderNetwork
    variants: ClassVar[dict[str, Variant]] = {"cavia-encoder": Variant(adapts="context")}
    backends: ClassVar[tuple[str, ...]] = ("local",)
    bundle_writer: ClassVar[str] = "robometa.bundle_cavia_encoder"

    net: CaviaEncoderNetwork

    def _adapt(self, params: Params, batch: Batch, first_order: bool) -> Params:
        """``context = encode(batch)``, then ``adaptation.steps`` steps on it."""
        step = batched_adapt_step if batch.obs.dim() == 3 else adapt_step
        params = initial_context(self.net, params, batch)
        for _ in range(self.cfg.adaptation.steps):
            params, _ = step(self.net, params, self.lrs, batch, self.inner, first_order=first_order)
        return params

    @classmethod
    def evaluation_method(
        cls,
        policy: Policy,
        name: str,
        support_epsilon: float,
        lrs: Mapping[str, Tensor] | None = None,
    ) -> PolicyMethod:
        """:class:`CaviaEncoderMethod`: ``k = 0`` is the encoder's context, ``k`` steps
        refine it (``lrs`` ``{}``: evaluated as it is, zero context)."""
        refuse_learning_rates(
            policy, lrs, "adapts its context with its own learning rate; it takes no others"
        )
        return CaviaEncoderMethod(name, policy, support_epsilon, lrs=None if lrs is None else {})


def refined(policy: Policy, support: Batch, steps: int) -> tuple[Params, list[float]]:
    """The encoder's context of ``support`` after ``steps`` refinement steps (no outer
    graph), and the inner loss before each step."""
    losses = []
    with torch.no_grad():
        params = initial_context(policy.net, policy.params, support)
        for _ in range(steps):
            params, loss = adapt_step(policy.net, params, policy.lrs, support, policy.inner)
            losses.append(float(loss))
    return params, losses


@dataclass
class CaviaEncoderMethod(PolicyMethod):
    """A trained cavia-encoder policy in the evaluation harness: the initial actor acts with
    the zero context; ``k = 0`` of the curve with the encoder's, ``k`` with it refined
    ``k`` steps (``lrs`` ``{}``: every ``k`` acts with the zero context)."""

    def adapted_actors(self, support: Batch, steps: Sequence[int]) -> list[ActFn]:
        if self.lrs is not None and not self.lrs:
            return [self.initial_actor() for _ in steps]
        net, lrs = self.policy.net, self.policy.lrs

        def step(params: Params, _: int) -> Params:
            return adapt_step(net, params, lrs, support, self.policy.inner)[0]

        with torch.no_grad():
            params = initial_context(net, self.policy.params, support)
            return self.stepped_actors(params, steps, step)


def untrained_policy(
    env_id: str = "robometa/CartPole-v0",
    *,
    hidden: tuple[int, ...] = (16, 16),
    context_dim: int = 3,
    steps: int = 3,
    lr: float = 0.5,
    support_size: int = 64,
    seed: int = 0,
    inner: str = "model",
) -> Policy:
    """A randomly initialized cavia-encoder policy (for export and runtime tests)."""
    from robometa.adaptation import InnerLoss
    from robometa.testing import random_policy

    shaped = random_policy("dqn", env_id=env_id, hidden=hidden, seed=seed)
    s = shaped.net.spec
    torch.manual_seed(seed)
    net = CaviaEncoderNetwork(NetworkSpec(s.obs_dim, s.n_actions, hidden, context_dim))
    with torch.no_grad():
        net.set_normalization(shaped.net.obs_mean, shaped.net.obs_std, shaped.net.delta_std)
        net.q_head.weight.normal_(0.0, 1.0)
    return Policy(
        algorithm="cavia-encoder",
        env_id=env_id,
        net=net,
        params=net.params(),
        lrs={"context": torch.tensor(lr)},
        inner=InnerLoss(inner),
        adapt_steps=steps,
        support_size=support_size,
        config={"adaptation": {"support_epsilon": 0.3, "lr": lr}, "random_policy": True},
    )


__all__ = [
    "ENCODER_PREFIX",
    "CaviaEncoderLearner",
    "CaviaEncoderMethod",
    "CaviaEncoderNetwork",
    "initial_context",
    "refined",
    "untrained_policy",
]
