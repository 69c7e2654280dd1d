"""Hostile bundles: each way a bundle directory can lie is refused with one clear error.

Every case copies a real exported bundle, changes one thing (recomputing the hashes in the
manifest where that makes the lie consistent), and checks that both ``Adapter.load`` and
``robometa-deploy info`` refuse it with a ``BundleError`` (exit status 2, one error line)
that names the file and the key or the problem.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import sys
import tracemalloc
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from robometa.deploy import Adapter, Bundle, BundleError
from robometa.deploy.bundle import (
    ADAPT_GRAPH,
    CONFIG_FILE,
    LRS_FILE,
    MANIFEST_FILE,
    PARAMS_FILE,
    POLICY_GRAPH,
)
from robometa.deploy.cli import main

posix_only = pytest.mark.skipif(os.name != "posix", reason="symlinks and pipes as on a robot")


# --------------------------------------------------------------------------- editing helpers


def read_manifest(root: Path) -> dict[str, Any]:
    return json.loads((root / MANIFEST_FILE).read_text())


def write_manifest(root: Path, doc: dict[str, Any]) -> None:
    (root / MANIFEST_FILE).write_text(json.dumps(doc, indent=2))  # NaN stays NaN


def rehash(root: Path, *extra: str) -> None:
    """List ``extra`` too, and recompute every listed file's sha256 and size (following
    symlinks, as an attacker would to make a swapped file look legitimate)."""
    doc = read_manifest(root)
    names = sorted({*doc["files"], *extra})
    doc["files"] = {
        n: {
            "sha256": hashlib.sha256((root / n).read_bytes()).hexdigest(),
            "bytes": len((root / n).read_bytes()),
        }
        for n in names
    }
    write_manifest(root, doc)


def set_key(dotted: str, value: Any) -> Callable[[Path], None]:
    """A mutation: set ``dotted`` (``a.b[0]`` style indices allowed) in the manifest."""

    def mutate(root: Path) -> None:
        doc = read_manifest(root)
        *parents, last = _parts(dotted)
        node = doc
        for part in parents:
            node = node[part]
        node[last] = value
        write_manifest(root, doc)

    return mutate


def del_key(dotted: str) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        doc = read_manifest(root)
        *parents, last = _parts(dotted)
        node = doc
        for part in parents:
            node = node[part]
        del node[last]
        write_manifest(root, doc)

    return mutate


def _parts(dotted: str) -> list[Any]:
    parts: list[Any] = []
    for part in dotted.split("."):
        name, *indices = part.replace("]", "").split("[")
        parts.append(name)
        parts.extend(int(i) for i in indices)
    return parts


def edit_manifest(fn: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        doc = read_manifest(root)
        fn(doc)
        write_manifest(root, doc)

    return mutate


def replace_text(text: str) -> Callable[[Path], None]:
    """Put raw JSON ``text`` where the manifest's ``producer`` is (JSON that json.dumps
    cannot write: duplicate keys, huge literals, deep nesting)."""

    def mutate(root: Path) -> None:
        doc = read_manifest(root)
        doc["producer"] = "@@RAW@@"
        raw = json.dumps(doc, indent=2).replace('"@@RAW@@"', text)
        (root / MANIFEST_FILE).write_text(raw)

    return mutate


def write_npz(path: Path, arrays: dict[str, np.ndarray], *, duplicate: str = "") -> None:
    """An ``.npz`` as np.savez writes it; ``duplicate`` adds a second member of that name
    (zipfile allows it; readers then disagree on which one counts)."""
    with zipfile.ZipFile(path, "w") as archive:
        for name, value in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asarray(value), allow_pickle=True)
            archive.writestr(name + ".npy", buf.getvalue())
        if duplicate:
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.full_like(arrays[duplicate], 7.0))
            with pytest.warns(UserWarning, match="Duplicate name"):
                archive.writestr(duplicate + ".npy", buf.getvalue())


def load_arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as npz:
        return {k: npz[k] for k in npz.files}


def edit_arrays(
    name: str, fn: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray] | None], **kw: Any
) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        arrays = load_arrays(root / name)
        arrays = fn(arrays) or arrays
        write_npz(root / name, arrays, **kw)
        rehash(root)

    return mutate


def bomb_params(root: Path, megabytes: int) -> None:
    """params.npz whose ``q_head.bias`` member inflates to ``megabytes`` MB of zeros (deflate
    packs ~1000:1, so 256 MB take ~0.26 MB)."""
    arrays = load_arrays(root / PARAMS_FILE)
    elements = megabytes << 18
    with zipfile.ZipFile(root / PARAMS_FILE, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, value in arrays.items():
            if name != "q_head.bias":
                buf = io.BytesIO()
                np.lib.format.write_array(buf, value)
                archive.writestr(name + ".npy", buf.getvalue())
        with archive.open("q_head.bias.npy", "w", force_zip64=True) as f:
            header = {"descr": "<f4", "fortran_order": False, "shape": (elements,)}
            np.lib.format.write_array_header_1_0(f, header)
            zeros = bytes(1 << 20)
            for _ in range(elements * 4 // len(zeros)):
                f.write(zeros)
    rehash(root)


def swap_graphs(root: Path) -> None:
    policy, adapt = (root / POLICY_GRAPH).read_bytes(), (root / ADAPT_GRAPH).read_bytes()
    (root / POLICY_GRAPH).write_bytes(adapt)
    (root / ADAPT_GRAPH).write_bytes(policy)
    rehash(root)


def truncate_graph(root: Path) -> None:
    data = (root / POLICY_GRAPH).read_bytes()
    (root / POLICY_GRAPH).write_bytes(data[: len(data) // 2])
    rehash(root)


def external_data_beside(root: Path) -> None:
    """policy.onnx re-saved with its tensors in policy.onnx.data next to it."""
    import onnx

    model = onnx.load(str(root / POLICY_GRAPH))
    onnx.save_model(
        model,
        str(root / POLICY_GRAPH),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="policy.onnx.data",
        size_threshold=0,
    )
    assert (root / "policy.onnx.data").is_file()
    rehash(root)


def external_data_elsewhere(root: Path) -> None:
    """policy.onnx refers to external data that is not in the bundle at all: it lies in the
    working directory (the test runs in the bundle's parent), where onnxruntime looks for the
    data of a graph it was given as bytes."""
    external_data_beside(root)
    os.replace(root / "policy.onnx.data", root.parent / "policy.onnx.data")


def shift_action_output(root: Path) -> None:
    """policy.onnx whose ``action`` output is the greedy action + n_actions: out of range."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(root / POLICY_GRAPH))
    graph = model.graph
    for node in graph.node:
        for i, out in enumerate(node.output):
            if out == "action":
                node.output[i] = "action_greedy"
    n = read_manifest(root)["action"]["n"]
    graph.initializer.append(numpy_helper.from_array(np.array(n, np.int64), "action_shift"))
    graph.node.append(helper.make_node("Add", ["action_greedy", "action_shift"], ["action"]))
    onnx.save(model, str(root / POLICY_GRAPH))
    rehash(root)


def outside_copy(root: Path, name: str) -> Path:
    """A copy of a bundle file outside the bundle (same bytes: its hash still matches)."""
    outside = root.parent / f"outside-{name}"
    shutil.copyfile(root / name, outside)
    return outside


def symlink_to_outside(name: str) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        outside = outside_copy(root, name)
        (root / name).unlink()
        (root / name).symlink_to(outside)

    return mutate


def config_symlink_to_secret(root: Path) -> None:
    """config.yaml -> a file outside the bundle, listed with that file's recomputed hash."""
    secret = root.parent / "secret.txt"
    secret.write_text("root:x:0:0:root:/root:/bin/bash\n")
    (root / CONFIG_FILE).symlink_to(secret)
    rehash(root, CONFIG_FILE)


def replace_by_directory(name: str) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        (root / name).unlink()
        (root / name).mkdir()
        (root / name / "x").write_text("x")

    return mutate


def replace_by_fifo(root: Path) -> None:
    (root / LRS_FILE).unlink()
    os.mkfifo(root / LRS_FILE)


def list_extra_file(root: Path) -> None:
    (root / "weights.bin").write_bytes(b"\0" * 64)
    rehash(root, "weights.bin")


def deep(depth: int) -> str:
    return "[" * depth + "]" * depth


def other_hash(root: Path) -> None:
    doc = read_manifest(root)
    doc["files"][POLICY_GRAPH]["sha256"] = doc["files"][ADAPT_GRAPH]["sha256"]
    write_manifest(root, doc)


def obs_dim_five(doc: dict[str, Any]) -> None:
    obs = doc["observation"]
    obs["shape"] = [5]
    obs["low"].append(None)
    obs["high"].append(None)
    obs["names"].append("extra")


def n_actions_five(doc: dict[str, Any]) -> None:
    doc["action"] = {"n": 5, "names": [f"a{i}" for i in range(5)]}


def unadapted_context(doc: dict[str, Any]) -> None:
    doc["parameters"]["context"]["adapted"] = False


def non_utf8(root: Path) -> None:
    doc = read_manifest(root)
    doc["observation"]["names"][0] = "position_é"
    (root / MANIFEST_FILE).write_bytes(json.dumps(doc, ensure_ascii=False).encode("latin-1"))


# --------------------------------------------------------------------------- the cases


@dataclass(frozen=True)
class Case:
    """One hostile change: ``mutate`` applies it, the error names ``file`` and matches
    ``match`` (a regular expression)."""

    id: str
    mutate: Callable[[Path], None]
    file: str
    match: str


M = MANIFEST_FILE
# fmt: off
CASES = [
    # env_id reaches gymnasium.make, which imports the module named before a colon.
    Case("env-id-imports-a-module", set_key("env_id", "this:robometa/CartPole-v0"), M,
         r"env_id 'this:robometa/CartPole-v0' is not a robometa robot family"),
    Case("env-id-module-entry-point", set_key("env_id", "os:system"), M, r"env_id 'os:system'"),
    Case("env-id-trailing-newline", set_key("env_id", "robometa/CartPole-v0\n"), M, r"env_id"),
    Case("env-id-not-a-string", set_key("env_id", 7), M, r"env_id 7"),
    # The manifest as a file and as JSON.
    Case("manifest-symlink", symlink_to_outside(M), M, r"symbolic link"),
    Case("manifest-too-large", set_key("producer.padding", "x" * (2 << 20)), M,
         r"bytes, more than the 1048576 allowed"),
    Case("manifest-deep-json", replace_text(deep(100_000)), M, r"nested deeper than 32"),
    Case("manifest-nested-too-deep", replace_text(deep(40)), M,
         r"producer\[0\]\[0\].* nested deeper than 32"),
    Case("manifest-not-utf8", non_utf8, M, r"not UTF-8"),
    Case("manifest-duplicate-key", replace_text('{"a": 1, "a": 2}'), M,
         r"duplicate key 'a'"),
    Case("manifest-huge-integer-literal", replace_text("1" + "0" * 5000), M,
         r"not valid JSON"),
    Case("manifest-not-an-object", lambda r: (r / M).write_text("[1, 2]"), M,
         r"expected a JSON object at the top"),
    Case("format-version", set_key("format_version", 2), M, r"format_version 2 is not supported"),
    # Observation and action spaces.
    Case("observation-low-nan", set_key("observation.low[0]", float("nan")), M,
         r"observation\.low\[0\] is nan, expected a finite number"),
    Case("number-overflows-to-infinity", replace_text("1e999"), M,
         r"producer is inf, expected a finite number"),
    Case("observation-low-above-high", set_key("observation.low[0]", 5.0), M,
         r"observation\.low\[0\] 5\.0 is above observation\.high\[0\]"),
    Case("observation-names-count", set_key("observation.names", ["a", "b", "c"]), M,
         r"observation\.names is \['a', 'b', 'c'\], expected a list of 4 names"),
    Case("observation-name-terminal-escape", set_key("observation.names[0]", "\x1b[2Jcart"), M,
         r"observation\.names\[0\] is '\\x1b\[2Jcart', expected a printable string"),
    Case("observation-shape-disagrees-with-graph", edit_manifest(obs_dim_five), POLICY_GRAPH,
         r"input 'obs' is tensor\(float\)\[batch, 4\], the manifest implies .*\[batch, 5\]"),
    Case("action-n-disagrees-with-graph", edit_manifest(n_actions_five), POLICY_GRAPH,
         r"output 'q_values' is tensor\(float\)\[batch, 3\], .*\[batch, 5\]"),
    Case("action-n-zero", set_key("action", {"n": 0, "names": []}), M,
         r"action\.n is 0, expected an integer in \[1, 1024\]"),
    Case("action-n-huge", set_key("action", {"n": 10**9, "names": []}), M,
         r"action\.n is 1000000000, expected an integer in \[1, 1024\]"),
    Case("discount-above-one", set_key("discount", 1.5), M,
         r"discount is 1\.5, expected a number in \[0, 1\]"),
    Case("discount-bool", set_key("discount", True), M, r"discount is True"),
    Case("privileged-not-bool", set_key("privileged", "yes"), M, r"privileged is 'yes'"),
    # The inner loop.
    Case("inner-steps-huge", set_key("inner.steps", 10**12), M,
         r"inner\.steps is 1000000000000, expected an integer in \[0, 1000\]"),
    Case("inner-steps-bool", set_key("inner.steps", True), M, r"inner\.steps is True"),
    Case("inner-steps-float", set_key("inner.steps", 3.0), M, r"inner\.steps is 3\.0"),
    Case("support-size-huge", set_key("inner.support_size", 10**12), M,
         r"inner\.support_size is 1000000000000, expected an integer in \[1, 1000000\]"),
    Case("support-size-zero", set_key("inner.support_size", 0), M, r"inner\.support_size is 0"),
    Case("inner-kind-missing", del_key("inner.kind"), M, r"missing key 'inner\.kind'"),
    Case("inner-kind-unknown", set_key("inner.kind", "bogus"), M,
         r"inner\.kind is 'bogus', expected one of td, model, td\+model"),
    Case("inner-from-meta-string", set_key("inner.from_meta", "false"), M,
         r"inner\.from_meta is 'false', expected true or false"),
    Case("inner-adapted-not-a-parameter", set_key("inner.adapted", ["nope"]), M,
         r"inner\.adapted is 'nope', expected a parameter name"),
    Case("parameter-adapted-flag-disagrees", edit_manifest(unadapted_context), M,
         r"parameters\.context\.adapted is False, but inner\.adapted lists 'context'"),
    Case("parameter-shape-huge", set_key("parameters.context.shape", [10**6, 10**6]), M,
         r"parameters hold more than 16777216 numbers"),
    Case("support-epsilon-out-of-range", set_key("config", {"adaptation": {"support_epsilon": 2}}),
         M, r"config\.adaptation\.support_epsilon is 2"),
    Case("dynamics-not-an-object", set_key("dynamics", [1]), M, r"dynamics is \[1\]"),
    Case("graphs-entry-disagrees", edit_manifest(lambda d: d["graphs"]["policy"]["inputs"].reverse()),
         POLICY_GRAPH, r"differ from the manifest's graphs\.policy\.inputs"),
    # Files: listing, type, size, hash.
    Case("unknown-file-listed", list_extra_file, M, r"files lists 'weights\.bin'"),
    Case("file-name-escapes-the-bundle", edit_manifest(lambda d: d["files"].update(
         {"../params.npz": d["files"][PARAMS_FILE]})), M, r"files lists '\.\./params\.npz'"),
    Case("config-symlink-to-a-secret", config_symlink_to_secret, CONFIG_FILE, r"symbolic link"),
    Case("graph-symlink-outside", symlink_to_outside(POLICY_GRAPH), POLICY_GRAPH,
         r"symbolic link"),
    Case("file-is-a-directory", replace_by_directory(PARAMS_FILE), PARAMS_FILE,
         r"not a regular file"),
    Case("file-is-a-pipe", replace_by_fifo, LRS_FILE, r"not a regular file"),
    Case("file-missing", lambda r: (r / ADAPT_GRAPH).unlink(), ADAPT_GRAPH, r"missing"),
    Case("file-size-disagrees", edit_manifest(lambda d: d["files"][POLICY_GRAPH].update(bytes=1)), POLICY_GRAPH,
         r"more than the 1 of files\.policy\.onnx\.bytes"),
    Case("hash-of-another-file", other_hash, POLICY_GRAPH, r"sha256 mismatch"),
    # Graphs.
    Case("graph-truncated", truncate_graph, POLICY_GRAPH,
         r"not a valid ONNX model|onnxruntime cannot load the graph"),
    Case("graphs-swapped", swap_graphs, POLICY_GRAPH,
         r"stamped 'adapt\.onnx' \(robometa\.graph metadata\)"),
    Case("graph-external-data-beside-it", external_data_beside, POLICY_GRAPH,
         r"keeps its data in an external file"),
    Case("graph-external-data-elsewhere", external_data_elsewhere, POLICY_GRAPH,
         r"keeps its data in an external file"),
    Case("action-output-out-of-range", shift_action_output, POLICY_GRAPH,
         r"output 'action' is \[\d, \d\] on a probe batch, outside \[0, 3\)"),
    # Arrays.
    Case("params-nan", edit_arrays(PARAMS_FILE, lambda a: {**a, "context": a["context"] * np.nan}),
         PARAMS_FILE, r"context contains NaN"),
    Case("params-float64", edit_arrays(PARAMS_FILE, lambda a: {**a, "context": a["context"]
         .astype(np.float64)}), PARAMS_FILE, r"context is float64\[2\], expected float32\[2\]"),
    Case("params-wrong-shape", edit_arrays(PARAMS_FILE, lambda a: {**a, "context": np.zeros(
         3, np.float32)}), PARAMS_FILE, r"context is float32\[3\], expected float32\[2\]"),
    Case("params-extra-array", edit_arrays(PARAMS_FILE, lambda a: {**a, "extra": np.zeros(
         1, np.float32)}), PARAMS_FILE, r"holds 'extra\.npy', not an array the manifest lists"),
    Case("params-duplicate-array", edit_arrays(PARAMS_FILE, lambda a: None, duplicate="context"),
         PARAMS_FILE, r"holds 'context' twice"),
    Case("params-pickled-object", edit_arrays(PARAMS_FILE, lambda a: {**a, "context": np.array(
         [{"x": 1}, None], dtype=object)}), PARAMS_FILE, r"context is object\[2\]"),
    Case("params-zip-bomb", partial(bomb_params, megabytes=256), M,
         r"files\.params\.npz\.bytes is 26\d{4}, expected an integer in \[0, \d+\]"),
    Case("params-member-inflates", partial(bomb_params, megabytes=16), PARAMS_FILE,
         r"q_head\.bias decompresses to 16777\d+ bytes, more than the \d+ its manifest shape"),
    Case("params-not-a-zip", lambda r: ((r / PARAMS_FILE).write_bytes(b"\0" * 100), rehash(r)),
         PARAMS_FILE, r"not a readable \.npz file"),
    Case("lrs-negative", edit_arrays(LRS_FILE, lambda a: {"context": np.float32(-0.1)}),
         LRS_FILE, r"context has a negative learning rate"),
    Case("lrs-nan", edit_arrays(LRS_FILE, lambda a: {"context": np.float32(np.nan)}), LRS_FILE,
         r"context contains NaN"),
    Case("lrs-shape-disagrees-with-graph", edit_arrays(LRS_FILE, lambda a: {"context": np.full(
         2, 0.5, np.float32)}), ADAPT_GRAPH,
         r"input 'lr:context' is tensor\(float\)\[\], the manifest implies tensor\(float\)\[2\]"),
]
# fmt: on


@pytest.fixture
def bundle(cavia, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh copy of the exported CAVIA bundle; the working directory is its parent."""
    out = tmp_path / "bundle"
    shutil.copytree(cavia.path, out)
    monkeypatch.chdir(tmp_path)
    return out


def _skip_unsupported(case: Case) -> None:
    needs_posix = ("symlink", "pipe")
    if os.name != "posix" and any(word in case.id for word in needs_posix):
        pytest.skip("symlinks and pipes as on a robot (posix)")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_the_runtime_refuses_it(case: Case, bundle: Path) -> None:
    _skip_unsupported(case)
    case.mutate(bundle)
    with pytest.raises(BundleError) as refused:
        Adapter.load(bundle)
    message = str(refused.value)
    assert str(bundle / case.file) in message, message
    assert re.search(case.match, message), message


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_info_refuses_it_in_one_line(
    case: Case, bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _skip_unsupported(case)
    case.mutate(bundle)
    assert main(["info", "--bundle", str(bundle)]) == 2
    out, err = capsys.readouterr()
    assert out == ""  # not one line of "verified" output
    (line,) = err.splitlines()
    assert line.startswith("robometa-deploy: error: ") and str(bundle / case.file) in line, line
    assert re.search(case.match, line), line


def test_there_are_many_distinct_cases() -> None:
    assert len({c.id for c in CASES}) == len(CASES) >= 25


# --------------------------------------------------------------------------- beyond refusing


def test_a_colon_env_id_is_never_imported_by_the_adapt_command(
    bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    module = "robometa_hostile_bundle_probe"
    (bundle.parent / f"{module}.py").write_text("raise SystemExit('imported!')\n")
    sys.path.insert(0, str(bundle.parent))
    try:
        set_key("env_id", f"{module}:robometa/CartPole-v0")(bundle)
        args = ["adapt", "--bundle", str(bundle), "--sample-test-task", "1", "--rounds", "1"]
        assert main(args) == 2
    finally:
        sys.path.remove(str(bundle.parent))
    assert module not in sys.modules
    assert "is not a robometa robot family" in capsys.readouterr().err


@pytest.mark.parametrize(("megabytes", "refusal"), [(256, "bytes is"), (16, "decompresses to")])
def test_a_zip_bomb_is_refused_before_it_is_decompressed(
    bundle: Path, megabytes: int, refusal: str
) -> None:
    """The archive's size is capped by the manifest's shapes, and so is every member's."""
    bomb_params(bundle, megabytes)
    assert (bundle / PARAMS_FILE).stat().st_size < megabytes << 11  # < 1/500 of the data
    tracemalloc.start()
    try:
        with pytest.raises(BundleError, match=refusal):
            Bundle.load(bundle)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20


@posix_only
def test_a_symlinked_bundle_directory_is_the_same_bundle(cavia, tmp_path: Path) -> None:
    """`bundles/current -> bundles/v3` is how robots switch bundles; the files stay inside."""
    link = tmp_path / "current"
    link.symlink_to(cavia.path, target_is_directory=True)
    assert Bundle.load(link).digest == Bundle.load(cavia.path).digest


def test_the_good_bundle_is_verified_with_its_digest(
    cavia, capsys: pytest.CaptureFixture[str]
) -> None:
    digest = Bundle.load(cavia.path).digest
    assert main(["info", "--bundle", str(cavia.path)]) == 0
    out = capsys.readouterr().out
    assert f"identity    sha256:{digest}\n" in out
    assert "verified    files and hashes, manifest, arrays; graphs load" in out


def test_files_beside_the_bundle_are_never_read_and_do_not_change_it(cavia, tmp_path: Path) -> None:
    """A user's notes or saved adapter state may sit in the bundle directory: not part of it."""
    copy = Path(shutil.copytree(cavia.path, tmp_path / "bundle"))
    before = Bundle.load(copy)
    (copy / "notes.txt").write_text("rig 3, left motor rewired")
    (copy / "adapter-state.npz").write_bytes(b"not even an npz")
    (copy / "logs").mkdir()
    after = Bundle.load(copy)
    assert after.digest == before.digest
    assert after.unlisted == ("adapter-state.npz", "logs", "notes.txt")


def test_the_format_pins_onnx_ir_10_and_opset_20(cavia) -> None:
    """What the oldest declared onnxruntime (1.19) reads, whatever torch's defaults become."""
    import onnx

    for name in (POLICY_GRAPH, ADAPT_GRAPH):
        model = onnx.load(str(cavia.path / name))
        assert model.ir_version == 10
        assert {o.domain or "ai.onnx": o.version for o in model.opset_import}["ai.onnx"] == 20
        entry = json.loads((cavia.path / "manifest.json").read_text())["graphs"]
        assert {(g["opset"], g["ir_version"]) for g in entry.values()} == {(20, 10)}


def test_a_graph_of_another_onnx_version_is_refused(cavia, tmp_path: Path) -> None:
    import onnx

    copy = Path(shutil.copytree(cavia.path, tmp_path / "bundle"))
    model = onnx.load(str(copy / POLICY_GRAPH))
    model.ir_version = 11
    onnx.save(model, str(copy / POLICY_GRAPH))
    rehash(copy)
    with pytest.raises(
        BundleError, match=r"policy\.onnx: ONNX IR 11, opsets .*IR 10 with opset 20"
    ):
        Bundle.load(copy)
