"""The one adaptation step: meta-training, evaluation and the exported ``adapt.onnx`` all run it.

``adapt_step(net, params, lrs, batch, inner)`` takes one gradient step of the configured inner
loss on the parameters named in ``lrs`` (each with its own learning rate tensor: a scalar, or a
tensor of the parameter's shape for Meta-SGD) and leaves the others untouched. Which parameters
are adapted is therefore just the keys of ``lrs``: every parameter (MAML), the Q head (ANIL), the
context vector (CAVIA).

Inner losses:

* ``td``: Huber loss of Q(s, a) against the Double-DQN target
  ``r + gamma * (1 - terminated) * Q'(s', argmax_a Q(s', a))``. Online and target networks are
  both the step's *input* parameters with gradients stopped (there is no separate target copy on
  the robot); the target moves once per step, like a fitted-Q iteration.
* ``model``: mean squared error of the dynamics head's predicted normalized state change for the
  taken action against ``(s' - s) / delta_std``. It needs no reward, and it is informative about
  the dynamics (a reversed motor flips the sign of the predicted velocity change).
* ``td+model``: their sum, the model term weighted by ``model_weight``.

There is no Python-side randomness and no data-dependent control flow, so the step traces with
``make_fx`` and exports to ONNX.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from robometa.networks import Params, QNetwork, q_and_delta

InnerLossKind = Literal["td", "model", "td+model"]
INNER_LOSSES: tuple[str, ...] = ("td", "model", "td+model")


class Batch(NamedTuple):
    """A batch of transitions as tensors (the order is the ONNX input order)."""

    obs: Tensor  # (B, obs_dim) float32
    action: Tensor  # (B,) int64
    reward: Tensor  # (B,) float32
    next_obs: Tensor  # (B, obs_dim) float32
    terminated: Tensor  # (B,) float32, 1.0 where the episode really ended


@dataclass(frozen=True)
class InnerLoss:
    """Settings of the inner loss (what ``adapt_step`` minimizes)."""

    kind: InnerLossKind = "td"
    gamma: float = 0.99
    huber_delta: float = 1.0
    model_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in INNER_LOSSES:
            raise ValueError(f"inner loss {self.kind!r} is not one of {INNER_LOSSES}")


def double_dqn_target(
    q_next_online: Tensor,
    q_next_target: Tensor,
    reward: Tensor,
    terminated: Tensor,
    gamma: float | Tensor,
) -> Tensor:
    """``r + gamma (1 - d) Q_target(s', argmax_a Q_online(s', a))``."""
    best = q_next_online.argmax(dim=1, keepdim=True)
    return reward + gamma * (1.0 - terminated) * q_next_target.gather(1, best).squeeze(1)


def td_loss(
    net: QNetwork,
    params: Params,
    target_params: Params,
    batch: Batch,
    gamma: float | Tensor,
    huber_delta: float = 1.0,
) -> Tensor:
    """Huber loss of Q(s, a) against the Double-DQN target (targets carry no gradient)."""
    q = q_and_delta(net, params, batch.obs)[0]
    q_sa = q.gather(1, batch.action.unsqueeze(1)).squeeze(1)
    with torch.no_grad():
        online_next = q_and_delta(net, params, batch.next_obs)[0]
        target_next = q_and_delta(net, target_params, batch.next_obs)[0]
    target = double_dqn_target(
        online_next.detach(), target_next.detach(), batch.reward, batch.terminated, gamma
    )
    return torch.nn.functional.huber_loss(q_sa, target.detach(), delta=huber_delta)


def model_loss(net: QNetwork, params: Params, batch: Batch) -> Tensor:
    """MSE of the predicted normalized state change for the taken action."""
    delta = q_and_delta(net, params, batch.obs)[1]
    idx = batch.action.view(-1, 1, 1).expand(-1, 1, delta.shape[-1])
    pred = delta.gather(1, idx).squeeze(1)
    target = (batch.next_obs - batch.obs) / net.delta_std
    return ((pred - target) ** 2).mean()


def inner_loss(
    net: QNetwork,
    params: Params,
    batch: Batch,
    inner: InnerLoss,
    gamma: float | Tensor | None = None,
) -> Tensor:
    """The configured inner loss; TD targets use ``params`` with gradients stopped."""
    g = inner.gamma if gamma is None else gamma
    loss = torch.zeros(())
    if inner.kind in ("td", "td+model"):
        frozen = {k: v.detach() for k, v in params.items()}
        loss = loss + _td_with_stopped_target(net, params, frozen, batch, g, inner.huber_delta)
    if inner.kind in ("model", "td+model"):
        loss = loss + inner.model_weight * model_loss(net, params, batch)
    return loss


def _td_with_stopped_target(
    net: QNetwork,
    params: Params,
    frozen: Params,
    batch: Batch,
    gamma: float | Tensor,
    huber_delta: float,
) -> Tensor:
    # Written without torch.no_grad() so that make_fx traces one graph; detach stops gradients.
    q = q_and_delta(net, params, batch.obs)[0]
    q_sa = q.gather(1, batch.action.unsqueeze(1)).squeeze(1)
    q_next = q_and_delta(net, frozen, batch.next_obs)[0].detach()
    target = double_dqn_target(q_next, q_next, batch.reward, batch.terminated, gamma)
    return torch.nn.functional.huber_loss(q_sa, target.detach(), delta=huber_delta)


def adapt_step(
    net: QNetwork,
    params: Params,
    lrs: Params,
    batch: Batch,
    inner: InnerLoss,
    gamma: float | Tensor | None = None,
    first_order: bool = False,
) -> tuple[Params, Tensor]:
    """One gradient step of the inner loss on the parameters named in ``lrs``.

    Returns the new full parameter dict and the loss *before* the step. With
    ``first_order=False`` the result stays differentiable with respect to ``params`` and
    ``lrs`` (second-order MAML, Meta-SGD); ``first_order=True`` drops the Hessian terms.
    """
    names = tuple(lrs)
    adapted = [params[k] for k in names]

    def loss_of(*values: Tensor) -> Tensor:
        return inner_loss(
            net, {**params, **dict(zip(names, values, strict=True))}, batch, inner, gamma
        )

    # torch.func.grad composes with the outer autograd (second-order MAML differentiates
    # through it), with vmap over tasks, and with make_fx tracing for the ONNX export.
    grads, loss = torch.func.grad_and_value(loss_of, argnums=tuple(range(len(names))))(*adapted)
    new = dict(params)
    for k, value, grad in zip(names, adapted, grads, strict=True):
        new[k] = value - lrs[k] * (grad.detach() if first_order else grad)
    return new, loss


def adapt(
    net: QNetwork,
    params: Params,
    lrs: Params,
    batch: Batch,
    inner: InnerLoss,
    steps: int,
    first_order: bool = False,
) -> tuple[Params, list[float]]:
    """``steps`` adaptation steps on one batch; returns the parameters and the loss per step."""
    losses = []
    for _ in range(steps):
        params, loss = adapt_step(net, params, lrs, batch, inner, first_order=first_order)
        losses.append(float(loss.detach()))
    return params, losses
