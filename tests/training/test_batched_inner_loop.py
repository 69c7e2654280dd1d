"""The meta-learner's batched inner loop (:func:`robometa.adaptation.batched_adapt_step`, plain
autograd over a task axis) against its reference, ``torch.func.vmap`` of the single-task
:func:`robometa.adaptation.adapt_step` that evaluation runs and ``adapt.onnx`` exports.

Inner losses and adapted parameters: bit-identical, every variant. Outer gradients:
bit-identical for FO-MAML and Reptile; for the ones that differentiate through the inner
gradient (MAML, Meta-SGD, CAVIA, and ANIL through its heads) autograd sums some
contributions in another order, so there they agree to float rounding (stated tolerance).
Every variant trains on the batched path."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from robometa.adaptation import (
    Batch,
    InnerLoss,
    adapt_step,
    batched_adapt_step,
    batched_model_loss,
    batched_supported,
    batched_td_loss,
    model_loss,
    td_loss,
)
from robometa.config import load_config
from robometa.methods.gradient import VARIANTS, MetaLearner, adapted_names
from robometa.networks import NetworkSpec, Params, QNetwork

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
#: outer gradients where autograd's summation order differs (relative to the largest entry)
SECOND_ORDER_RTOL = 1e-5
EXACT_OUTER = {"fomaml", "reptile"}


def network(context_dim: int, activation: str = "relu", hidden=(64, 64)) -> QNetwork:
    torch.manual_seed(1)
    net = QNetwork(NetworkSpec(4, 3, hidden, context_dim=context_dim, activation=activation))
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 0.3)
        net.set_normalization(
            torch.tensor([0.1, -0.2, 0.0, 0.3]), torch.full((4,), 0.7), torch.full((4,), 0.2)
        )
    return net


def tasks_batch(n_tasks: int, n: int, seed: int) -> Batch:
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(n_tasks, n, 4, generator=g)
    return Batch(
        obs,
        torch.randint(0, 3, (n_tasks, n), generator=g),
        torch.randn(n_tasks, n, generator=g),
        obs + 0.1 * torch.randn(n_tasks, n, 4, generator=g),
        (torch.rand(n_tasks, n, generator=g) < 0.1).float(),
    )


def learning_rates(algorithm: str, meta: Params) -> Params:
    per_entry = VARIANTS[algorithm].per_entry_lrs
    return {
        k: (torch.full(meta[k].shape, 0.01) if per_entry else torch.tensor(0.01)).requires_grad_(
            per_entry
        )
        for k in adapted_names(algorithm, list(meta))
    }


def vmapped(net, meta, lrs, batch, inner, steps, first_order):
    def per_task(fields: tuple) -> tuple[Params, torch.Tensor]:
        params, losses = dict(meta), []
        for _ in range(steps):
            params, loss = adapt_step(
                net, params, lrs, Batch(*fields), inner, first_order=first_order
            )
            losses.append(loss)
        return params, torch.stack(losses)

    return torch.func.vmap(per_task)(tuple(batch))


def batched(net, meta, lrs, batch, inner, steps, first_order):
    params, losses = dict(meta), []
    for _ in range(steps):
        params, loss = batched_adapt_step(net, params, lrs, batch, inner, first_order=first_order)
        losses.append(loss)
    return params, torch.stack(losses, 1)


def assert_outer_grads(algorithm: str, ref: list[torch.Tensor], new: list[torch.Tensor]) -> None:
    for a, b in zip(ref, new, strict=True):
        if algorithm in EXACT_OUTER:
            assert torch.equal(a, b)
        else:
            scale = a.abs().max().clamp_min(1e-12)
            assert ((a - b).abs().max() / scale) <= SECOND_ORDER_RTOL


CASES = [
    ("maml", 0, "td+model", "relu"),
    ("maml", 0, "td", "relu"),
    ("fomaml", 0, "td+model", "relu"),
    ("metasgd", 0, "td+model", "relu"),
    ("anil", 0, "td+model", "relu"),
    ("cavia", 4, "model", "relu"),
    ("cavia", 4, "td+model", "relu"),
    ("reptile", 0, "td", "relu"),
    ("maml", 0, "td+model", "tanh"),
    ("fomaml", 0, "model", "elu"),
]


@pytest.mark.parametrize(("algorithm", "context_dim", "kind", "activation"), CASES)
def test_batched_inner_steps_equal_vmapped_adapt_step(
    algorithm: str, context_dim: int, kind: str, activation: str
) -> None:
    """The shipped sizes (hidden 64x64, 8 tasks, support 200), three inner steps."""
    net = network(context_dim, activation)
    meta = dict(net.named_parameters())
    lrs = learning_rates(algorithm, meta)
    inner = InnerLoss(kind, 0.99, 1.0, 0.1)
    first_order = VARIANTS[algorithm].first_order
    support = tasks_batch(8, 200, seed=0)
    ref, ref_losses = vmapped(net, meta, lrs, support, inner, 3, first_order)
    new, new_losses = batched(net, meta, lrs, support, inner, 3, first_order)
    assert torch.equal(ref_losses, new_losses)
    for k in lrs:
        assert new[k].shape == (8, *meta[k].shape)
        assert torch.equal(ref[k], new[k]), k
    wrt = [p for k, p in meta.items() if k != "context"]
    wrt += [lr for lr in lrs.values() if lr.requires_grad]

    def grads(adapted: Params) -> list[torch.Tensor]:
        # an outer loss that reaches every adapted parameter, not only through the Q head
        outer = sum((adapted[k] ** 2).sum() for k in lrs)
        return list(torch.autograd.grad(outer, wrt, allow_unused=True, materialize_grads=True))

    assert_outer_grads(algorithm, grads(ref), grads(new))


@pytest.mark.parametrize("algorithm", list(VARIANTS))
def test_batched_adapt_step_under_no_grad_equals_vmapped(algorithm: str) -> None:
    """Reptile adapts under ``torch.no_grad`` (and so may a collection's adaptation, of any
    variant); the steps take their gradients anyway: the shared context too, which once
    came out of a no-grad ``expand`` cut from the graph and was never moved."""
    net = network(4 if VARIANTS[algorithm].adapts == "context" else 0)
    meta = {k: v.detach() for k, v in net.named_parameters()}
    if "context" in meta:
        meta["context"] = torch.zeros_like(meta["context"])
    lrs = {k: v.detach() for k, v in learning_rates(algorithm, meta).items()}
    inner = InnerLoss("td+model", 0.99, 1.0, 0.1)
    support = tasks_batch(3, 50, seed=4)
    with torch.no_grad():
        ref, _ = vmapped(net, meta, lrs, support, inner, 2, True)
        new, _ = batched(net, meta, lrs, support, inner, 2, True)
    for k in lrs:
        assert not new[k].requires_grad
        assert torch.equal(ref[k], new[k])
        assert float((new[k] - meta[k]).abs().max()) > 1e-4  # the steps moved it


@pytest.mark.parametrize("algorithm", list(VARIANTS))
def test_meta_learner_batched_task_losses_equal_the_vmapped_ones(
    algorithm: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``MetaLearner._task_losses`` (batched) against vmapping ``_task_loss`` (the fallback a
    network the batched forward does not cover takes) on one meta-batch: outer losses and
    adaptation displacements bit-identical, meta-gradients as stated above."""
    overrides = [
        "meta.task_pool=4",
        "meta.meta_batch=3",
        "meta.collect_steps=20",
        "adaptation.support_size=30",
        "meta.query_batch=16",
    ]
    cfg = load_config(CONFIGS / f"cartpole_{algorithm}.yaml", overrides, steps=400)
    learner = MetaLearner(cfg)
    try:
        learner.iterate()
        support, query = learner._meta_batch()
        outer = [p for g in learner.optimizer.param_groups for p in g["params"]]

        def run(task_losses) -> tuple[torch.Tensor, Params, list[torch.Tensor]]:
            losses, deltas = task_losses(support, query)
            if VARIANTS[algorithm].reptile:
                return losses.detach(), {k: v.detach() for k, v in deltas.items()}, []
            grads = torch.autograd.grad(
                losses.mean(), outer, allow_unused=True, materialize_grads=True
            )
            return losses.detach(), {k: v.detach() for k, v in deltas.items()}, list(grads)

        assert batched_supported(learner.net)
        new = run(learner._batched_task_losses)
        monkeypatch.setattr("robometa.methods.gradient.batched_supported", lambda net: False)
        ref = run(learner._task_losses)
    finally:
        learner.close()
    assert torch.isfinite(ref[0]).all()
    assert torch.equal(ref[0], new[0])
    assert ref[1].keys() == new[1].keys()
    for k in ref[1]:
        assert torch.equal(ref[1][k], new[1][k]), k
    assert_outer_grads(algorithm, ref[2], new[2])


