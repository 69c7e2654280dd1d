"""Tracing the Q-network and the one ``adapt_step`` into ONNX graphs.

This module only traces: the bundle writer (:mod:`robometa.bundle`, and the gradient kind's
files in :mod:`robometa.bundle_gradient`) calls it, and the ``robometa export`` command lives in
:mod:`robometa.cli`; nothing here imports either.

Both graphs take the parameters as *inputs* (no initializers for them), so the runtime feeds
the meta-parameters or any adapted ones through the same graph. The normalization buffers
(``obs_mean``, ``obs_std``, ``delta_std``) are constants inside the graphs.

How a gradient step exports (checked on torch 2.13): ``make_fx(step, tracing_mode="symbolic")``
traces ``torch.func.grad`` of the inner loss into a plain aten graph, then
``torch.onnx.export(graph_module, dynamo=True, dynamic_shapes=...)`` writes it with a dynamic
batch axis. The adapt graph outputs only the *adapted* parameters (``new:<name>``), since the
others pass through unchanged, and the inner loss before the step.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
from torch import Tensor
from torch.fx.experimental.proxy_tensor import make_fx

from robometa.adaptation import Batch, InnerLoss, adapt_step
from robometa.deploy.bundle import (
    ACTION_OUTPUT,
    BATCH_INPUTS,
    GAMMA_INPUT,
    LOSS_OUTPUT,
    LR_PREFIX,
    NEW_PREFIX,
    OBS_INPUT,
    PARAM_PREFIX,
    Q_OUTPUT,
)
from robometa.networks import Params, QNetwork, q_values

#: the smallest batch the graphs accept (batch 1 is what ``act`` runs).
MIN_BATCH = 1
#: what every bundle graph is written as (the manifest records both per graph, the runtime
#: checks them): opset 20 at IR 10 loads in onnxruntime 1.19 and later, the declared minimum
ONNX_OPSET = 20
ONNX_IR_VERSION = 10
_EXAMPLE_BATCH = 5  # tracing batch: not 0 or 1, so the batch axis stays symbolic


def policy_param_names(params: Params) -> list[str]:
    """Parameters the Q-values depend on: all but the dynamics-model head."""
    return [k for k in params if not k.startswith("model_head.")]


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter warns about training mode, torchvision and pytree internals: not ours."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _export(
    fn: Callable[..., tuple[Tensor, ...]],
    args: tuple[Tensor, ...],
    dynamic: Sequence[bool],
    input_names: list[str],
    output_names: list[str],
    path: Path,
) -> Path:
    with torch.no_grad():
        graph = make_fx(fn, tracing_mode="symbolic", _allow_non_fake_inputs=True)(*args)
    batch = torch.export.Dim("batch", min=MIN_BATCH)
    shapes = tuple({0: batch} if d else None for d in dynamic)
    with _quiet_exporter():
        program = torch.onnx.export(
            graph,
            args,
            dynamo=True,
            opset_version=ONNX_OPSET,
            dynamic_shapes=shapes,
            input_names=input_names,
            output_names=output_names,
            verbose=False,
            external_data=False,
        )
        program.save(str(path), external_data=False)
    _check_onnx_version(path)
    return path


def _check_onnx_version(path: Path) -> None:
    """The bundle format promises opset ``ONNX_OPSET`` and IR ``ONNX_IR_VERSION``: what the
    oldest supported onnxruntime reads. A torch that writes anything else is an error here,
    not a bundle the robot cannot load."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    if model.ir_version != ONNX_IR_VERSION or opsets.get("ai.onnx") != ONNX_OPSET:
        raise RuntimeError(
            f"{path}: torch {torch.__version__} wrote ONNX IR {model.ir_version}, opsets "
            f"{opsets}; the bundle format needs IR {ONNX_IR_VERSION}, opset {ONNX_OPSET}"
        )


def export_policy_graph(net: QNetwork, params: Params, path: str | Path) -> Path:
    """``obs`` + ``param:<name>`` -> ``q_values`` and greedy ``action`` (dynamic batch)."""
    names = policy_param_names(params)
    fixed = {k: v.detach() for k, v in params.items()}

    def policy(obs: Tensor, *values: Tensor) -> tuple[Tensor, Tensor]:
        q = q_values(net, {**fixed, **dict(zip(names, values, strict=True))}, obs)
        return q, q.argmax(dim=1)

    obs = _example_obs(net, _EXAMPLE_BATCH)
    args = (obs, *(fixed[k].float() for k in names))
    return _export(
        policy,
        args,
        [True] + [False] * len(names),
        [OBS_INPUT] + [PARAM_PREFIX + k for k in names],
        [Q_OUTPUT, ACTION_OUTPUT],
        Path(path),
    )


def export_adapt_graph(
    net: QNetwork, params: Params, lrs: Params, inner: InnerLoss, path: str | Path
) -> Path:
    """One ``adapt_step`` as a graph: parameters, learning rates, a batch, gamma -> new, loss."""
    if not lrs:
        raise ValueError("export_adapt_graph needs at least one adapted parameter in lrs")
    names, lr_names = list(params), list(lrs)
    n_p, n_l = len(names), len(lr_names)

    def step(*args: Tensor) -> tuple[Tensor, ...]:
        p = dict(zip(names, args[:n_p], strict=True))
        lr = dict(zip(lr_names, args[n_p : n_p + n_l], strict=True))
        obs, action, reward, next_obs, terminated, gamma = args[n_p + n_l :]
        batch = Batch(obs, action, reward, next_obs, terminated)
        new, loss = adapt_step(net, p, lr, batch, inner, gamma=gamma)
        return (*(new[k] for k in lr_names), loss)

    example = _example_batch(net, _EXAMPLE_BATCH)
    args = (
        *(params[k].detach().float() for k in names),
        *(lrs[k].detach().float() for k in lr_names),
        *example,
        torch.tensor(inner.gamma, dtype=torch.float32),
    )
    return _export(
        step,
        args,
        [False] * (n_p + n_l) + [True] * len(BATCH_INPUTS) + [False],
        [PARAM_PREFIX + k for k in names]
        + [LR_PREFIX + k for k in lr_names]
        + list(BATCH_INPUTS)
        + [GAMMA_INPUT],
        [NEW_PREFIX + k for k in lr_names] + [LOSS_OUTPUT],
        Path(path),
    )


def _example_obs(net: QNetwork, n: int) -> Tensor:
    gen = torch.Generator().manual_seed(0)
    return net.obs_mean + net.obs_std * torch.randn(n, net.spec.obs_dim, generator=gen)


def _example_batch(net: QNetwork, n: int) -> Batch:
    gen = torch.Generator().manual_seed(1)
    obs = _example_obs(net, n)
    return Batch(
        obs,
        torch.randint(0, net.spec.n_actions, (n,), generator=gen),
        torch.randn(n, generator=gen),
        obs + 0.1 * net.obs_std * torch.randn(n, net.spec.obs_dim, generator=gen),
        torch.zeros(n),
    )
