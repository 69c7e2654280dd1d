"""A method family defined here, in the test module, registered with one call, and then the
whole chain works on it with no other file edited: ``robometa train`` with
``algorithm: toy-dueling``, ``robometa eval``, ``robometa export`` and the torch-free runtime.

The toy is DQN with a dueling head (Wang et al. 2016): Q = V + A - mean(A), with a value head
the builtin Q-network does not have, so the test can tell that the family's own network was
trained, saved, rebuilt, traced into the bundle and run on the device. A second test installs
a family the way a third-party package does (an entry point in the ``robometa.algorithms``
group) and trains it through the ``robometa`` command in a fresh process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from robometa.deploy import Adapter
from robometa.deploy.cli import main as deploy_main
from torch import Tensor, nn

import robometa.algorithms as algorithms
from robometa.cli import main as robometa_main
from robometa.config import config_from_dict
from robometa.methods.dqn import DQN
from robometa.methods.gradient import VARIANTS, MetaLearner, Variant
from robometa.networks import NetworkSpec, QNetwork, q_values
from robometa.policy import Policy
from robometa.train import train

TOY = "toy-dueling"
ROOT = Path(__file__).resolve().parents[1]


class DuelingQNetwork(QNetwork):
    """The builtin body and dynamics head, with a dueling Q head: Q = V + A - mean(A)."""

    def __init__(self, spec: NetworkSpec) -> None:
        super().__init__(spec)
        self.value_head = nn.Linear(spec.hidden[-1], 1)
        nn.init.constant_(self.value_head.bias, 3.0)  # V visible in Q from the first step

    def forward(self, obs: Tensor, with_model: bool = True) -> tuple[Tensor, Tensor | None]:
        h = self.features(obs)
        adv = self.q_head(h)
        q = self.value_head(h) + adv - adv.mean(dim=1, keepdim=True)
        if not with_model:
            return q, None
        delta = self.model_head(h).view(obs.shape[0], self.spec.n_actions, self.spec.obs_dim)
        return q, delta


class DuelingDQN(DQN):
    """DQN, trained and saved with the dueling network: the family's only difference."""

    network_class = DuelingQNetwork


CONFIG = textwrap.dedent(
    f"""\
    algorithm: {TOY}
    seed: 0
    env:
      id: robometa/CartPole-v0
      tasks: train
      num_envs: 2
    network:
      hidden: [16, 16]
    adaptation:
      steps: 2
      support_size: 32
    dqn:
      total_steps: 600
      learning_starts: 200
      buffer_size: 1000
      batch_size: 32
      target_update_interval: 50
    logging:
      eval_every: 0
      log_every: 300
      checkpoint_every: 300
      progress: false
    """
)


@pytest.fixture
def toy_family():
    spec = algorithms.register(
        TOY,
        f"{__name__}:DuelingDQN",
        family="dqn",
        fine_tunes=True,
        summary="DQN with a dueling head (a test's toy family)",
    )
    try:
        yield spec
    finally:
        algorithms.unregister(TOY)


def test_a_family_registered_with_one_call_trains_evaluates_exports_and_deploys(
    toy_family, tmp_path: Path, one_thread, capsys
) -> None:
    config = tmp_path / "toy.yaml"
    config.write_text(CONFIG)
    run, report, bundle = tmp_path / "run", tmp_path / "eval", tmp_path / "bundle"

    assert robometa_main(["train", str(config), "--out", str(run)]) == 0
    policy = Policy.load(run)
    assert policy.algorithm == TOY
    assert type(policy.net) is DuelingQNetwork  # rebuilt by the family, not the builtin
    assert "value_head.weight" in policy.params
    obs = torch.randn(16, policy.net.spec.obs_dim)
    q = q_values(policy.net, policy.params, obs)
    assert not torch.allclose(q, policy.net.q_head(policy.net.features(obs)), atol=1e-3)

    assert (
        robometa_main(["eval", str(run), "--n-tasks", "2", "--episodes", "1", "--out", str(report)])
        == 0
    )
    results = json.loads((report / "results.json").read_text())
    assert set(results["returns"]) == {TOY, f"{TOY}+finetune"}  # fine_tunes=True adds it
    for group in results["random_returns"]:
        returns = results["returns"][TOY][0][group]
        assert len(returns) == 2 and all(np.isfinite(r[0]) for r in returns)

    assert robometa_main(["export", str(run), "--out", str(bundle)]) == 0
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["algorithm"] == TOY
    assert manifest["kind"] == "gradient"
    assert "value_head.weight" in manifest["parameters"]

    adapter = Adapter.load(bundle)
    onnx_q = np.stack([adapter.q_values(o) for o in obs.numpy()])
    np.testing.assert_allclose(onnx_q, q.numpy(), atol=1e-5)
    assert [adapter.act(o) for o in obs.numpy()] == q.argmax(1).tolist()
    capsys.readouterr()


