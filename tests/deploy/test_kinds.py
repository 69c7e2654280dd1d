"""Bundle kinds: the manifest's ``kind`` picks the runtime behind the one ``Adapter`` API, a
missing ``kind`` is ``gradient``, and a plug-in kind is one ``register_kind`` call."""

from __future__ import annotations

import json
import math
import re
import shutil
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fake_robot import FakeCartPole
from robometa.deploy import Adapter, Bundle, BundleError
from robometa.deploy import kinds as kinds_module
from robometa.deploy.bundle import MANIFEST_FILE
from robometa.deploy.gradient import GRADIENT_LAYOUT, GradientAdapter
from robometa.deploy.kinds import DEFAULT_KIND, known_kinds, register_kind, runtime_class
from robometa.deploy.loop import collect

OBS = np.array([0.01, 0.0, 0.02, 0.0], np.float32)
#: robometa's own bundle kinds, in registration order
BUILTIN_KINDS = ("gradient", "context", "history", "taskrate", "cavia-encoder", "recurrent")

TOY_KIND = '''
"""A plug-in bundle kind: the gradient runtime that also counts its actions."""

from robometa.deploy.gradient import GradientAdapter


class ToyAdapter(GradientAdapter):
    def __init__(self, bundle, **kwargs):
        super().__init__(bundle, **kwargs)
        self.acted = 0

    def act(self, obs):
        self.acted += 1
        return super().act(obs)


class NotAnAdapter:
    pass
'''


def with_manifest(source: Path, out: Path, **changes: object) -> Path:
    """A copy of a bundle with top-level manifest keys set (``None``: removed). The manifest
    has no hash of its own (it holds the others), so nothing needs rehashing; the digest
    changes with it."""
    shutil.copytree(source, out)
    doc = json.loads((out / MANIFEST_FILE).read_text())
    for key, value in changes.items():
        if value is None:
            doc.pop(key, None)
        else:
            doc[key] = value
    (out / MANIFEST_FILE).write_text(json.dumps(doc))
    return out


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """A private copy of the kind registry and an importable plug-in module ``toy_kind``."""
    monkeypatch.setattr(kinds_module, "KINDS", dict(kinds_module.KINDS))
    plugin = tmp_path / "plugin"
    plugin.mkdir()
    (plugin / "toy_kind.py").write_text(textwrap.dedent(TOY_KIND))
    monkeypatch.syspath_prepend(str(plugin))
    yield
    sys.modules.pop("toy_kind", None)


class TestManifestKind:
    def test_a_manifest_without_kind_is_a_gradient_bundle(self, cavia, tmp_path: Path) -> None:
        path = with_manifest(cavia.path, tmp_path / "old", kind=None)
        assert "kind" not in json.loads((path / MANIFEST_FILE).read_text())
        bundle = Bundle.load(path)
        assert bundle.kind == DEFAULT_KIND == "gradient"
        assert bundle.layout is GRADIENT_LAYOUT
        adapter = Adapter.load(path)
        assert type(adapter) is GradientAdapter and isinstance(adapter, Adapter)
        assert adapter.act(OBS) == Adapter.load(cavia.path).act(OBS)

    def test_an_explicit_gradient_kind_loads_the_same(self, cavia, tmp_path: Path) -> None:
        path = with_manifest(cavia.path, tmp_path / "explicit", kind="gradient")
        assert Bundle.load(path).kind == "gradient"
        assert type(Adapter.load(path)) is GradientAdapter

    @pytest.mark.parametrize("kind", ["nosuch", 7, ["gradient"], "", "Gradient"])
    def test_an_unknown_kind_is_refused_naming_key_value_file_and_known_kinds(
        self, cavia, tmp_path: Path, kind: object
    ) -> None:
        path = with_manifest(cavia.path, tmp_path / "unknown", kind=kind)
        with pytest.raises(BundleError) as refused:
            Bundle.load(path)
        message = str(refused.value)
        assert message.startswith(f"{path / MANIFEST_FILE}: kind is {kind!r}, expected ")
        assert f"a known bundle kind ({', '.join(BUILTIN_KINDS)})" in message
        with pytest.raises(BundleError, match=r"kind is .*, expected a known bundle kind"):
            Adapter.load(path)

    def test_a_graph_the_kind_does_not_have_is_refused(self, cavia, tmp_path: Path) -> None:
        doc = json.loads((cavia.path / MANIFEST_FILE).read_text())
        graphs = {**doc["graphs"], "encoder": dict(doc["graphs"]["policy"], file="encoder.onnx")}
        path = with_manifest(cavia.path, tmp_path / "extra", graphs=graphs)
        with pytest.raises(
            BundleError,
            match=r"graphs lists 'encoder', not a graph of a 'gradient' bundle \(its graphs: "
            r"policy, adapt\)",
        ):
            Bundle.load(path)

    def test_the_gradient_layout_declares_the_graphs_and_files(self) -> None:
        assert list(GRADIENT_LAYOUT.graphs) == ["policy", "adapt"]
        assert GRADIENT_LAYOUT.files == ("policy.onnx", "adapt.onnx", "params.npz", "lrs.npz")
        assert GradientAdapter.layout is GRADIENT_LAYOUT


