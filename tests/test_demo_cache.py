"""Demo caches: verified on every load, damaged ones reported in one line and rebuilt, builds that cannot
race, a read-only cache that computes in memory, and the app's results cache that heals.

One small Ising demo is built for real (module fixture); the damage tests then heal through a builder
that copies that pristine build back, so a test checks detection and healing in milliseconds and the
ground truth of a healed cache is the pristine build itself.
"""

from __future__ import annotations

import builtins
import errno
import hashlib
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from support import NOT_STATIONARY, expect_warnings

import hessview._io as io_
from hessview import HessianToolbox
from hessview.app import demos, voila

ROOT = Path(__file__).resolve().parents[1]


def settled(demos_folder: Path) -> bool:
    """A demos folder holds the demo and its lock files only: no temporary or old build left over."""
    return sorted(p.name for p in demos_folder.iterdir() if not p.name.endswith(".lock")) == ["ising"]


SMALL = {
    "version": 1,
    "L": 8,
    "train_T": [1.5, 3.5, 6],
    "test_T": [1.6, 3.4, 4],
    "n_per_T_train": 6,
    "n_per_T_test": 2,
    "weight_decay": 1e-2,
    "epochs": 100,
    "lbfgs_steps": 200,
    "seed": 0,
}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A real build of the small Ising demo: its folder (to copy from) and what loading it gives."""
    root = tmp_path_factory.mktemp("pristine")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HESSVIEW_CACHE_DIR", str(root))
        patch.setattr(io_, "_RESOLVED_ROOTS", {})
        patch.setitem(demos.DEMO_SETTINGS, "ising", json.loads(json.dumps(SMALL)))
        demo = demos.load_demo("ising", progress=False)
    return root / "demos" / "ising", demo


@pytest.fixture
def cache(pristine, monkeypatch, tmp_path):
    """An empty cache, the small settings, and a builder that copies the pristine build (counted)."""
    monkeypatch.setenv("HESSVIEW_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(io_, "_RESOLVED_ROOTS", {})
    monkeypatch.setitem(demos.DEMO_SETTINGS, "ising", json.loads(json.dumps(SMALL)))
    builds = []

    def copy_pristine(folder, settings, progress):
        builds.append(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for name in demos.DEMO_FILES:
            shutil.copyfile(pristine[0] / name, folder / name)

    monkeypatch.setitem(demos._BUILDERS, "ising", copy_pristine)
    return tmp_path / "cache" / "demos", builds


def install(pristine, cache, name="ising") -> Path:
    folder = cache[0] / name
    shutil.copytree(pristine[0], folder)
    return folder


def assert_is_pristine(demo, pristine):
    np.testing.assert_array_equal(demo.toolbox.eigenvalues.numpy(), pristine[1].toolbox.eigenvalues.numpy())
    np.testing.assert_array_equal(demo.X_test, pristine[1].X_test)
    assert demo.title == pristine[1].title and demo.class_names == pristine[1].class_names


def notices(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "hessview.cache"]


def safetensors_offset(path: Path, tensor: str) -> int:
    """Byte offset in a safetensors file where ``tensor``'s data begin (from its JSON header)."""
    data = path.read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + size])
    return 8 + size + header[tensor]["data_offsets"][0]


def test_the_real_build_is_complete_and_verified(pristine):
    folder, demo = pristine
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["format"] == 1 and manifest["demo"] == "ising"
    assert set(manifest["files"]) == set(demos.DEMO_FILES)
    for name, entry in manifest["files"].items():
        assert entry["sha256"] == hashlib.sha256((folder / name).read_bytes()).hexdigest()
    assert settled(folder.parent)  # no leftovers
    assert demo.toolbox.n_train == 36


def test_a_verified_cache_loads_without_building(pristine, cache, caplog, monkeypatch):
    install(pristine, cache)
    monkeypatch.setattr(HessianToolbox, "fit", lambda *a, **k: pytest.fail("fitted although cached"))
    assert_is_pristine(demos.load_demo("ising", progress=False), pristine)
    assert cache[1] == [] and notices(caplog) == []


# Each damage: (what to do to the installed folder, the file the one-line report must name)
def flip_model(folder):
    path = folder / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x10
    path.write_bytes(bytes(data))
    return path


def flip_eigenvalues(folder):
    path = folder / "toolbox.safetensors"
    data = bytearray(path.read_bytes())
    data[safetensors_offset(path, "eigenvalues") + 17] ^= 0x01  # one bit of one stored eigenvalue
    path.write_bytes(bytes(data))
    return path


