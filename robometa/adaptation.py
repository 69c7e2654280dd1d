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
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor
from torch.func import functional_call

from robometa.networks import ACTIVATIONS, Params, QNetwork, q_and_delta, q_values

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
    """``r + gamma (1 - d) Q_target(s', argmax_a Q_online(s', a))``; the actions are the last
    axis, so a leading task axis (the batched inner loop's ``(T, N, A)``) works too."""
    axis = q_next_online.dim() - 1
    best = q_next_online.argmax(dim=axis, keepdim=True)
    return reward + gamma * (1.0 - terminated) * q_next_target.gather(axis, best).squeeze(axis)


def td_loss(
    net: QNetwork,
    params: Params,
    target_params: Params,
    batch: Batch,
    gamma: float | Tensor,
    huber_delta: float = 1.0,
    model_weight: float | None = None,
) -> Tensor:
    """Huber loss of Q(s, a) against the Double-DQN target (targets carry no gradient); with
    ``model_weight``, plus that times :func:`model_loss`, whose prediction comes from the same
    forward pass of the body (one pass over ``batch.obs`` for both terms)."""
    q, delta = functional_call(net, params, (batch.obs, model_weight is not None))
    with torch.no_grad():
        online_next = q_values(net, params, batch.next_obs)
        target_next = q_values(net, target_params, batch.next_obs)
    loss = _huber_td(q, online_next.detach(), target_next.detach(), batch, gamma, huber_delta)
    if model_weight is not None:
        loss = loss + model_weight * _model_mse(net, delta, batch)
    return loss


def model_loss(net: QNetwork, params: Params, batch: Batch) -> Tensor:
    """MSE of the predicted normalized state change for the taken action."""
    return _model_mse(net, q_and_delta(net, params, batch.obs)[1], batch)


def _huber_td(
    q: Tensor,
    q_next_online: Tensor,
    q_next_target: Tensor,
    batch: Batch,
    gamma: float | Tensor,
    huber_delta: float,
) -> Tensor:
    q_sa = q.gather(1, batch.action.unsqueeze(1)).squeeze(1)
    target = double_dqn_target(q_next_online, q_next_target, batch.reward, batch.terminated, gamma)
    return torch.nn.functional.huber_loss(q_sa, target.detach(), delta=huber_delta)


def _model_mse(net: QNetwork, delta: Tensor, batch: Batch) -> Tensor:
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
    """The configured inner loss; TD targets use ``params`` with gradients stopped. The TD and
    model terms share one forward pass of the body over ``batch.obs``."""
    g = inner.gamma if gamma is None else gamma
    with_td = inner.kind in ("td", "td+model")
    with_model = inner.kind in ("model", "td+model")
    # Written without torch.no_grad() so that make_fx traces one graph; detach stops gradients.
    q, delta = functional_call(net, params, (batch.obs, with_model))
    loss = torch.zeros(())
    if with_td:
        frozen = {k: v.detach() for k, v in params.items()}
        q_next = q_values(net, frozen, batch.next_obs).detach()
        loss = loss + _huber_td(q, q_next, q_next, batch, g, inner.huber_delta)
    if with_model:
        loss = loss + inner.model_weight * _model_mse(net, delta, batch)
    return loss


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


# ----------------------------------------------------------------------------------------
# The same step batched over a task axis: the meta-learner's training path
#
# ``MetaLearner`` adapts the tasks of a meta-batch together. Vmapping :func:`adapt_step`
# (``torch.func.vmap`` of ``torch.func.grad_and_value``) spends most of its time in functorch's
# wrappers; the functions below compute the same numbers with plain autograd on tensors with a
# leading task axis T. Each parameter is either shared by the tasks (its own shape: the
# meta-parameters before the first step, the ones that are not adapted) or one per task (a
# leading T axis), and each layer runs the kernels vmap runs for that case (one ``mm`` over the
# T * N rows of a shared weight, ``bmm`` of per-task weights), differentiated in the same
# layout. The inner losses and adapted parameters are bit-identical to vmapping
# :func:`adapt_step`, and so are the outer gradients of FO-MAML and Reptile; where the outer
# gradient differentiates through the inner gradient (second-order MAML, Meta-SGD, CAVIA, ANIL
# through its heads), autograd sums some of its contributions in another order: float
# rounding, about 1e-7 relative per outer step. Every variant trains on this path.
# :func:`adapt_step` stays the single-task reference that evaluation runs and ONNX exports.