class TestRegisterKind:
    def test_a_registered_kind_is_what_adapter_load_builds(
        self, cavia, tmp_path: Path, registry: None
    ) -> None:
        register_kind("toy", "toy_kind:ToyAdapter")
        assert known_kinds() == (*BUILTIN_KINDS, "toy")
        path = with_manifest(cavia.path, tmp_path / "toy", kind="toy")
        bundle = Bundle.load(path)
        assert bundle.kind == "toy"
        for adapter in (Adapter.load(path, capacity=30), Adapter(bundle, capacity=30)):
            assert type(adapter).__name__ == "ToyAdapter" and type(adapter).__module__ == "toy_kind"
            assert isinstance(adapter, GradientAdapter) and isinstance(adapter, Adapter)
            assert adapter.buffer.capacity == 30  # the keyword arguments reach the runtime
            assert adapter.act(OBS) == Adapter.load(cavia.path).act(OBS)
            assert adapter.acted == 1
            accepted = collect(adapter, FakeCartPole(), 30, 0.3, np.random.default_rng(0))
            assert accepted == 30 and adapter.adapt(steps=1).n_transitions == 30
        # The parent runtime called directly serves its subclass's kind as itself.
        assert type(GradientAdapter(bundle)) is GradientAdapter
        assert type(Adapter.load(cavia.path)) is GradientAdapter

    def test_a_runtime_refuses_a_bundle_of_a_kind_it_does_not_serve(
        self, cavia, registry: None
    ) -> None:
        register_kind("toy", "toy_kind:ToyAdapter")
        toy = runtime_class("toy")
        with pytest.raises(BundleError, match=r"a 'gradient' bundle, served by GradientAdapter"):
            toy(Bundle.load(cavia.path))

    def test_a_kind_is_unknown_until_registered(self, cavia, tmp_path: Path, registry) -> None:
        path = with_manifest(cavia.path, tmp_path / "toy", kind="toy")
        with pytest.raises(BundleError, match=r"kind is 'toy', expected a known bundle kind"):
            Bundle.load(path)
        register_kind("toy", "toy_kind:ToyAdapter")
        assert Bundle.load(path).kind == "toy"
        known = re.escape(f"known bundle kind ({', '.join(BUILTIN_KINDS)}, toy)")
        with pytest.raises(BundleError, match=known):
            Bundle.load(with_manifest(cavia.path, tmp_path / "other", kind="other"))

    def test_a_duplicate_or_malformed_registration_is_refused(self, registry: None) -> None:
        with pytest.raises(ValueError, match=r"'gradient' is already registered \(runtime robo"):
            register_kind("gradient", "toy_kind:ToyAdapter")
        for name in ("", "Toy", "1toy", "to y", "x" * 65, 3):
            with pytest.raises(ValueError, match=r"bundle kind name .* must be 1 to 64"):
                register_kind(name, "toy_kind:ToyAdapter")  # type: ignore[arg-type]
        for entry in ("toy_kind", "toy_kind:", ":ToyAdapter", "toy kind:X", "a:b:c"):
            with pytest.raises(ValueError, match=r"entry point .* must be 'module:Class'"):
                register_kind("toy", entry)
        assert known_kinds() == BUILTIN_KINDS

    def test_lookups_name_the_kind_and_entry_point(self, registry: None) -> None:
        with pytest.raises(ValueError, match=r"unknown bundle kind 'nosuch' \(known kinds: gr"):
            runtime_class("nosuch")
        register_kind("missing", "no_such_module_here:Runtime")
        with pytest.raises(ImportError, match=r"'missing': cannot import its runtime no_such"):
            runtime_class("missing")
        register_kind("plain", "toy_kind:NotAnAdapter")
        with pytest.raises(TypeError, match=r"'plain': its runtime toy_kind:NotAnAdapter is not"):
            runtime_class("plain")
        assert runtime_class("gradient") is GradientAdapter