@pytest.mark.parametrize("algorithm", list(VARIANTS))
def test_the_adaptation_before_a_query_collection_equals_adapt_step(algorithm: str) -> None:
    """The one-task adaptation a meta-learner acts with on its query collection goes through
    the batched path (a task axis of one): the parameters :func:`adapt_step` gives, to the
    bit, at the shipped step count."""
    overrides = ["meta.task_pool=2", "meta.meta_batch=2", "meta.collect_steps=30"]
    cfg = load_config(CONFIGS / f"cartpole_{algorithm}.yaml", overrides, steps=240)
    learner = MetaLearner(cfg)
    try:
        learner.iterate()  # the slots hold supports now
        meta = {k: v.detach() for k, v in learner.meta_params.items()}
        support = learner.slots[0].support.all()
        assert batched_supported(learner.net) and len(support.obs) == 30
        with torch.no_grad():
            new = learner._adapt_one(dict(meta), support)
            ref = dict(meta)
            for _ in range(cfg.adaptation.steps):
                ref, _ = adapt_step(
                    learner.net, ref, learner.lrs, support, learner.inner, first_order=True
                )
    finally:
        learner.close()
    assert new.keys() == ref.keys()
    for k in ref:
        assert new[k].shape == meta[k].shape and torch.equal(new[k], ref[k]), k
    moved = max(float((new[k] - meta[k]).abs().max()) for k in learner.lrs)
    assert moved > 1e-5