def truncate_arrays(folder):
    path = folder / "arrays.npz"
    path.write_bytes(path.read_bytes()[:-100])
    return path


def swap_model_and_toolbox(folder):
    a, b = folder / "model.safetensors", folder / "toolbox.safetensors"
    a_bytes = a.read_bytes()
    a.write_bytes(b.read_bytes())
    b.write_bytes(a_bytes)
    return a


def edit_meta(folder):
    path = folder / "meta.json"
    meta = json.loads(path.read_text())
    meta["settings"]["weight_decay"] = 0.5  # claims other settings than those of the stored model
    path.write_text(json.dumps(meta))
    return path


def bad_json_meta(folder):
    path = folder / "meta.json"
    path.write_text(path.read_text()[:-20])
    return path


def bad_json_manifest(folder):
    path = folder / "manifest.json"
    path.write_text("{not json")
    return path


def unknown_manifest_format(folder):
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["format"] = 99
    path.write_text(json.dumps(manifest))
    return path


def no_manifest(folder):  # a cache written before checksums
    (folder / "manifest.json").unlink()
    return folder / "manifest.json"


def missing_file(folder):
    (folder / "toolbox.safetensors").unlink()
    return folder / "toolbox.safetensors"


def consistent_edit_without_title(folder):
    # an edit that also rewrites the manifest: the checksums agree, the missing field does not
    path = folder / "meta.json"
    meta = json.loads(path.read_text())
    del meta["title"]
    path.write_text(json.dumps(meta))
    demos.write_manifest(folder, "ising")
    return path


def consistent_bad_safetensors(folder):
    path = folder / "model.safetensors"
    path.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}")  # a header that is no JSON
    demos.write_manifest(folder, "ising")
    return path


def consistent_foreign_toolbox(folder):
    # a valid toolbox file of another model, with a manifest that agrees: the toolbox's own checks refuse it
    model = torch.nn.Linear(3, 2).double()
    X, y = torch.randn(8, 3, dtype=torch.float64), torch.arange(8) % 2
    with expect_warnings(NOT_STATIONARY):  # an untrained model: only its file matters here
        tb = HessianToolbox(model, X, y, weight_decay=0.1, progress=False).fit()
    tb.save(folder / "toolbox.safetensors")
    demos.write_manifest(folder, "ising")
    return folder / "toolbox.safetensors"


def consistent_bad_arrays(folder):
    path = folder / "arrays.npz"
    np.savez(path, X_test=np.zeros(3))  # lacks y_test, x, train_x
    demos.write_manifest(folder, "ising")
    return path


@pytest.mark.parametrize(
    "damage",
    [
        flip_model,
        flip_eigenvalues,
        truncate_arrays,
        swap_model_and_toolbox,
        edit_meta,
        bad_json_meta,
        bad_json_manifest,
        unknown_manifest_format,
        no_manifest,
        missing_file,
        consistent_edit_without_title,
        consistent_bad_arrays,
        consistent_bad_safetensors,
        consistent_foreign_toolbox,
    ],
)
def test_damaged_demo_is_reported_in_one_line_and_rebuilt(damage, pristine, cache, caplog):
    damaged = damage(install(pristine, cache))
    with pytest.raises(io_.CacheError) as refused:
        demos._read(cache[0] / "ising", "ising", demos.DEMO_SETTINGS["ising"], False)
    assert isinstance(refused.value, ValueError)
    assert str(damaged) in str(refused.value) and "hessview build --rebuild ising" in str(refused.value)
    with caplog.at_level("WARNING", logger="hessview.cache"):
        demo = demos.load_demo("ising", progress=False)
    (line,) = notices(caplog)
    assert str(damaged) in line and "\n" not in line and "rebuilding" in line
    assert len(cache[1]) == 1  # rebuilt once
    assert_is_pristine(demo, pristine)
    for name in demos.DEMO_FILES:  # the healed folder is the pristine build, byte for byte
        assert (cache[0] / "ising" / name).read_bytes() == (pristine[0] / name).read_bytes()
    assert settled(cache[0])