class TestRuntimeModule:
    """``robometa.deploy.runtime`` keeps every public name it had before the split."""

    NAMES = (
        "BUFFER_PREFIX DEFAULT_CAPACITY DEFAULT_SUPPORT_EPSILON MAX_ADAPT_STEPS MAX_CAPACITY "
        "MAX_THREADS REJECTED_PREFIX REJECTION_REASONS STATE_FORMAT TEMP_MARKER AdaptReport "
        "Adapter Bundle BundleError StateError TransitionBuffer Transitions WriteError "
        "atomic_write check_count check_number check_writable remove_stale_temp_files "
        "session_options"
    ).split()

    def test_every_public_name_is_still_there(self) -> None:
        import robometa.deploy.runtime as runtime

        missing = [name for name in self.NAMES if not hasattr(runtime, name)]
        assert missing == []
        assert (runtime.MAX_ADAPT_STEPS, runtime.MAX_CAPACITY, runtime.MAX_THREADS) == (
            10_000,
            1_000_000,
            256,
        )

    def test_the_cli_builds_its_adapter_directly(self, cavia) -> None:
        adapter = Adapter(Bundle.load(cavia.path), capacity=10, tolerance=math.inf)
        assert type(adapter) is GradientAdapter and adapter.tolerance == math.inf


class TestCollectThroughTheSharedLoop:
    @pytest.mark.parametrize("reward", [None, "1", 10**400, math.nan])
    def test_a_bad_robot_reward_is_rejected_and_counted_not_raised(
        self, cavia, reward: object
    ) -> None:
        class BadReward(FakeCartPole):
            steps = 0

            def step(self, action):
                obs, _, terminated, truncated, info = super().step(action)
                self.steps += 1
                return obs, reward if self.steps == 3 else 1.0, terminated, truncated, info

        adapter = Adapter.load(cavia.path, capacity=20)
        assert collect(adapter, BadReward(), 20, 0.5, np.random.default_rng(0)) == 19
        assert sum(adapter.rejected.values()) == 1 and len(adapter.buffer) == 19

    def test_the_random_numbers_are_drawn_one_per_step_and_one_per_exploring_step(
        self, cavia
    ) -> None:
        """One ``rng.random()`` per step, then ``rng.integers(n_actions)`` only when the step
        explores; episode ``i`` starts from ``reset(seed=seed + i)``."""

        class Recording(FakeCartPole):
            def __init__(self) -> None:
                super().__init__(max_steps=7)
                self.actions: list[int] = []
                self.seeds: list[int | None] = []

            def reset(self, *, seed=None):
                self.seeds.append(seed)
                return super().reset(seed=seed)

            def step(self, action):
                self.actions.append(action)
                return super().step(action)

        adapter = Adapter.load(cavia.path)
        robot, rng = Recording(), np.random.default_rng(5)
        collect(adapter, robot, 25, 0.4, rng, seed=11, max_episode_steps=5)
        replay, twin = np.random.default_rng(5), Recording()
        obs, _ = twin.reset(seed=11)
        for t, action in enumerate(robot.actions):
            expected = int(replay.integers(3)) if replay.random() < 0.4 else adapter.act(obs)
            assert action == expected, t
            obs, _, terminated, truncated, _ = twin.step(action)
            if terminated or truncated or twin.t >= 5:
                obs, _ = twin.reset(seed=11 + len(twin.seeds))
        assert robot.seeds == twin.seeds and robot.seeds[:3] == [11, 12, 13]
        assert len(robot.actions) == 25 and rng.random() == replay.random()  # no other draws