def test_batched_outer_losses_equal_the_vmapped_ones() -> None:
    net = network(0)
    params = {
        k: (v.detach().expand(5, *v.shape) + 0.01 * torch.randn(5, *v.shape)).requires_grad_()
        for k, v in net.named_parameters()
    }
    target = {k: v.detach() for k, v in net.named_parameters()}
    query = tasks_batch(5, 40, seed=2)

    def per_task(p: Params, fields: tuple) -> torch.Tensor:
        return td_loss(net, p, target, Batch(*fields), 0.99, 1.0, model_weight=0.1)

    def separate(p: Params, fields: tuple) -> torch.Tensor:
        b = Batch(*fields)
        return td_loss(net, p, target, b, 0.99, 1.0) + 0.1 * model_loss(net, p, b)

    ref = torch.func.vmap(per_task)(params, tuple(query))
    new = batched_td_loss(net, params, target, query, 0.99, 1.0, model_weight=0.1)
    assert torch.equal(ref, new)
    # One forward pass of the body for both terms: the same losses as two passes, and their
    # gradients to float rounding (the two terms' gradients meet before the body's backward).
    two_passes = torch.func.vmap(separate)(params, tuple(query))
    assert torch.equal(ref, two_passes)
    split = batched_td_loss(net, params, target, query, 0.99, 1.0) + 0.1 * batched_model_loss(
        net, params, query
    )
    assert torch.equal(new, split)
    for a, b in zip(
        torch.autograd.grad(new.sum(), list(params.values())),
        torch.autograd.grad(split.sum(), list(params.values())),
        strict=True,
    ):
        assert ((a - b).abs().max() / a.abs().max().clamp_min(1e-12)) <= SECOND_ORDER_RTOL


