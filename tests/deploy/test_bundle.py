"""The bundle reader refuses anything it cannot vouch for, naming the file and the problem."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from robometa.deploy import Adapter, Bundle, BundleError, StateError
from robometa.deploy.bundle import (
    ADAPT_GRAPH,
    FORMAT_VERSION,
    MANIFEST_FILE,
    PARAMS_FILE,
    POLICY_GRAPH,
    REQUIRED_FILES,
    bundle_digest,
)


@pytest.fixture
def copy(cavia, tmp_path: Path) -> Path:
    out = tmp_path / "bundle"
    shutil.copytree(cavia.path, out)
    return out


class TestVerifiedBundle:
    def test_loads_with_meta_parameters_and_learning_rates(self, cavia) -> None:
        bundle = Bundle.load(cavia.path)
        assert bundle.manifest["format_version"] == FORMAT_VERSION
        for name, value in cavia.policy.params.items():
            np.testing.assert_array_equal(bundle.params[name], value.numpy())
        assert bundle.adapted == ("context",)
        np.testing.assert_allclose(bundle.lrs["context"], 0.5)
        assert bundle.obs_dim == 4 and bundle.n_actions == 3
        assert len(bundle.digest) == 64 and bundle.identity == bundle.digest

    def test_keeps_the_verified_graph_bytes(self, cavia) -> None:
        bundle = Bundle.load(cavia.path)
        for name in (POLICY_GRAPH, ADAPT_GRAPH):
            assert bundle.graph(name) == (cavia.path / name).read_bytes()


class TestDigest:
    """One identity over the manifest and every file: what a saved state is tied to."""

    def test_is_a_framed_sha256_of_the_manifest_and_every_file(self, cavia) -> None:
        files = {n: (cavia.path / n).read_bytes() for n in REQUIRED_FILES}
        manifest = (cavia.path / MANIFEST_FILE).read_bytes()
        assert Bundle.load(cavia.path).digest == bundle_digest(manifest, files)
        expected = hashlib.sha256(b"robometa-bundle\0")
        for name, data in [(MANIFEST_FILE, manifest), *sorted(files.items())]:
            expected.update(name.encode() + b"\0" + len(data).to_bytes(8, "big") + data)
        assert bundle_digest(manifest, files) == expected.hexdigest()

    def test_does_not_depend_on_where_the_bundle_lies(self, cavia, copy: Path) -> None:
        assert Bundle.load(copy).digest == Bundle.load(cavia.path).digest

    def test_changes_with_any_manifest_byte(self, cavia, copy: Path) -> None:
        """The old identity hashed only the file list: a manifest edit kept it."""
        manifest = json.loads((copy / MANIFEST_FILE).read_text())
        manifest["discount"] = 0.5
        (copy / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
        assert Bundle.load(copy).digest != Bundle.load(cavia.path).digest

    def test_changes_with_any_file(self, cavia, edited_bundle) -> None:
        lrs = {"context": np.float32(0.25)}
        assert (
            Bundle.load(edited_bundle(cavia.path, lrs=lrs)).digest != Bundle.load(cavia.path).digest
        )

    def test_a_saved_state_is_refused_by_a_bundle_with_another_manifest(
        self, cavia, copy: Path, tmp_path: Path
    ) -> None:
        adapter = Adapter.load(cavia.path)
        state = adapter.save_state(tmp_path / "state.npz")
        manifest = json.loads((copy / MANIFEST_FILE).read_text())
        manifest["inner"]["steps"] = 1
        (copy / MANIFEST_FILE).write_text(json.dumps(manifest))
        with pytest.raises(StateError, match="saved for a different bundle"):
            Adapter.load(copy).load_state(state)
        Adapter.load(cavia.path).load_state(state)  # the same bundle takes it back


class TestBadBundles:
    def test_missing_directory(self, tmp_path: Path) -> None:
        with pytest.raises(BundleError, match="does not exist"):
            Bundle.load(tmp_path / "nope")

    def test_missing_manifest(self, copy: Path) -> None:
        (copy / MANIFEST_FILE).unlink()
        with pytest.raises(BundleError, match=r"manifest\.json: missing"):
            Bundle.load(copy)

    @pytest.mark.parametrize("name", REQUIRED_FILES)
    def test_missing_file_is_named(self, copy: Path, name: str) -> None:
        (copy / name).unlink()
        with pytest.raises(BundleError, match=rf"{name}: missing"):
            Bundle.load(copy)

    @pytest.mark.parametrize("name", [POLICY_GRAPH, ADAPT_GRAPH, PARAMS_FILE])
    def test_corrupted_file_fails_its_hash(self, copy: Path, name: str) -> None:
        data = bytearray((copy / name).read_bytes())
        data[len(data) // 2] ^= 0xFF
        (copy / name).write_bytes(bytes(data))
        with pytest.raises(BundleError, match=rf"{name}: sha256 mismatch"):
            Adapter.load(copy)

    def test_truncated_file_fails_its_size(self, copy: Path) -> None:
        path = copy / POLICY_GRAPH
        size = path.stat().st_size
        path.write_bytes(path.read_bytes()[:100])
        with pytest.raises(
            BundleError, match=rf"policy\.onnx: 100 bytes, the manifest says {size}"
        ):
            Bundle.load(copy)

    @pytest.mark.parametrize("version", [0, FORMAT_VERSION + 1, "1", None])
    def test_unknown_format_version(self, copy: Path, version: object) -> None:
        manifest = json.loads((copy / MANIFEST_FILE).read_text())
        manifest["format_version"] = version
        (copy / MANIFEST_FILE).write_text(json.dumps(manifest))
        with pytest.raises(BundleError, match="format_version .* is not supported"):
            Bundle.load(copy)

    def test_manifest_not_json(self, copy: Path) -> None:
        (copy / MANIFEST_FILE).write_text("{not json")
        with pytest.raises(BundleError, match="not valid JSON"):
            Bundle.load(copy)

    def test_manifest_missing_key(self, copy: Path) -> None:
        manifest = json.loads((copy / MANIFEST_FILE).read_text())
        del manifest["discount"]
        (copy / MANIFEST_FILE).write_text(json.dumps(manifest))
        with pytest.raises(BundleError, match="missing key 'discount'"):
            Bundle.load(copy)

    def test_file_not_listed(self, copy: Path) -> None:
        manifest = json.loads((copy / MANIFEST_FILE).read_text())
        del manifest["files"][ADAPT_GRAPH]
        (copy / MANIFEST_FILE).write_text(json.dumps(manifest))
        with pytest.raises(BundleError, match="'adapt.onnx' is not listed"):
            Bundle.load(copy)

    def test_non_finite_parameters(self, cavia, edited_bundle) -> None:
        params = {k: v.numpy().copy() for k, v in cavia.policy.params.items()}
        params["q_head.bias"][0] = np.nan
        path = edited_bundle(cavia.path, params=params)
        with pytest.raises(BundleError, match=r"params\.npz: q_head\.bias contains NaN"):
            Bundle.load(path)

    def test_parameter_of_wrong_shape(self, cavia, edited_bundle) -> None:
        params = {k: v.numpy().copy() for k, v in cavia.policy.params.items()}
        params["q_head.bias"] = np.zeros(7, np.float32)
        path = edited_bundle(cavia.path, params=params)
        with pytest.raises(BundleError, match=r"q_head\.bias is float32\[7\], expected"):
            Bundle.load(path)

    def test_learning_rates_for_other_parameters(self, cavia, edited_bundle) -> None:
        path = edited_bundle(cavia.path, lrs={"q_head.bias": np.float32(0.1)})
        with pytest.raises(BundleError, match=r"lrs\.npz: holds 'q_head\.bias\.npy', not an"):
            Bundle.load(path)

    def test_missing_learning_rates(self, cavia, edited_bundle) -> None:
        path = edited_bundle(cavia.path, lrs={})
        with pytest.raises(BundleError, match=r"lrs\.npz: arrays \[\] .* \(missing context\)"):
            Bundle.load(path)
