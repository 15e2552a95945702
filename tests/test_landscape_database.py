"""The landscape database is safe to share: fingerprinted, locked, never written when foreign (issue 13)."""

import os
import sqlite3
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from hessview.landscape import DatabaseError, DatabaseInUseError, Landscape


def xor_data(n=40, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 2))
    return X, (X[:, 0] * X[:, 1] > 0).astype(int)


def tables(path):
    with sqlite3.connect(path) as connection:
        return {r[0] for r in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def test_unrelated_sqlite_file_is_refused_and_left_untouched(tmp_path):
    path = tmp_path / "other.sqlite"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE customers (name TEXT)")
        connection.execute("INSERT INTO customers VALUES ('ada')")
    connection.close()
    before = path.read_bytes()
    X, y = xor_data()
    with pytest.raises(DatabaseError, match="not a hessview landscape database") as info:
        Landscape(X, y, hidden=2, db=path)
    assert str(path) in str(info.value)
    assert path.read_bytes() == before and tables(path) == {"customers"}
    assert isinstance(info.value, ValueError)


def test_file_that_is_not_sqlite_is_refused_naming_it(tmp_path):
    path = tmp_path / "notes.sqlite"
    path.write_text("this is a text file, not a database\n" * 100)
    before = path.read_bytes()
    X, y = xor_data()
    with pytest.raises(DatabaseError, match="not a SQLite database") as info:
        Landscape(X, y, hidden=2, db=path)
    assert str(path) in str(info.value) and path.read_bytes() == before


def test_database_of_other_data_or_network_is_refused(tmp_path):
    X, y = xor_data()
    path = tmp_path / "a.sqlite"
    Landscape(X, y, hidden=2, weight_decay=1e-2, db=path).explore(1, progress=False).close()
    other_X = X.copy()
    other_X[0, 0] += 1e-9  # one number changed: another data set
    for kwargs in (
        {"X": other_X, "y": y, "hidden": 2, "weight_decay": 1e-2},
        {"X": X, "y": 1 - y, "hidden": 2, "weight_decay": 1e-2},
        {"X": X, "y": y, "hidden": 3, "weight_decay": 1e-2},
        {"X": X, "y": y, "hidden": 2, "weight_decay": 2e-2},
        {"X": X, "y": y, "hidden": 2, "weight_decay": 1e-2, "seed": 1},
    ):
        with pytest.raises(DatabaseError, match="another landscape") as info:
            Landscape(db=path, **kwargs)
        assert str(path) in str(info.value)
    # the right landscape still opens it, so the refusals released the lock and changed nothing
    with Landscape(X, y, hidden=2, weight_decay=1e-2, db=path) as land:
        assert len(land.minima) >= 1


def test_other_format_version_is_refused(tmp_path):
    X, y = xor_data()
    path = tmp_path / "v.sqlite"
    Landscape(X, y, hidden=2, db=path).close()
    with sqlite3.connect(path) as connection:
        connection.execute("""UPDATE meta SET value = '{"name": "hessview.landscape", "version": 99}'
                              WHERE key = 'format'""")
    connection.close()
    with pytest.raises(DatabaseError, match="version 99"):
        Landscape(X, y, hidden=2, db=path)


def test_database_of_an_older_hessview_is_refused_with_what_to_do(tmp_path):
    X, y = xor_data()
    path = tmp_path / "old.sqlite"
    Landscape(X, y, hidden=2, db=path).close()
    with sqlite3.connect(path) as connection:  # what format 1 wrote: no format marker
        connection.execute("DELETE FROM meta WHERE key = 'format'")
    connection.close()
    with pytest.raises(DatabaseError, match="older hessview") as info:
        Landscape(X, y, hidden=2, db=path)
    assert str(path.resolve()) in str(info.value) and "--rebuild" in str(info.value)


def test_second_writer_in_the_same_process_is_refused_until_the_first_closes(tmp_path):
    X, y = xor_data()
    path = tmp_path / "shared.sqlite"
    first = Landscape(X, y, hidden=2, db=path).explore(1, progress=False)
    reader = Landscape(X, y, hidden=2, db=path)  # reading is never refused
    assert [m.loss for m in reader.minima] == [m.loss for m in first.minima]
    with pytest.raises(DatabaseInUseError, match="one writer at a time") as info:
        reader.explore(1, progress=False)
    assert str(path.resolve()) in str(info.value)
    for write in (lambda: reader.connect(progress=False), lambda: reader.db.transaction().__enter__()):
        with pytest.raises(DatabaseInUseError):
            write()
    first.close()
    reader.explore(1, progress=False)  # the lock is free now
    reader.close()


SCRIPT = textwrap.dedent("""
    import sys, time, numpy as np
    from hessview.landscape import Landscape, DatabaseInUseError
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 2)); y = (X[:, 0] * X[:, 1] > 0).astype(int)
    path, hold = sys.argv[1], float(sys.argv[2])
    land = Landscape(X, y, hidden=2, db=path)
    try:
        land.explore(3, progress=False)
    except DatabaseInUseError as error:
        print("REFUSED", len(land.minima), error, flush=True)
        sys.exit(3)
    print("EXPLORED", flush=True)
    time.sleep(hold)
    land.close()
""")


def test_second_process_is_refused_with_an_error_naming_the_database(tmp_path):
    path = tmp_path / "two.sqlite"
    env = dict(os.environ, PYTHONPATH=os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", ""))
    holder = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(path), "60"], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "EXPLORED"
        second = subprocess.run(
            [sys.executable, "-c", SCRIPT, str(path), "0"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert second.returncode == 3, second.stderr
        assert second.stdout.startswith("REFUSED 1 ") and str(path) in second.stdout  # nothing added
    finally:
        holder.kill()
        holder.wait()
    # the holder was killed (no close()): the kernel released its lock; resuming works, one run at a time
    X, y = xor_data()
    with Landscape(X, y, hidden=2, db=path) as land:
        hits = sum(m.hits for m in land.minima)
        assert hits >= 1
        land.explore(1, progress=False)
        assert sum(m.hits for m in land.minima) == hits + 1


def test_duplicate_check_runs_inside_the_write_transaction(tmp_path):
    """A writer that slips in between another writer's check and insert is kept out by the lock."""
    X, y = xor_data()
    path = tmp_path / "tx.sqlite"
    land = Landscape(X, y, hidden=2, db=path).explore(1, progress=False)
    minimum = land.minima[0]
    intruder = sqlite3.connect(path, timeout=0.1)
    with land.db.transaction():
        # inside the transaction the database is write-locked: another connection cannot insert
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            intruder.execute(
                "INSERT INTO minima(loss, coords, eigenvalues, log_product) VALUES (0, x'', x'', 0)"
            )
        point_count = len(land.db.minima())
        land.db.add_hit(minimum.id)
    intruder.close()
    assert point_count == 1 and land.minima[0].hits == minimum.hits + 1
    land.close()


def test_sqlite_errors_name_the_database(tmp_path):
    X, y = xor_data()
    path = tmp_path / "named.sqlite"
    land = Landscape(X, y, hidden=2, db=path)
    land.close()
    with pytest.raises(DatabaseError, match="closed") as info:
        land.minima  # noqa: B018
    assert str(path.resolve()) in str(info.value)
    with pytest.raises(ValueError, match="no minimum with id 7 in landscape database"):
        Landscape(X, y, hidden=2, db=path).db.minimum(7)


@pytest.mark.parametrize(
    "labels, match",
    [
        ([0, 5], r"0, 1, \.\.\., K-1"),
        ([0, 10**9], r"0, 1, \.\.\., K-1"),
        ([1, 2], r"labels \{1, 2\}"),
    ],
)
def test_labels_that_are_not_0_to_k_minus_1_are_refused_before_allocating(labels, match):
    X, _ = xor_data()
    y = np.array([labels[i % 2] for i in range(len(X))])
    with pytest.raises(ValueError, match=match):
        Landscape(X, y, hidden=2)


def test_weight_decay_must_be_positive():
    X, y = xor_data()
    for bad in (0, 0.0, -1e-3):
        with pytest.raises(ValueError, match="weight_decay must be a finite number > 0"):
            Landscape(X, y, hidden=2, weight_decay=bad)