def batched_supported(net: QNetwork) -> bool:
    """Whether :func:`batched_q_and_delta` is ``net``'s forward: the plain :class:`QNetwork`
    (a subclass that changes the forward, or whose layers are not plain linear ones, is
    vmapped through :func:`adapt_step` instead)."""
    cls = type(net)
    if not isinstance(net, QNetwork):
        return False
    if cls.forward is not QNetwork.forward or cls.features is not QNetwork.features:
        return False
    layers = [*net.body, net.q_head, net.model_head]
    return len(net.body) == len(net.spec.hidden) and all(type(m) is torch.nn.Linear for m in layers)


#: > 0 while :func:`batched_adapt_step` takes the inner gradient (a layer's weight gradient
#: is laid out as vmap's inner ``grad`` lays it out there, as the outer autograd does elsewhere)
_INNER_GRAD = [0]


class _Linear(torch.autograd.Function):
    """``bias + x @ weight.T`` for ``x`` (T, N, in), with the forward and backward kernels
    of vmap (see the section comment); ``probe_w``/``probe_b``: per-task stand-ins of a
    shared weight and bias, for the inner gradient of each task (their values are unused)."""

    @staticmethod
    def forward(
        x: Tensor,
        weight: Tensor,
        bias: Tensor,
        probe_w: Tensor | None,
        probe_b: Tensor | None,
    ) -> Tensor:
        if weight.dim() == 2:
            t, n, _ = x.shape
            y = torch.mm(x.reshape(t * n, -1), weight.t()).view(t, n, -1)
        else:
            y = torch.bmm(x, weight.transpose(1, 2))
        return (bias if bias.dim() == 1 else bias.unsqueeze(1)) + y

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        x, weight, bias = inputs[:3]
        ctx.save_for_backward(x, weight)
        ctx.bias_shape = bias.shape

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        need = ctx.needs_input_grad
        inner = _INNER_GRAD[0] > 0
        t, n, _ = x.shape
        gx = gw = gb = pw = pb = None
        if weight.dim() == 2:
            if need[0]:
                gx = torch.mm(g.reshape(t * n, -1), weight).view(t, n, -1)
            if need[1] and not inner:
                gw = torch.mm(g.reshape(t * n, -1).t(), x.reshape(t * n, -1))
            if need[3] and inner:
                pw = torch.bmm(g.transpose(1, 2), x)
        else:
            if need[0]:
                gx = torch.bmm(g, weight)
            if need[1]:
                gw = (
                    torch.bmm(g.transpose(1, 2), x)
                    if inner
                    else torch.bmm(x.transpose(1, 2), g).transpose(1, 2)
                )
        if len(ctx.bias_shape) == 1:
            if need[2] and not inner:
                gb = g.sum_to_size(ctx.bias_shape)
            if need[4] and inner:
                pb = g.sum_to_size(t, 1, g.shape[-1]).squeeze(1)
        elif need[2]:
            gb = g.sum_to_size(t, 1, g.shape[-1]).squeeze(1)
        return gx, gw, gb, pw, pb


def batched_q_and_delta(
    net: QNetwork,
    params: Params,
    obs: Tensor,
    with_model: bool = True,
    probes: Params | None = None,
) -> tuple[Tensor, Tensor | None]:
    """:func:`robometa.networks.q_and_delta` of T tasks at once: ``obs`` (T, N, obs_dim) to
    Q-values (T, N, A) and state changes (T, N, A, obs_dim); ``with_model=False`` skips the
    dynamics head (None). ``probes``: per-task stand-ins of shared layer parameters that the
    inner gradient is taken with respect to (:func:`batched_adapt_step`)."""
    spec = net.spec
    probes = probes or {}
    x = (obs - net.obs_mean) / net.obs_std
    if spec.context_dim:
        ctx = params["context"]
        if ctx.dim() == 1:
            ctx = ctx.expand(x.shape[0], -1)
        x = torch.cat([x, ctx.unsqueeze(1).expand(-1, x.shape[1], -1)], dim=-1)
    act = ACTIVATIONS[spec.activation]

    def layer(x: Tensor, name: str) -> Tensor:
        w, b = f"{name}.weight", f"{name}.bias"
        return _Linear.apply(x, params[w], params[b], probes.get(w), probes.get(b))

    for i in range(len(spec.hidden)):
        x = act(layer(x, f"body.{i}"))
    q = layer(x, "q_head")
    if not with_model:
        return q, None
    delta = layer(x, "model_head")
    return q, delta.view(*obs.shape[:-1], spec.n_actions, spec.obs_dim)


def _batched_huber(q: Tensor, batch: Batch, target: Tensor, huber_delta: float) -> Tensor:
    q_sa = q.gather(2, batch.action.unsqueeze(2)).squeeze(2)
    loss = torch.nn.functional.huber_loss(q_sa, target, reduction="none", delta=huber_delta)
    return loss.mean(1)


