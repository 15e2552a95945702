"""Caches that detect damage and heal, one cache folder for every process, and the CLI's port check.

Ground truth for a healed cache is the same data computed into an empty cache folder.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

import hessview._io as io_
import hessview.app.cli as cli
from hessview._io import CacheError, load_npz, save_npz
from hessview.datasets import ising_2d

ROOT = Path(__file__).resolve().parents[1]
SMALL_ISING = dict(L=4, n_per_T=4, n_chains=2, n_equilibration=5, progress=False)


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def one_line_naming(caplog, path: Path) -> str:
    """The single cache notice logged, which must name ``path`` and fit on one line."""
    records = [r for r in caplog.records if r.name == "hessview.cache"]
    assert len(records) == 1, [r.getMessage() for r in records]
    message = records[0].getMessage()
    assert str(path) in message and "\n" not in message
    return message


# ---------------------------------------------------------------- checksummed .npz files
@pytest.fixture
def stored(tmp_path):
    arrays = {"X": np.arange(64, dtype=np.float64).reshape(8, 8), "y": np.arange(8)}
    path = tmp_path / "entry.npz"
    save_npz(path, arrays, key="entry")
    return path, arrays


def test_npz_round_trip_and_missing_file(stored, tmp_path):
    path, arrays = stored
    loaded = load_npz(path, key="entry")
    assert set(loaded) == {"X", "y"}
    for name in arrays:
        np.testing.assert_array_equal(loaded[name], arrays[name])
    with pytest.raises(CacheError) as missing:
        load_npz(tmp_path / "absent.npz")
    assert missing.value.kind == "missing"


def test_npz_bit_flip_in_the_data_is_detected(stored):
    path, arrays = stored
    start = path.read_bytes().index(arrays["X"].tobytes())
    flip_byte(path, start + 100)  # inside X's values
    with pytest.raises(CacheError, match="entry.npz") as error:
        load_npz(path, key="entry")
    assert isinstance(error.value, ValueError) and error.value.kind == "damaged"


@pytest.mark.parametrize("keep", [0.0, 0.3, 0.9, 0.999])
def test_npz_truncation_is_detected(stored, keep):
    path, _ = stored
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CacheError, match="unreadable"):
        load_npz(path, key="entry")


def test_npz_every_single_bit_flip_is_detected_or_harmless(stored):
    # A flip anywhere either is refused or leaves the arrays intact (zip fields nobody reads, e.g. times)
    path, arrays = stored
    pristine = path.read_bytes()
    detected = 0
    for offset in range(0, len(pristine), 7):
        path.write_bytes(pristine)
        flip_byte(path, offset)
        try:
            loaded = load_npz(path, key="entry")
        except CacheError:
            detected += 1
            continue
        for name in arrays:
            np.testing.assert_array_equal(loaded[name], arrays[name])
    assert detected > 0.8 * len(range(0, len(pristine), 7))


def test_npz_swapped_in_from_another_entry_or_without_checksum(stored, tmp_path):
    path, arrays = stored
    with pytest.raises(CacheError, match="swapped"):
        load_npz(path, key="another entry")
    plain = tmp_path / "plain.npz"
    np.savez(plain, **arrays)  # as hessview wrote caches before checksums
    with pytest.raises(CacheError, match="no checksum"):
        load_npz(plain)
    edited = dict(np.load(path))
    edited["X"] = edited["X"] + 1  # an edit that keeps the old checksum
    np.savez(tmp_path / "edited.npz", **edited)
    with pytest.raises(CacheError, match="checksum mismatch"):
        load_npz(tmp_path / "edited.npz")


# ---------------------------------------------------------------- data-set caches heal
def damage_bit_flip(path, data):
    flip_byte(path, path.read_bytes().index(np.ascontiguousarray(data.X).tobytes()) + 5)


def damage_truncate(path, data):
    path.write_bytes(path.read_bytes()[:-40])


def damage_swap(path, data):
    other = path.parent / "other"
    ising_2d([3.0], seed=1, cache_dir=other, **SMALL_ISING)
    (swapped,) = other.glob("*.npz")
    path.write_bytes(swapped.read_bytes())


def damage_old_format(path, data):
    with np.load(path) as stored:
        arrays = {k: stored[k] for k in stored.files if not k.startswith("__hessview")}
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)


def damage_not_a_zip(path, data):
    path.write_text("{}")


@pytest.mark.parametrize(
    "damage", [damage_bit_flip, damage_truncate, damage_swap, damage_old_format, damage_not_a_zip]
)
def test_damaged_data_set_cache_is_reported_and_computed_again(damage, tmp_path, caplog):
    cache = tmp_path / "cache"
    data = ising_2d([2.0], seed=3, cache_dir=cache, **SMALL_ISING)
    (path,) = cache.glob("*.npz")
    damage(path, data)
    with caplog.at_level("WARNING", logger="hessview.cache"):
        healed = ising_2d([2.0], seed=3, cache_dir=cache, **SMALL_ISING)
    one_line_naming(caplog, path)
    fresh = ising_2d([2.0], seed=3, cache_dir=tmp_path / "fresh", **SMALL_ISING)
    for field in ("X", "y", "temperature", "magnetisation", "energy"):
        np.testing.assert_array_equal(getattr(healed, field), getattr(fresh, field))
    caplog.clear()
    load_npz(path, key=path.name)  # the file was rewritten intact
    ising_2d([2.0], seed=3, cache_dir=cache, **SMALL_ISING)
    assert not caplog.records


def test_zip_errors_are_what_the_old_code_let_through(tmp_path):
    # the class of error that stopped the app before (zipfile.BadZipFile is no OSError/ValueError)
    path = tmp_path / "x.npz"
    np.savez(path, a=np.arange(10))
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(zipfile.BadZipFile):
        np.load(path)
    with pytest.raises(CacheError):
        load_npz(path)


# ---------------------------------------------------------------- one cache folder for all
@pytest.fixture
def fresh_roots(monkeypatch):
    monkeypatch.setattr(io_, "_RESOLVED_ROOTS", {})


def test_cache_dir_expands_the_home_folder(fresh_roots, monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HESSVIEW_CACHE_DIR", "~/hv-cache")
    assert io_.cache_root() == tmp_path / "home" / "hv-cache"
    assert io_.cache_dir("demos") == tmp_path / "home" / "hv-cache" / "demos"
    assert (tmp_path / "home" / "hv-cache" / "demos").is_dir()
    assert not Path("~").exists()


def test_relative_cache_dir_is_resolved_once(fresh_roots, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HESSVIEW_CACHE_DIR", "relative/cache")
    first = io_.cache_root()
    assert first == tmp_path / "relative" / "cache" and first.is_absolute()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert io_.cache_root() == first  # a later chdir does not move the cache


@pytest.mark.parametrize("value", ["", "   "])
def test_empty_cache_dir_means_the_default(fresh_roots, monkeypatch, tmp_path, value):
    monkeypatch.setenv("HESSVIEW_CACHE_DIR", value)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert io_.cache_root() == tmp_path / "xdg" / "hessview"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative-xdg")  # the XDG spec says: ignore relative paths
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert io_.cache_root() == tmp_path / "home" / ".cache" / "hessview"


def test_a_kernel_started_elsewhere_uses_the_same_folder(fresh_roots, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HESSVIEW_CACHE_DIR", "cache")
    here = io_.cache_root()
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    code = "from hessview._io import cache_root; print(cache_root())"
    env = dict(io_.cache_environment(), PYTHONPATH=str(ROOT))

    def kernel_root(environment):
        run = subprocess.run(
            [sys.executable, "-c", code], cwd=notebooks, env=environment, capture_output=True, text=True
        )
        assert run.returncode == 0, run.stderr
        return Path(run.stdout.strip())

    assert kernel_root(env) == here
    assert kernel_root(dict(os.environ, PYTHONPATH=str(ROOT))) != here  # what went wrong before


# ---------------------------------------------------------------- the CLI
@pytest.fixture
def no_build(monkeypatch):
    built = []
    monkeypatch.setattr(cli, "build", lambda names, rebuild=False: built.append(list(names)))
    return built


@pytest.fixture
def busy_port():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        yield busy.getsockname()[1]


def test_cli_refuses_a_port_in_use_before_building_or_serving(no_build, busy_port, capsys, monkeypatch):
    monkeypatch.setattr(cli.subprocess, "Popen", lambda *a, **k: pytest.fail("Voila started"))
    status = cli.main(["app", "ising", "--port", str(busy_port), "--no-browser"])
    out = capsys.readouterr()
    assert status == 2 and no_build == []
    assert f"port {busy_port} on 127.0.0.1 is in use" in out.err and "--port" in out.err
    assert "serving" not in out.out + out.err


def test_cli_refuses_a_port_taken_while_building(monkeypatch, capsys):
    port = cli.free_port(19866)
    taken = []

    def build_and_take_the_port(names, rebuild=False):
        sock = socket.socket()
        sock.bind(("127.0.0.1", port))
        sock.listen()
        taken.append(sock)

    monkeypatch.setattr(cli, "build", build_and_take_the_port)
    monkeypatch.setattr(cli.subprocess, "Popen", lambda *a, **k: pytest.fail("Voila started"))
    try:
        status = cli.main(["app", "ising", "--port", str(port), "--no-browser"])
    finally:
        for sock in taken:
            sock.close()
    out = capsys.readouterr()
    assert status == 2 and taken and "in use" in out.err and "serving" not in out.out


def test_cli_hands_the_resolved_cache_folder_to_voila(no_build, fresh_roots, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HESSVIEW_CACHE_DIR", "here")
    started = {}

    class Server:
        def __init__(self, command, env):
            started.update(command=command, env=env)

        def wait(self, timeout=None):
            return 0

    monkeypatch.setattr(cli.subprocess, "Popen", Server)
    monkeypatch.setattr(cli.signal, "signal", lambda *args: None)
    assert cli.main(["app", "ising", "--port", str(cli.free_port(19966)), "--no-browser"]) == 0
    assert started["env"]["HESSVIEW_CACHE_DIR"] == str(tmp_path / "here")
    assert started["env"]["HESSVIEW_DEMO"] == "ising" and no_build == [["ising"]]
