"""The mathematics of the inner loop: descent, first vs second order, Meta-SGD, ANIL, CAVIA,
Reptile, stop-gradient TD targets. Pure torch on tiny networks (the MetaLearner ones use a
two-task cart-pole pool)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from robometa.adaptation import (
    Batch,
    InnerLoss,
    adapt_step,
    double_dqn_target,
    inner_loss,
    model_loss,
    td_loss,
)
from robometa.config import load_config
from robometa.methods.gradient import LR_FLOOR, MetaLearner, adapted_names
from robometa.networks import NetworkSpec, Params, QNetwork, q_and_delta

CAVIA_YAML = Path(__file__).resolve().parents[2] / "configs" / "cartpole_cavia.yaml"


def tiny_net(context_dim: int = 2, activation: str = "tanh", seed: int = 0) -> QNetwork:
    """obs 3, actions 2, body (8, 8); every weight O(0.5) so that no gradient is trivially 0."""
    torch.manual_seed(seed)
    net = QNetwork(
        NetworkSpec(
            obs_dim=3, n_actions=2, hidden=(8, 8), context_dim=context_dim, activation=activation
        )
    )
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 0.5)
    return net


def random_batch(seed: int, n: int = 16, obs_dim: int = 3, n_actions: int = 2) -> Batch:
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(n, obs_dim, generator=g)
    return Batch(
        obs=obs,
        action=torch.randint(0, n_actions, (n,), generator=g),
        reward=torch.randn(n, generator=g),
        next_obs=obs + 0.3 * torch.randn(n, obs_dim, generator=g),
        terminated=(torch.rand(n, generator=g) < 0.2).float(),
    )


def adapted_set(which: str, names: list[str]) -> list[str]:
    return {
        "all": list(names),
        "head": adapted_names("anil", names),
        "context": adapted_names("cavia", names),
    }[which]


def flat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


# ------------------------------------------------------------------------- descent


def fixed_target_loss(
    net: QNetwork, params: Params, theta0: Params, batch: Batch, inner: InnerLoss
) -> torch.Tensor:
    """The inner loss with the TD target frozen at ``theta0`` (what the semi-gradient descends)."""
    loss = torch.zeros(())
    if inner.kind in ("td", "td+model"):
        with torch.no_grad():
            q_next = q_and_delta(net, theta0, batch.next_obs)[0]
            y = double_dqn_target(q_next, q_next, batch.reward, batch.terminated, inner.gamma)
        q = q_and_delta(net, params, batch.obs)[0].gather(1, batch.action[:, None]).squeeze(1)
        loss = loss + torch.nn.functional.huber_loss(q, y, delta=inner.huber_delta)
    if inner.kind in ("model", "td+model"):
        loss = loss + inner.model_weight * model_loss(net, params, batch)
    return loss


@pytest.mark.parametrize("which", ["all", "head", "context"])
@pytest.mark.parametrize("kind", ["td", "model", "td+model"])
def test_one_step_lowers_the_inner_loss(kind: str, which: str) -> None:
    net = tiny_net()
    params = net.params()
    batch = random_batch(1)
    inner = InnerLoss(kind, gamma=0.99)
    names = adapted_set(which, list(params))
    lr = 1e-2
    new, before = adapt_step(net, params, {n: torch.tensor(lr) for n in names}, batch, inner)
    after = inner_loss(net, new, batch, inner)

    # The returned loss is the loss *before* the step.
    torch.testing.assert_close(before, inner_loss(net, params, batch, inner))
    # Strictly lower, TD target recomputed with the new parameters included.
    assert float(after) < float(before), f"{kind}/{which}: {float(before)} -> {float(after)}"

    # And by the amount gradient descent predicts: with the target frozen at the step's input,
    # L(theta - lr g) = L(theta) - lr |g|^2 + O(lr^2).
    leaves = {n: params[n].clone().requires_grad_() for n in names}
    loss0 = fixed_target_loss(net, {**params, **leaves}, params, batch, inner)
    g = torch.autograd.grad(loss0, list(leaves.values()), allow_unused=True)  # td: no model head
    predicted = lr * sum(float(x.square().sum()) for x in g if x is not None)
    actual = float(loss0.detach() - fixed_target_loss(net, new, params, batch, inner))
    assert predicted > 0
    assert actual == pytest.approx(predicted, rel=0.25), (kind, which, actual, predicted)


# ------------------------------------------------------------ first vs second order

# A two-parameter example small enough to do by hand. One hidden unit with weight 1 and bias 0
# and positive observations: the feature is h = s (relu in its linear part, no normalization).
# Only the dynamics head adapts: pred = w h + b, model loss = mean (w h + b - (s' - s))^2.
#
#   support:  h = [1, 2], target change [1, 3];    query: h = [1, 3], target change [0, 2]
#   theta = (w, b) = (0.5, 0.25), inner lr alpha = 0.1
#
#   inner residuals  [-0.25, -1.75];  inner gradient  (-3.75, -2.0)
#   theta' = theta - alpha * grad = (0.875, 0.45)
#   inner Hessian  H = (2/2) sum [[h^2, h], [h, 1]] = [[5, 3], [3, 2]]
#   outer residuals at theta'  [1.325, 1.075];  grad of outer at theta' = (4.55, 2.4)
#   first order:   d outer / d theta = grad at theta' = (4.55, 2.4)
#   second order:  (I - alpha H) (4.55, 2.4) = (4.55 - 2.995, 2.4 - 1.845) = (1.555, 0.555)

HAND_SUPPORT = Batch(
    obs=torch.tensor([[1.0], [2.0]]),
    action=torch.tensor([0, 0]),
    reward=torch.zeros(2),
    next_obs=torch.tensor([[2.0], [5.0]]),
    terminated=torch.zeros(2),
)
HAND_QUERY = Batch(
    obs=torch.tensor([[1.0], [3.0]]),
    action=torch.tensor([0, 0]),
    reward=torch.zeros(2),
    next_obs=torch.tensor([[1.0], [5.0]]),
    terminated=torch.zeros(2),
)
HAND_ALPHA = 0.1


def hand_net() -> tuple[QNetwork, Params]:
    net = QNetwork(NetworkSpec(obs_dim=1, n_actions=1, hidden=(1,), activation="relu"))
    params = net.params()
    params["body.0.weight"] = torch.tensor([[1.0]])
    params["body.0.bias"] = torch.tensor([0.0])
    params["model_head.weight"] = torch.tensor([[0.5]])
    params["model_head.bias"] = torch.tensor([0.25])
    return net, params


def hand_meta_gradient(first_order: bool) -> tuple[torch.Tensor, Params]:
    net, params = hand_net()
    w = params["model_head.weight"].requires_grad_()
    b = params["model_head.bias"].requires_grad_()
    lrs = {
        "model_head.weight": torch.tensor(HAND_ALPHA),
        "model_head.bias": torch.tensor(HAND_ALPHA),
    }
    adapted, _ = adapt_step(
        net, params, lrs, HAND_SUPPORT, InnerLoss("model"), first_order=first_order
    )
    outer = model_loss(net, adapted, HAND_QUERY)
    gw, gb = torch.autograd.grad(outer, [w, b])
    return torch.cat([gw.reshape(-1), gb.reshape(-1)]), adapted


def test_hand_example_adapted_parameters() -> None:
    _, adapted = hand_meta_gradient(first_order=False)
    torch.testing.assert_close(adapted["model_head.weight"], torch.tensor([[0.875]]))
    torch.testing.assert_close(adapted["model_head.bias"], torch.tensor([0.45]))


def test_first_order_is_the_outer_gradient_at_the_adapted_parameters() -> None:
    g_fo, adapted = hand_meta_gradient(first_order=True)
    torch.testing.assert_close(g_fo, torch.tensor([4.55, 2.4]))
    # The same, computed as "gradient of the outer loss with respect to theta', at theta'".
    net, _ = hand_net()
    at = {k: v.detach().clone().requires_grad_() for k, v in adapted.items()}
    gw, gb = torch.autograd.grad(
        model_loss(net, at, HAND_QUERY), [at["model_head.weight"], at["model_head.bias"]]
    )
    torch.testing.assert_close(g_fo, torch.cat([gw.reshape(-1), gb.reshape(-1)]))


def test_second_order_adds_exactly_the_hessian_term() -> None:
    g_fo, _ = hand_meta_gradient(first_order=True)
    g_so, _ = hand_meta_gradient(first_order=False)
    torch.testing.assert_close(g_so, torch.tensor([1.555, 0.555]))

    # The Hessian of the inner loss, by hand and by torch.autograd.functional.hessian.
    h_hand = torch.tensor([[5.0, 3.0], [3.0, 2.0]])
    net, params = hand_net()

    def support_loss(wb: torch.Tensor) -> torch.Tensor:
        p = {**params, "model_head.weight": wb[:1].view(1, 1), "model_head.bias": wb[1:]}
        return inner_loss(net, p, HAND_SUPPORT, InnerLoss("model"))

    h = torch.autograd.functional.hessian(support_loss, torch.tensor([0.5, 0.25]))
    torch.testing.assert_close(h, h_hand)
    torch.testing.assert_close(g_so, g_fo - HAND_ALPHA * h @ g_fo)
    assert (g_so - g_fo).abs().min() > 1.0  # the dropped term is not negligible here


@pytest.mark.parametrize("kind", ["td", "model", "td+model"])
def test_first_and_second_order_differ_by_the_hessian_term_on_a_whole_network(kind: str) -> None:
    """Every parameter adapted, tanh body: d outer/d theta = (I - alpha H) grad_outer(theta')."""
    net = tiny_net(context_dim=0)
    theta = net.params()
    names = list(theta)
    shapes = [theta[n].shape for n in names]
    sizes = [theta[n].numel() for n in names]
    inner = InnerLoss(kind, gamma=0.9)
    support, query = random_batch(2), random_batch(3)
    alpha = 0.05

    def unflat(v: torch.Tensor) -> Params:
        return {n: c.view(s) for n, c, s in zip(names, v.split(sizes), shapes, strict=True)}

    def outer_of(p: Params) -> torch.Tensor:
        frozen = {k: v.detach() for k, v in p.items()}
        return td_loss(net, p, frozen, query, 0.9) + model_loss(net, p, query)

    def meta_grad(first_order: bool) -> tuple[torch.Tensor, Params]:
        v = flat([theta[n] for n in names]).requires_grad_()
        adapted, _ = adapt_step(
            net,
            unflat(v),
            {n: torch.tensor(alpha) for n in names},
            support,
            inner,
            first_order=first_order,
        )
        return torch.autograd.grad(outer_of(adapted), v)[0], adapted

    g_fo, adapted = meta_grad(True)
    g_so, _ = meta_grad(False)
    v_prime = flat([adapted[n].detach() for n in names]).requires_grad_()
    grad_at_adapted = torch.autograd.grad(outer_of(unflat(v_prime)), v_prime)[0]
    torch.testing.assert_close(g_fo, grad_at_adapted)

    hess = torch.autograd.functional.hessian(
        lambda v: inner_loss(net, unflat(v), support, inner), flat([theta[n] for n in names])
    )
    torch.testing.assert_close(hess, hess.T, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(g_so, g_fo - alpha * hess @ g_fo, atol=1e-5, rtol=1e-4)
    assert float((g_so - g_fo).norm()) > 1e-3 * float(g_fo.norm())


# ---------------------------------------------- torch.func vs explicit autograd.grad


def explicit_adapt(
    net: QNetwork, params: Params, lrs: Params, batch: Batch, inner: InnerLoss
) -> Params:
    """The textbook MAML inner step: torch.autograd.grad with create_graph=True."""
    names = list(lrs)
    loss = inner_loss(net, params, batch, inner)
    grads = torch.autograd.grad(
        loss, [params[n] for n in names], create_graph=True, materialize_grads=True
    )
    return {**params, **{n: params[n] - lrs[n] * g for n, g in zip(names, grads, strict=True)}}


@pytest.mark.parametrize("kind", ["td", "model", "td+model"])
def test_torch_func_step_matches_explicit_create_graph(kind: str) -> None:
    """Two second-order steps with Meta-SGD lrs: same meta-gradient for params and lrs."""
    net = tiny_net()
    inner = InnerLoss(kind, gamma=0.95)
    support, query = random_batch(4), random_batch(5)
    names = [n for n in net.params() if n != "context"]

    def meta_grads(step) -> list[torch.Tensor]:
        params = {k: v.clone().requires_grad_() for k, v in net.params().items()}
        lrs = {n: torch.full(params[n].shape, 0.05).requires_grad_() for n in names}
        p = params
        for _ in range(2):
            p = step(p, lrs)
        frozen = {k: v.detach() for k, v in p.items()}
        outer = td_loss(net, p, frozen, query, 0.95) + model_loss(net, p, query)
        return list(torch.autograd.grad(outer, [*params.values(), *lrs.values()]))

    via_func = meta_grads(lambda p, lrs: adapt_step(net, p, lrs, support, inner)[0])
    via_autograd = meta_grads(lambda p, lrs: explicit_adapt(net, p, lrs, support, inner))
    for a, b in zip(via_func, via_autograd, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    assert float(flat(via_func).norm()) > 0


# ------------------------------------------------------------------- Meta-SGD lrs


def test_metasgd_learning_rates_receive_gradients() -> None:
    net = tiny_net()
    params = {k: v.clone().requires_grad_() for k, v in net.params().items()}
    names = adapted_names("metasgd", list(params))
    lrs = {n: torch.full(params[n].shape, 0.05).requires_grad_() for n in names}
    inner = InnerLoss("td+model", gamma=0.9)
    adapted, _ = adapt_step(net, params, lrs, random_batch(6), inner)
    query = random_batch(7)
    frozen = {k: v.detach() for k, v in adapted.items()}
    outer = td_loss(net, adapted, frozen, query, 0.9) + model_loss(net, adapted, query)
    grads = torch.autograd.grad(outer, list(lrs.values()))
    for n, g in zip(names, grads, strict=True):
        assert g.shape == lrs[n].shape
        assert float(g.abs().sum()) > 1e-6, f"no gradient reaches the lr of {n}"
    # With first_order the lrs still get a gradient (the step is linear in them) ...
    adapted_fo, _ = adapt_step(net, params, lrs, random_batch(6), inner, first_order=True)
    frozen = {k: v.detach() for k, v in adapted_fo.items()}
    outer_fo = td_loss(net, adapted_fo, frozen, query, 0.9) + model_loss(net, adapted_fo, query)
    assert all(float(g.abs().sum()) > 0 for g in torch.autograd.grad(outer_fo, list(lrs.values())))


def tiny_meta_learner(algorithm: str, *overrides: str) -> MetaLearner:
    """A two-task cart-pole MetaLearner with small rings, after two rounds of collection."""
    cfg = load_config(
        CAVIA_YAML,
        [
            f"algorithm={algorithm}",
            "network.hidden=[16, 16]",
            "dqn.total_steps=1000",
            "logging.progress=false",
            "logging.tensorboard=false",
            "meta.task_pool=2",
            "meta.meta_batch=2",
            "meta.collect_steps=10",
            "meta.updates_per_collect=1",
            "meta.query_batch=16",
            "adaptation.support_size=20",
            "adaptation.steps=2",
            "adaptation.loss=td+model",
            *overrides,
        ],
    )
    learner = MetaLearner(cfg)
    learner.iterate()
    learner.iterate()  # both support rings are now full (2 x 10 transitions each)
    return learner


def test_metasgd_learning_rates_learned_and_kept_positive() -> None:
    learner = tiny_meta_learner("metasgd", "meta.outer_lr=0.5", "adaptation.lr=0.01")
    try:
        assert learner.lrs and all(lr.requires_grad for lr in learner.lrs.values())
        before = {k: v.detach().clone() for k, v in learner.lrs.items()}
        for _ in range(3):
            learner._outer_step()
        after = learner.lrs
        # Adam moves them by ~outer_lr = 0.5 >> 0.01: without the clamp many would be negative.
        assert any(not torch.equal(before[k], after[k]) for k in before)
        floor = torch.tensor(LR_FLOOR)  # float32
        assert all(bool((v >= floor).all()) for v in after.values())
        assert any(bool((v == floor).any()) for v in after.values()), "clamp never engaged"
        assert all(bool(torch.isfinite(v).all()) for v in after.values())
    finally:
        learner.close()


# ------------------------------------------------------------------- ANIL and CAVIA


def test_anil_step_leaves_the_body_bit_identical() -> None:
    net = tiny_net(context_dim=0)
    params = net.params()
    heads = adapted_names("anil", list(params))
    assert set(heads) == {"q_head.weight", "q_head.bias", "model_head.weight", "model_head.bias"}
    new, _ = adapt_step(
        net,
        params,
        {n: torch.tensor(0.1) for n in heads},
        random_batch(8),
        InnerLoss("td+model", gamma=0.9),
    )
    for n in params:
        if n in heads:
            assert not torch.equal(new[n], params[n]), f"head {n} did not adapt"
        else:
            assert torch.equal(new[n], params[n]), f"body {n} changed"


@pytest.mark.parametrize("kind", ["td", "model", "td+model"])
def test_cavia_step_changes_only_the_context(kind: str) -> None:
    net = tiny_net(context_dim=2)
    params = net.params()
    names = adapted_names("cavia", list(params))
    assert names == ["context"]
    new, _ = adapt_step(
        net, params, {"context": torch.tensor(0.5)}, random_batch(9), InnerLoss(kind, gamma=0.9)
    )
    assert not torch.equal(new["context"], params["context"])
    for n in params:
        if n != "context":
            assert torch.equal(new[n], params[n]), f"{n} changed"


def test_non_cavia_methods_never_adapt_the_context() -> None:
    names = ["context", "body.0.weight", "q_head.weight", "q_head.bias", "model_head.bias"]
    for algorithm in ("maml", "fomaml", "metasgd", "reptile"):
        assert "context" not in adapted_names(algorithm, names)
        assert set(adapted_names(algorithm, names)) == set(names) - {"context"}


# ------------------------------------------------------------------------- Reptile


def test_reptile_moves_the_meta_parameters_toward_the_adapted_ones() -> None:
    learner = tiny_meta_learner("reptile", "meta.reptile_step=0.5", "adaptation.lr=0.05")
    try:
        # Both support rings are full and the meta-batch is the whole pool, so the support
        # data of the outer step (and thus every adapted parameter) is known in advance.
        assert all(len(s.support) == s.support.capacity for s in learner.slots)
        meta = {k: v.detach().clone() for k, v in learner.meta_params.items()}
        deltas = []
        for slot in learner.slots:
            adapted = learner._adapt(dict(meta), slot.support.all(), first_order=True)
            deltas.append({k: adapted[k] - meta[k] for k in learner.lrs})
        mean_delta = {k: torch.stack([d[k] for d in deltas]).mean(0) for k in learner.lrs}

        learner._outer_step()
        moved = {k: learner.meta_params[k].detach() - meta[k] for k in learner.lrs}
        for k in learner.lrs:
            torch.testing.assert_close(moved[k], 0.5 * mean_delta[k], atol=1e-6, rtol=1e-4)
        dot = float(flat(list(moved.values())) @ flat(list(mean_delta.values())))
        assert dot > 0
        assert float(flat(list(mean_delta.values())).norm()) > 1e-4  # a real displacement
        # Reptile takes no Adam step: nothing else moved.
        for k in set(meta) - set(learner.lrs):
            assert torch.equal(learner.meta_params[k].detach(), meta[k])
    finally:
        learner.close()


# ----------------------------------------------------------- stop-gradient TD targets


def test_td_inner_loss_has_a_stop_gradient_target() -> None:
    net = tiny_net(context_dim=0)
    params = net.params()
    batch = random_batch(10)
    inner = InnerLoss("td", gamma=0.9, huber_delta=1.0)
    names = list(params)

    def real(*values: torch.Tensor) -> torch.Tensor:
        return inner_loss(net, dict(zip(names, values, strict=True)), batch, inner)

    with torch.no_grad():
        q_next = q_and_delta(net, params, batch.next_obs)[0]
        const = double_dqn_target(q_next, q_next, batch.reward, batch.terminated, 0.9)

    def with_constant_target(*values: torch.Tensor) -> torch.Tensor:
        q = q_and_delta(net, dict(zip(names, values, strict=True)), batch.obs)[0]
        q_sa = q.gather(1, batch.action[:, None]).squeeze(1)
        return torch.nn.functional.huber_loss(q_sa, const, delta=1.0)

    def with_live_target(*values: torch.Tensor) -> torch.Tensor:
        p = dict(zip(names, values, strict=True))
        q_sa = q_and_delta(net, p, batch.obs)[0].gather(1, batch.action[:, None]).squeeze(1)
        q_n = q_and_delta(net, p, batch.next_obs)[0]
        y = double_dqn_target(q_n, q_n, batch.reward, batch.terminated, 0.9)
        return torch.nn.functional.huber_loss(q_sa, y, delta=1.0)

    argnums = tuple(range(len(names)))
    values = [params[n] for n in names]
    g_real = torch.func.grad(real, argnums=argnums)(*values)
    g_const = torch.func.grad(with_constant_target, argnums=argnums)(*values)
    g_live = torch.func.grad(with_live_target, argnums=argnums)(*values)
    torch.testing.assert_close(flat(list(g_real)), flat(list(g_const)))
    # The check has teeth: differentiating through the target gives another gradient.
    assert float((flat(list(g_live)) - flat(list(g_const))).norm()) > 1e-3
    # Same through adapt_step itself.
    new, _ = adapt_step(net, params, {n: torch.tensor(1.0) for n in names}, batch, inner)
    for n, g in zip(names, g_const, strict=True):
        torch.testing.assert_close(new[n], params[n] - g)