def batched_td_loss(
    net: QNetwork,
    params: Params,
    target_params: Params,
    batch: Batch,
    gamma: float | Tensor,
    huber_delta: float = 1.0,
    model_weight: float | None = None,
) -> Tensor:
    """:func:`td_loss` of each task, (T,) (with ``model_weight``, plus the model term from the
    same forward pass)."""
    q, delta = batched_q_and_delta(net, params, batch.obs, with_model=model_weight is not None)
    with torch.no_grad():
        online_next = batched_q_and_delta(net, params, batch.next_obs, with_model=False)[0]
        target_next = batched_q_and_delta(net, target_params, batch.next_obs, False)[0]
    target = double_dqn_target(
        online_next.detach(), target_next.detach(), batch.reward, batch.terminated, gamma
    )
    loss = _batched_huber(q, batch, target.detach(), huber_delta)
    if model_weight is not None:
        loss = loss + model_weight * _batched_model_mse(net, delta, batch)
    return loss


def batched_model_loss(
    net: QNetwork, params: Params, batch: Batch, probes: Params | None = None
) -> Tensor:
    """:func:`model_loss` of each task, (T,)."""
    delta = batched_q_and_delta(net, params, batch.obs, probes=probes)[1]
    return _batched_model_mse(net, delta, batch)


def _batched_model_mse(net: QNetwork, delta: Tensor, batch: Batch) -> Tensor:
    t, n = batch.action.shape
    idx = batch.action.view(t, n, 1, 1).expand(-1, -1, 1, delta.shape[-1])
    pred = delta.gather(2, idx).squeeze(2)
    target = (batch.next_obs - batch.obs) / net.delta_std
    return ((pred - target) ** 2).mean(dim=(1, 2))


def batched_inner_loss(
    net: QNetwork, params: Params, batch: Batch, inner: InnerLoss, probes: Params | None = None
) -> Tensor:
    """:func:`inner_loss` of each task, (T,): one forward pass of the body over ``batch.obs``
    for the TD and model terms."""
    with_model = inner.kind in ("model", "td+model")
    q, delta = batched_q_and_delta(net, params, batch.obs, with_model, probes)
    loss = torch.zeros(())
    if inner.kind in ("td", "td+model"):
        frozen = {k: v.detach() for k, v in params.items()}
        q_next = batched_q_and_delta(net, frozen, batch.next_obs, with_model=False)[0].detach()
        target = double_dqn_target(q_next, q_next, batch.reward, batch.terminated, inner.gamma)
        loss = loss + _batched_huber(q, batch, target.detach(), inner.huber_delta)
    if with_model:
        loss = loss + inner.model_weight * _batched_model_mse(net, delta, batch)
    return loss


def batched_adapt_step(
    net: QNetwork,
    params: Params,
    lrs: Params,
    batch: Batch,
    inner: InnerLoss,
    first_order: bool = False,
) -> tuple[Params, Tensor]:
    """:func:`adapt_step` of T tasks at once (the numbers of vmapping it, see the section
    comment): ``batch`` fields with a leading T axis, ``params`` shared or per task; returns
    the per-task adapted parameters and the per-task losses before the step, (T,)."""
    t = batch.obs.shape[0]
    params = dict(params)
    probes: Params = {}
    wrt = []
    for k in lrs:
        v = params[k]
        shared = v.dim() == net.get_parameter(k).dim()
        if shared and k != "context":  # a layer's: the layer takes the gradient per task
            probes[k] = torch.zeros((t, *v.shape), requires_grad=True)
            wrt.append(probes[k])
            continue
        if not v.requires_grad:  # adapting under no_grad (Reptile): a leaf to differentiate
            v = v.detach().requires_grad_()
        with torch.enable_grad():  # a no-grad expand would be cut from the graph: no gradient
            params[k] = v.expand(t, *v.shape) if shared else v
        wrt.append(params[k])
    with torch.enable_grad():
        loss = batched_inner_loss(net, params, batch, inner, probes)
        # Tasks are independent: the gradient of the sum is each task's own gradient.
        _INNER_GRAD[0] += 1
        try:
            grads = torch.autograd.grad(
                loss.sum(),
                wrt,
                create_graph=not first_order,
                allow_unused=True,
                materialize_grads=True,
            )
        finally:
            _INNER_GRAD[0] -= 1
    new = dict(params)
    for k, grad in zip(lrs, grads, strict=True):
        new[k] = params[k] - lrs[k] * (grad.detach() if first_order else grad)
    return new, loss