def test_a_network_with_its_own_forward_is_not_batched() -> None:
    class Doubled(QNetwork):
        def forward(self, obs, with_model=True):
            q, delta = super().forward(obs, with_model)
            return 2 * q, delta

    spec = NetworkSpec(4, 3, (8,))
    assert batched_supported(QNetwork(spec))
    assert not batched_supported(Doubled(spec))


@pytest.mark.parametrize("algorithm", ["maml", "metasgd", "cavia"])
def test_with_meta_first_order_the_second_order_variants_batch_to_the_bit(algorithm: str) -> None:
    """With ``meta.first_order: true`` the batched path reproduces MAML's, Meta-SGD's and
    CAVIA's vmapped losses, displacements and meta-gradients to the bit."""
    overrides = ["meta.first_order=true", "meta.task_pool=3", "meta.meta_batch=3"]
    overrides += ["meta.collect_steps=20", "adaptation.support_size=30", "meta.query_batch=16"]
    cfg = load_config(CONFIGS / f"cartpole_{algorithm}.yaml", overrides, steps=400)
    learner = MetaLearner(cfg)
    try:
        learner.iterate()
        support, query = learner._meta_batch()
        outer = [p for g in learner.optimizer.param_groups for p in g["params"]]
        results = []
        for task_losses in (learner._batched_task_losses, learner._vmapped_task_losses):
            losses, deltas = task_losses(support, query)
            grads = torch.autograd.grad(
                losses.mean(), outer, allow_unused=True, materialize_grads=True
            )
            results.append((losses.detach(), {k: v.detach() for k, v in deltas.items()}, grads))
    finally:
        learner.close()
    (l1, d1, g1), (l2, d2, g2) = results
    assert learner.first_order and torch.equal(l1, l2)
    assert all(torch.equal(d1[k], d2[k]) for k in d1)
    assert all(torch.equal(a, b) for a, b in zip(g1, g2, strict=True))


@pytest.mark.parametrize("algorithm", list(VARIANTS))
def test_training_takes_the_batched_path(algorithm: str) -> None:
    """Every variant trains batched on the plain network (its numbers: the tests above)."""
    overrides = ["meta.task_pool=2", "meta.meta_batch=2", "meta.collect_steps=10"]
    cfg = load_config(CONFIGS / f"cartpole_{algorithm}.yaml", overrides, steps=200)
    learner = MetaLearner(cfg)
    calls = []
    original = learner._batched_task_losses
    learner._batched_task_losses = lambda s, q: calls.append(1) or original(s, q)
    try:
        learner.iterate()  # collects, then its outer steps go through _task_losses
        assert learner.outer_steps > 0
    finally:
        learner.close()
    assert len(calls) == learner.outer_steps


def test_threads_sets_the_training_threads_and_a_run_repeats_at_two(tmp_path) -> None:
    """``threads: 2`` lets the matrix products use the second core: train() sets the count,
    and a seeded two-thread run repeats to the bit (between one and two threads the numbers
    may differ by float rounding: a kernel may split a reduction across the threads)."""
    from robometa.policy import Policy
    from robometa.train import train

    seen = []
    policies = []
    for threads, run in ((1, "a"), (2, "b"), (2, "c")):
        overrides = [f"threads={threads}", "logging.progress=false", "logging.eval_every=0"]
        cfg = load_config(CONFIGS / "cartpole_cavia.yaml", overrides, steps=800)
        before = torch.get_num_threads()
        train(cfg, tmp_path / run)
        seen.append(torch.get_num_threads())
        torch.set_num_threads(before)
        policies.append(Policy.load(tmp_path / run).params)
    _, two, again = policies
    assert all(torch.equal(two[k], again[k]) for k in two)
    assert seen == [1, 2, 2]