def test_another_demos_folder_is_refused(pristine, cache, caplog, monkeypatch):
    install(pristine, cache, name="fermi-hubbard")  # the ising build copied under another name
    monkeypatch.setitem(demos.DEMO_SETTINGS, "fermi-hubbard", json.loads(json.dumps(SMALL)))
    with pytest.raises(io_.CacheError, match="belongs to the 'ising' demo"):
        demos._read(cache[0] / "fermi-hubbard", "fermi-hubbard", SMALL, False)


def test_changed_settings_rebuild_with_a_notice(pristine, cache, caplog):
    install(pristine, cache)
    demos.DEMO_SETTINGS["ising"]["epochs"] = 101
    with caplog.at_level("WARNING", logger="hessview.cache"):
        with pytest.raises(io_.CacheError, match="other settings"):  # the stub copies the old build
            demos.load_demo("ising", progress=False)
    assert "other settings" in notices(caplog)[0] and len(cache[1]) == 1


def test_rebuild_replaces_a_complete_build_atomically(pristine, cache):
    folder = install(pristine, cache)
    before = json.loads((folder / "manifest.json").read_text())["build"]
    demos.load_demo("ising", progress=False, rebuild=True)
    assert len(cache[1]) == 1 and cache[1][0].parent == cache[0] and cache[1][0].name.startswith(".ising.")
    assert json.loads((folder / "manifest.json").read_text())["build"] != before
    assert settled(cache[0])