class TestInstalledKind:
    def test_an_installed_package_adds_its_kind_through_the_entry_point_group(
        self, cavia, tmp_path: Path
    ) -> None:
        """A package declaring ``[robometa.bundle_kinds] toy = toy_kind:ToyAdapter`` needs no
        registering code on the device: loading its bundle finds the runtime."""
        import os
        import subprocess

        site = tmp_path / "site"
        info = site / "toy_kind-0.1.dist-info"
        info.mkdir(parents=True)
        (site / "toy_kind.py").write_text(textwrap.dedent(TOY_KIND))
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-kind\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text(
            "[robometa.bundle_kinds]\ntoy = toy_kind:ToyAdapter\nBad Name = toy_kind:ToyAdapter\n"
        )
        path = with_manifest(cavia.path, tmp_path / "toy", kind="toy")
        script = textwrap.dedent(
            f"""\
            import sys, warnings
            sys.modules["torch"] = None
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                from robometa.deploy import Adapter
                from robometa.deploy.kinds import known_kinds
                adapter = Adapter.load({str(path)!r})
            print(known_kinds(), type(adapter).__module__, type(adapter).__name__)
            print([str(w.message) for w in caught])
            """
        )
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), *sys.path])}
        done = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env
        )
        assert done.returncode == 0, done.stderr
        first, second = done.stdout.splitlines()
        assert first == f"{(*BUILTIN_KINDS, 'toy')} toy_kind ToyAdapter"
        assert "'Bad Name'" in second and "lowercase" in second  # reported, not swallowed


STATIC_KIND = '''
"""A plug-in kind whose bundles hold only policy.onnx and params.npz: no inner loop."""

from robometa.deploy.adapter import Adapter
from robometa.deploy.bundle import PARAMS_ARRAY, BundleLayout, check_parameters
from robometa.deploy.gradient import POLICY_GRAPH_SPEC


def check(manifest, where, obs_dim):
    check_parameters(manifest, where)


class StaticRuntime(Adapter):
    layout = BundleLayout(
        graphs={"policy": POLICY_GRAPH_SPEC},
        arrays=(PARAMS_ARRAY,),
        sections=("parameters",),
        check_manifest=check,
    )
'''