def test_the_toy_bundle_adapts_in_the_torch_free_runtime(
    toy_family, tmp_path: Path, one_thread
) -> None:
    from robometa.bundle import export_bundle
    from robometa.testing import random_policy

    template = random_policy("dqn", hidden=(16, 16), seed=1)
    net = DuelingQNetwork(template.net.spec)
    net.load_state_dict({**net.state_dict(), **template.net.state_dict()})
    policy = Policy(
        algorithm=TOY,
        env_id=template.env_id,
        net=net,
        params=net.params(),
        lrs={},
        inner=template.inner,
        adapt_steps=2,
        support_size=32,
    )
    bundle = export_bundle(policy, tmp_path / "bundle")
    # A process where torch cannot be imported: the deploy CLI runs the toy's bundle on the
    # simulated cart-pole, adapting it (fine-tuning, since the toy has no learned rates).
    script = textwrap.dedent(
        f"""\
        import sys
        sys.modules["torch"] = None  # any import of torch now fails
        from robometa.deploy.cli import main
        sys.exit(main(["adapt", "--bundle", {str(bundle)!r}, "--sample-test-task", "0",
                       "--rounds", "1", "--support", "32", "--steps", "2",
                       "--eval-episodes", "1"]))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert "torch" not in done.stderr
    assert deploy_main(["info", "--bundle", str(bundle)]) == 0


PLUGIN = textwrap.dedent(
    '''\
    """A third-party package's robometa plug-in: a DQN with a dueling head."""
    from torch import nn

    from robometa.methods.dqn import DQN
    from robometa.networks import QNetwork


    class WideHeadQNetwork(QNetwork):
        def __init__(self, spec):
            super().__init__(spec)
            self.value_head = nn.Linear(spec.hidden[-1], 1)

        def forward(self, obs, with_model=True):
            h = self.features(obs)
            adv = self.q_head(h)
            q = self.value_head(h) + adv - adv.mean(dim=1, keepdim=True)
            if not with_model:
                return q, None
            n, d = self.spec.n_actions, self.spec.obs_dim
            return q, self.model_head(h).view(obs.shape[0], n, d)


    class PluginDQN(DQN):
        network_class = WideHeadQNetwork


    def register():
        from robometa.algorithms import register

        register("plugin-dueling", "robometa_toy_plugin:PluginDQN", family="dqn",
                 summary="a plug-in's dueling DQN")
    '''
)


def test_an_installed_package_registers_a_family_through_the_entry_point_group(
    tmp_path: Path,
) -> None:
    site = tmp_path / "site"
    (site / "robometa_toy_plugin-0.1.dist-info").mkdir(parents=True)
    (site / "robometa_toy_plugin.py").write_text(PLUGIN)
    info = site / "robometa_toy_plugin-0.1.dist-info"
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: robometa-toy-plugin\nVersion: 0.1\n"
    )
    (info / "entry_points.txt").write_text(
        "[robometa.algorithms]\nplugin-dueling = robometa_toy_plugin:register\n"
    )
    config = tmp_path / "plugin.yaml"
    config.write_text(CONFIG.replace(TOY, "plugin-dueling"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "robometa"),  # the installed command
            "train",
            str(config),
            "--out",
            str(tmp_path / "run"),
            "--steps",
            "300",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    state = torch.load(tmp_path / "run" / "policy.pt", weights_only=True)
    assert state["algorithm"] == "plugin-dueling"
    assert "value_head.weight" in state["params"]
    listed = subprocess.run(
        [sys.executable, "-c", "import robometa.algorithms as a; print(a.names())"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert "plugin-dueling" in listed.stdout, listed.stderr


class FirstOrderCaviaLearner(MetaLearner):
    """A new member of the gradient family: CAVIA's context, without second-order terms."""

    variants: ClassVar[dict[str, Variant]] = {
        **VARIANTS,
        "toy-fo-cavia": Variant(adapts="context", first_order=True),
    }


def test_a_new_gradient_variant_is_one_table_entry_and_one_register_call(
    tmp_path: Path,
) -> None:
    algorithms.register(
        "toy-fo-cavia", f"{__name__}:FirstOrderCaviaLearner", family="gradient", adapts=True
    )
    try:
        cfg = config_from_dict(
            {
                "algorithm": "toy-fo-cavia",
                "network": {"hidden": [16], "context_dim": 2},
                "adaptation": {"loss": "model", "steps": 1, "support_size": 20},
                "dqn": {"total_steps": 200},
                "meta": {"meta_batch": 2, "task_pool": 2, "collect_steps": 25},
                "logging": {"eval_every": 0, "progress": False},
            }
        )
        learner = FirstOrderCaviaLearner(cfg)
        assert learner.first_order and list(learner.lrs) == ["context"]
        learner.close()
        policy = train(cfg, tmp_path / "run")
        assert Policy.load(tmp_path / "run").algorithm == "toy-fo-cavia"
        assert list(policy.lrs) == ["context"]
        with pytest.raises(ValueError, match="FirstOrderCaviaLearner trains .*not 'dqn'"):
            FirstOrderCaviaLearner(config_from_dict({"algorithm": "dqn"}))
    finally:
        algorithms.unregister("toy-fo-cavia")


class NoRatesDQN(DQN):
    """A family that says it adapts but keeps no inner learning rates (as an inference-based
    family would): evaluation must not report gradient steps that change nothing."""

    def policy(self) -> Policy:
        policy = super().policy()
        policy.lrs = {}
        return policy


class InferringDQN(NoRatesDQN):
    """The same family with its own adaptation: the support set picks the greedy action of
    the support's most frequent action (a stand-in for inferring a context)."""

    seen: ClassVar[list[int]] = []

    @classmethod
    def evaluation_method(cls, policy, name, support_epsilon, lrs=None):
        from robometa.evaluate import PolicyMethod

        base = PolicyMethod(name, policy, support_epsilon, lrs={})

        class Inferring:
            env_id, privileged = policy.env_id, policy.privileged
            support_size = policy.support_size

            def __init__(self) -> None:
                self.name, self.support_epsilon = name, support_epsilon

            def initial_actor(self):
                return base.initial_actor()

            def adapted_actors(self, support, steps):
                cls.seen.append(len(support.reward))
                favourite = int(np.bincount(support.action.numpy()).argmax())
                return [base.initial_actor() if k == 0 else (lambda _o: favourite) for k in steps]

        return Inferring()


def _tiny_run(tmp_path: Path, algorithm: str) -> Path:
    config = tmp_path / f"{algorithm}.yaml"
    config.write_text(
        CONFIG.replace(TOY, algorithm).replace("total_steps: 600", "total_steps: 300")
    )
    run = tmp_path / algorithm
    assert robometa_main(["train", str(config), "--out", str(run)]) == 0
    return run


def test_a_family_that_adapts_without_gradients_brings_its_own_evaluation(
    tmp_path: Path, capsys
) -> None:
    algorithms.register("toy-norates", f"{__name__}:NoRatesDQN", family="dqn", adapts=True)
    algorithms.register("toy-infer", f"{__name__}:InferringDQN", family="dqn", adapts=True)
    try:
        # Without its own evaluation method: a clear error, not steps that change nothing.
        run = _tiny_run(tmp_path, "toy-norates")
        capsys.readouterr()
        code = robometa_main(["eval", str(run), "--n-tasks", "1", "--out", str(tmp_path / "e")])
        assert code == 2
        assert "adapts, but its policy has no inner learning rates" in capsys.readouterr().err
        config = tmp_path / "infer.yaml"
        config.write_text(
            CONFIG.replace(TOY, "toy-infer").replace("eval_every: 0", "eval_every: 300")
        )
        run = tmp_path / "infer"
        assert robometa_main(["train", str(config), "--out", str(run), "--steps", "300"]) == 0
        assert InferringDQN.seen  # model selection adapted through the family's method
        InferringDQN.seen.clear()
        out = tmp_path / "eval"
        args = ["eval", str(run), "--n-tasks", "2", "--episodes", "1", "--curve", "0,2"]
        assert robometa_main([*args, "--out", str(out)]) == 0
        results = json.loads((out / "results.json").read_text())
        assert results["steps"] == [0, 2] and set(results["returns"]) == {"toy-infer"}
        assert len(InferringDQN.seen) == 4 and all(n == 32 for n in InferringDQN.seen)
    finally:
        algorithms.unregister("toy-norates")
        algorithms.unregister("toy-infer")
    capsys.readouterr()


class ContextVariantLearner(MetaLearner):
    """A plug-in variant registered without a config check."""

    variants: ClassVar[dict[str, Variant]] = {"toy-ctx": Variant(adapts="context")}


class NoStepsDQN(DQN):
    @property
    def steps_per_iteration(self) -> int:
        return 0


def test_a_plug_in_gets_its_rules_from_its_variant_and_the_harness(tmp_path: Path) -> None:
    algorithms.register("toy-ctx", f"{__name__}:ContextVariantLearner", family="gradient")
    algorithms.register("toy-nosteps", f"{__name__}:NoStepsDQN", family="dqn")
    try:
        cfg = config_from_dict({"algorithm": "toy-ctx", "network": {"context_dim": 0}})
        with pytest.raises(ValueError, match="'network.context_dim': toy-ctx needs a context"):
            ContextVariantLearner(cfg)
        cfg = config_from_dict({"algorithm": "toy-nosteps", "dqn": {"total_steps": 100}})
        with pytest.raises(ValueError, match="takes 0 env steps per iteration; it must take"):
            train(cfg, tmp_path / "run")
    finally:
        algorithms.unregister("toy-ctx")
        algorithms.unregister("toy-nosteps")


def test_a_policy_whose_parameters_do_not_fit_its_family_is_refused(
    toy_family, tmp_path: Path
) -> None:
    from robometa.testing import random_policy

    policy = random_policy("dqn", hidden=(8,))
    state = policy.state()
    state["algorithm"] = TOY  # a plain Q-network's parameters, labelled as the dueling toy
    torch.save(state, tmp_path / "policy.pt")
    with pytest.raises(ValueError, match=r"policy\.pt: its parameters do not fit the network"):
        Policy.load(tmp_path / "policy.pt")