def test_a_build_that_fails_leaves_the_old_cache_and_no_leftovers(pristine, cache, monkeypatch):
    folder = install(pristine, cache)

    def crash(folder, settings, progress):
        (folder / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("killed mid-build")

    monkeypatch.setitem(demos._BUILDERS, "ising", crash)
    with pytest.raises(RuntimeError, match="killed"):
        demos.load_demo("ising", progress=False, rebuild=True)
    assert settled(cache[0])
    for name in demos.DEMO_FILES:
        assert (folder / name).read_bytes() == (pristine[0] / name).read_bytes()


def test_leftovers_of_a_killed_builder_are_removed(pristine, cache):
    cache[0].mkdir(parents=True)
    (cache[0] / ".ising.build-dead").mkdir()
    (cache[0] / ".ising.build-dead" / "model.safetensors").write_bytes(b"half")
    demos.load_demo("ising", progress=False)
    assert settled(cache[0])


def test_readers_of_a_complete_cache_do_not_wait_for_a_rebuild(pristine, cache, caplog):
    import fcntl
    import threading

    folder = install(pristine, cache)
    build_lock, _ = demos.demo_locks(folder)
    answers = []

    def read():
        answers.append(demos.load_demo("ising", progress=False))
        answers.append(voila.demo_fingerprint("ising"))

    with open(build_lock, "a") as held:  # another process is rebuilding for minutes
        fcntl.flock(held, fcntl.LOCK_EX)
        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(timeout=120)  # a deadlock detector, not a speed test: a blocked reader never returns
        finished = not reader.is_alive()
    assert finished, "a reader of a complete cache waited for the build lock"
    assert_is_pristine(answers[0], pristine)
    assert answers[1] is not None and cache[1] == [] and notices(caplog) == []


# ---------------------------------------------------------------- a read-only cache
@pytest.fixture
def read_only(monkeypatch):
    """Make every write under a folder fail as on a read-only file system (EROFS), even as root."""
    state = {"root": None}

    def inside(path) -> bool:
        root = state["root"]
        try:
            return root is not None and Path(os.path.abspath(os.fspath(path))).is_relative_to(root)
        except TypeError:  # a file descriptor
            return False

    def refuse(path):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    real_open, real_mkdir, real_rename, real_replace = os.open, os.mkdir, os.rename, os.replace
    real_builtin_open, real_unlink = builtins.open, os.unlink
    writes = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

    def os_open(path, flags, *args, **kwargs):
        if flags & writes and inside(path):
            refuse(path)
        return real_open(path, flags, *args, **kwargs)

    def file_open(path, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+") and inside(path):
            refuse(path)
        return real_builtin_open(path, mode, *args, **kwargs)

    def guard(real):
        def wrapped(path, *args, **kwargs):
            if inside(path):
                refuse(path)
            return real(path, *args, **kwargs)

        return wrapped

    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(os, "mkdir", guard(real_mkdir))
    monkeypatch.setattr(os, "rename", guard(real_rename))
    monkeypatch.setattr(os, "replace", guard(real_replace))
    monkeypatch.setattr(os, "unlink", guard(real_unlink))
    monkeypatch.setattr(builtins, "open", file_open)
    monkeypatch.setattr(io, "open", file_open)

    def protect(root: Path) -> None:
        state["root"] = Path(os.path.abspath(root))

    return protect


def tree(root: Path) -> dict:
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_read_only_complete_cache_is_read(pristine, cache, read_only, caplog):
    install(pristine, cache)
    root = cache[0].parent
    before = tree(root)
    read_only(root)
    assert_is_pristine(demos.load_demo("ising", progress=False), pristine)
    assert cache[1] == [] and notices(caplog) == [] and tree(root) == before


def test_a_read_only_damaged_cache_is_built_in_memory(pristine, cache, read_only, caplog):
    damaged = truncate_arrays(install(pristine, cache))
    root = cache[0].parent
    before = tree(root)
    read_only(root)
    with caplog.at_level("WARNING", logger="hessview.cache"):
        demo = demos.load_demo("ising", progress=False)
    assert_is_pristine(demo, pristine)
    lines = notices(caplog)
    assert len(lines) == 2 and all("\n" not in line for line in lines)
    assert str(damaged) in lines[0] and "in memory" in lines[0]
    assert "cannot write the demo cache" in lines[1] and "not kept" in lines[1]
    assert tree(root) == before  # nothing written


def test_an_empty_read_only_cache_builds_for_real_in_memory(cache, read_only, caplog, monkeypatch, pristine):
    monkeypatch.setitem(demos._BUILDERS, "ising", demos._build_ising)  # the real builder, data sets too
    root = cache[0].parent
    root.mkdir()
    read_only(root)
    with caplog.at_level("WARNING", logger="hessview.cache"):
        demo = demos.load_demo("ising", progress=False)
    np.testing.assert_allclose(
        demo.toolbox.eigenvalues.numpy(), pristine[1].toolbox.eigenvalues.numpy(), rtol=1e-6, atol=1e-9
    )
    lines = notices(caplog)
    assert any("cannot write the demo cache" in line for line in lines)
    assert any("data-set cache" in line and "not kept" in line for line in lines)
    assert list(root.rglob("*")) == []


# ---------------------------------------------------------------- concurrent builders
WORKER = textwrap.dedent(
    """
    import json, os, sys, time
    from pathlib import Path
    from hessview.app import demos

    settings, shared, copy_from, rebuild, n = json.loads(sys.argv[1])
    demos.DEMO_SETTINGS["ising"] = settings
    real = demos._BUILDERS["ising"]

    def counted(folder, settings, progress):
        with open(Path(shared) / "builds.log", "a") as log:
            log.write(f"{os.getpid()}\\n")
        if copy_from:  # a fast builder whose bytes differ per process (as two torch thread counts did)
            import shutil
            folder.mkdir(parents=True, exist_ok=True)
            for name in demos.DEMO_FILES:
                shutil.copyfile(Path(copy_from) / name, folder / name)
            meta = json.loads((folder / "meta.json").read_text())
            meta["report"]["builder"] = os.getpid()
            (folder / "meta.json").write_text(json.dumps(meta))
            time.sleep(0.5)
        else:
            real(folder, settings, progress)

    demos._BUILDERS["ising"] = counted
    Path(shared, f"ready-{os.getpid()}").touch()
    while len(list(Path(shared).glob("ready-*"))) < n:  # start together
        time.sleep(0.01)
    demo = demos.load_demo("ising", progress=False, rebuild=rebuild)
    result = {"eigenvalues": demo.toolbox.eigenvalues.tolist(), "builder": demo.report.get("builder")}
    print(json.dumps(result))
    """
)


def run_workers(tmp_path, n, *, copy_from=None, rebuild=False):
    shared = tmp_path / "shared"
    shared.mkdir()
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        HESSVIEW_CACHE_DIR=str(tmp_path / "cache"),
        OMP_NUM_THREADS="1",
    )
    argument = json.dumps([SMALL, str(shared), copy_from and str(copy_from), rebuild, n])
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, argument], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for _ in range(n)
    ]
    outputs = []
    for worker in workers:
        out, err = worker.communicate(timeout=300)
        assert worker.returncode == 0, err.decode()[-3000:]
        outputs.append(json.loads(out.decode().strip().splitlines()[-1]))
    builds = (shared / "builds.log").read_text().split() if (shared / "builds.log").exists() else []
    return outputs, builds