@pytest.fixture
def static_kind(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """The kind ``static`` (module ``static_kind``) registered in a private registry copy."""
    monkeypatch.setattr(kinds_module, "KINDS", dict(kinds_module.KINDS))
    plugin = tmp_path / "static-plugin"
    plugin.mkdir()
    (plugin / "static_kind.py").write_text(textwrap.dedent(STATIC_KIND))
    monkeypatch.syspath_prepend(str(plugin))
    register_kind("static", "static_kind:StaticRuntime")
    yield
    sys.modules.pop("static_kind", None)


def static_copy(cavia, out: Path, **changes: object) -> Path:
    """The cavia bundle as a ``static`` one: without adapt.onnx, lrs.npz, inner, discount."""
    doc = json.loads((cavia.path / MANIFEST_FILE).read_text())
    graphs = {"policy": doc["graphs"]["policy"]}
    files = {k: v for k, v in doc["files"].items() if k not in ("adapt.onnx", "lrs.npz")}
    path = with_manifest(
        cavia.path, out, kind="static", inner=None, discount=None, graphs=graphs, files=files
    )
    for name in ("adapt.onnx", "lrs.npz"):
        (path / name).unlink()
    doc = json.loads((path / MANIFEST_FILE).read_text())
    for key, value in changes.items():
        if value is None:
            doc.pop(key, None)
        else:
            doc[key] = value
    (path / MANIFEST_FILE).write_text(json.dumps(doc))
    return path


class TestLayoutSections:
    """The generic reader checks what every kind shares; the rest is the kind's layout's."""

    def test_a_kind_without_an_inner_section_loads(
        self, cavia, tmp_path: Path, static_kind: None
    ) -> None:
        path = static_copy(cavia, tmp_path / "static")
        doc = json.loads((path / MANIFEST_FILE).read_text())
        assert not {"inner", "discount"} & set(doc)
        bundle = Bundle.load(path)
        assert bundle.kind == "static" and list(bundle.graphs) == ["policy.onnx"]
        assert sorted(bundle.params) == sorted(Bundle.load(cavia.path).params)
        assert bundle.lrs == {} and bundle.adapted == ()
        with pytest.raises(BundleError, match=r"manifest.json: a 'static' bundle has no discount"):
            _ = bundle.discount

    def test_the_kinds_own_sections_and_files_are_still_checked(
        self, cavia, tmp_path: Path, static_kind: None
    ) -> None:
        path = static_copy(cavia, tmp_path / "no-parameters", parameters=None)
        with pytest.raises(BundleError, match=r"manifest.json: missing key 'parameters'"):
            Bundle.load(path)
        path = static_copy(cavia, tmp_path / "with-lrs")
        shutil.copyfile(cavia.path / "lrs.npz", path / "lrs.npz")
        doc = json.loads((path / MANIFEST_FILE).read_text())
        doc["files"]["lrs.npz"] = json.loads((cavia.path / MANIFEST_FILE).read_text())["files"][
            "lrs.npz"
        ]
        (path / MANIFEST_FILE).write_text(json.dumps(doc))
        with pytest.raises(
            BundleError,
            match=r"files lists 'lrs.npz'; a bundle holds only policy.onnx, params.npz, "
            r"config.yaml besides manifest.json",
        ):
            Bundle.load(path)

    @pytest.mark.parametrize("key", ["inner", "discount", "parameters"])
    def test_a_gradient_bundle_without_its_sections_is_refused_as_before(
        self, cavia, tmp_path: Path, key: str
    ) -> None:
        path = with_manifest(cavia.path, tmp_path / f"no-{key}", **{key: None})
        with pytest.raises(BundleError) as refused:
            Bundle.load(path)
        assert str(refused.value) == f"{path / MANIFEST_FILE}: missing key {key!r}"

    def test_a_layout_declares_plain_distinct_file_names(self) -> None:
        from dataclasses import replace

        from robometa.deploy.bundle import PARAMS_ARRAY, BundleLayout
        from robometa.deploy.gradient import POLICY_GRAPH_SPEC

        policy = {"policy": POLICY_GRAPH_SPEC}
        for graphs, arrays in [
            (policy, (PARAMS_ARRAY, PARAMS_ARRAY)),
            ({"policy": replace(POLICY_GRAPH_SPEC, file="sub/policy.onnx")}, ()),
            ({"policy": replace(POLICY_GRAPH_SPEC, file="..")}, ()),
            (policy, (replace(PARAMS_ARRAY, file="manifest.json"),)),
            (policy, (replace(PARAMS_ARRAY, file="config.yaml"),)),
        ]:
            with pytest.raises(ValueError, match=r"distinct plain file names"):
                BundleLayout(graphs=graphs, arrays=arrays)
        with pytest.raises(ValueError, match=r"sections \['graphs'\] are shared by every kind"):
            BundleLayout(graphs=policy, sections=("graphs",))