def test_concurrent_builders_make_one_complete_build(tmp_path, monkeypatch):
    outputs, builds = run_workers(tmp_path, 3)
    assert len(builds) == 1  # one process built, the others waited and reused it
    assert all(o["eigenvalues"] == outputs[0]["eigenvalues"] for o in outputs)
    monkeypatch.setenv("HESSVIEW_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(io_, "_RESOLVED_ROOTS", {})
    monkeypatch.setitem(demos.DEMO_SETTINGS, "ising", json.loads(json.dumps(SMALL)))
    monkeypatch.setattr(HessianToolbox, "fit", lambda *a, **k: pytest.fail("fitted although cached"))
    demo = demos.load_demo("ising", progress=False)  # verified, and no rebuild
    assert demo.toolbox.eigenvalues.tolist() == outputs[0]["eigenvalues"]
    assert settled(tmp_path / "cache" / "demos")


def test_concurrent_rebuilds_never_mix_builds(tmp_path, pristine, monkeypatch):
    # every process asks for a rebuild, each builder's files differ: the folder must hold one build
    outputs, builds = run_workers(tmp_path, 3, copy_from=pristine[0], rebuild=True)
    assert 1 <= len(builds) <= 3
    assert all(o["builder"] is not None and str(o["builder"]) in builds for o in outputs)
    monkeypatch.setenv("HESSVIEW_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(io_, "_RESOLVED_ROOTS", {})
    monkeypatch.setitem(demos.DEMO_SETTINGS, "ising", json.loads(json.dumps(SMALL)))
    final = demos._read(tmp_path / "cache" / "demos" / "ising", "ising", SMALL, False)  # raises if mixed
    assert str(final.report["builder"]) in builds
    assert settled(tmp_path / "cache" / "demos")


# ---------------------------------------------------------------- the app's results cache heals
@pytest.fixture
def app_cache(pristine, cache, monkeypatch):
    install(pristine, cache)
    first = voila.demo_explorer("ising", n_resamples=10)
    path = voila.results_path("ising", 10, 0)
    assert path.is_file()
    monkeypatch.setattr(demos, "load_demo", lambda *a, **k: pytest.fail("the demo was loaded"))
    return path, first


def test_app_results_cache_is_used_when_intact(app_cache, caplog):
    path, first = app_cache
    again = voila.demo_explorer("ising", n_resamples=10)
    np.testing.assert_array_equal(again.results.influence, first.results.influence)
    assert notices(caplog) == []


def truncate(path):
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def flip_influence(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x04
    path.write_bytes(bytes(data))


def swap_with_other_seed(path):
    other = voila.results_path("ising", 10, 1)
    shutil.copyfile(path, other)  # a file of another entry, under this entry's name below
    shutil.copyfile(other, path)


@pytest.mark.parametrize("damage", [truncate, flip_influence, lambda p: p.write_text("{}")])
def test_damaged_app_results_are_reported_and_recomputed(app_cache, damage, caplog, monkeypatch, pristine):
    path, first = app_cache
    damage(path)
    monkeypatch.setattr(demos, "load_demo", lambda *a, **k: pristine[1])
    with caplog.at_level("WARNING", logger="hessview.cache"):
        healed = voila.demo_explorer("ising", n_resamples=10)
    (line,) = notices(caplog)
    assert str(path) in line and "computing them again" in line
    np.testing.assert_allclose(healed.results.influence, first.results.influence, rtol=1e-12)
    voila.ExplorerResults.load(path, key=voila.results_key("ising", 10, 0))  # rewritten intact


def test_app_results_written_for_another_entry_are_refused(app_cache, tmp_path):
    path, _ = app_cache
    with pytest.raises(io_.CacheError, match="swapped"):
        voila._read_cached(path, voila.results_key("ising", 10, 1))


def test_app_results_on_a_read_only_cache_are_computed_in_memory(pristine, cache, read_only, caplog):
    install(pristine, cache)
    root = cache[0].parent
    before = tree(root)
    read_only(root)
    with caplog.at_level("WARNING", logger="hessview.cache"):
        explorer = voila.demo_explorer("ising", n_resamples=10)
    (line,) = notices(caplog)
    assert "cannot write the explorer cache" in line and "not kept" in line and "\n" not in line
    truth = pristine[1].toolbox.influence(pristine[1].X_test, pristine[1].y_test, measurement="margin")
    np.testing.assert_allclose(explorer.results.influence, np.asarray(truth), rtol=1e-9, atol=1e-15)
    assert tree(root) == before
