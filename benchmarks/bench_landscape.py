"""Basin-hopping over a tanh network's weights: hessview vs scipy.optimize.basinhopping vs topsearch.

Same network, data, loss (hessview's float64 torch loss and gradient), temperature and step size for
every method; each run is timed from its first quench. Reported per method, as medians over seeds:

* distinct minima found per second of wall time, counted afterwards by one rule for all methods:
  every reported minimum is first re-quenched tightly (hessview's quench, untimed) so that loosely
  converged copies of one minimum are not counted twice and points that are not minima are dropped, then
  two minima are the same when their losses agree within 1e-6 and their coordinates within 1e-2 after
  alignment over hidden-unit permutations and tanh sign flips;
* the time until the run first reaches the lowest minimum known to any run (loss within 1e-6).

hessview's quench is L-BFGS to |g| < 1e-7 and Newton steps to |g| < 1e-9 plus an exact Hessian per
minimum (stored eigenvalues), and it writes every minimum to SQLite; scipy and topsearch stop at their
L-BFGS tolerance (1e-7 here) and keep minima in memory.

topsearch (PyPI 0.0.3) pins numpy<2 and pulls rdkit and ase; it is *not* installed into the project's
environment. Install it beside it with ``pip install --no-deps --target /tmp/topsearch-pkgs topsearch
nptyping`` and pass ``--topsearch /tmp/topsearch-pkgs``; the script then restores the numpy 1 aliases
nptyping names and stubs the molecular modules (ase, rdkit) that its non-atomic basin-hopping never calls.

Run:  .venv/bin/python benchmarks/bench_landscape.py --seeds 5 --steps 30 --topsearch /tmp/topsearch-pkgs

``--connect`` benchmarks connection instead: one set of basin-hopping minima (hessview, a 4-4-2 tanh network
on 20 points of an XOR-like rule, weight decay 1e-3) is handed to hessview's ``connect()`` and to topsearch's
``NetworkSampling`` (``ConnectUnconnected`` pair selection, NEB + hybrid eigenvector-following), side by side
in one run, and each result is checked by one rule: the connected sets, and how many stored transition states
are first-order saddles (exactly one negative eigenvalue of the exact Hessian) with max |gradient| < 1e-6
(topsearch's own convergence test):

      .venv/bin/python benchmarks/bench_landscape.py --connect --steps 15 --cycles 3 \
          --topsearch /tmp/topsearch-pkgs
      .venv/bin/python benchmarks/bench_landscape.py --connect --large --steps 80   # hessview only

``--hvp`` times one transition-state search (eigenvector-following from the highest image of one DNEB band
between two basin-hopping minima) with the dense Hessian path and with the Hessian-vector-product path
(``hessian="dense"`` / ``"hvp"``) on the same start, side by side, for networks 20-h-2 on 20 points
(``--sizes``: the hidden widths), and checks that both end on the same saddle:

      .venv/bin/python benchmarks/bench_landscape.py --hvp --sizes 6 20 44 87 130 --searches 3 --steps 12

``--whole`` compares a whole run on the network and data of ``--connect``: each tool starts from the same
point, samples minima by its own basin-hopping (``--steps`` steps, T = 1, perturbations in [-3, 3]) and
connects them (hessview ``explore()`` + ``connect()`` with its defaults; topsearch ``BasinHopping`` +
``--cycles`` cycles of ``NetworkSampling`` with ``ConnectUnconnected`` pairs), timed from start to end. Both
results are then counted by one rule: every minimum is re-quenched tightly and deduplicated over the
network's symmetries (hidden-unit permutations, tanh sign flips), transition states are checked with the
exact Hessian (one negative eigenvalue, max |gradient| < 1e-6) and the connected sets are those of the
distinct minima joined by the verified transition states:

      nice -n 10 .venv/bin/python benchmarks/bench_landscape.py --whole --steps 15 --cycles 1 \
          --topsearch /tmp/topsearch-pkgs
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
import types

import numpy as np
import torch
from scipy.optimize import basinhopping

from hessview.landscape import Landscape
from hessview.landscape.network import single_thread
from hessview.landscape.quench import quench
from hessview.landscape.symmetry import align

HIDDEN, WEIGHT_DECAY, TEMPERATURE, STEP_SIZE = 3, 1e-3, 0.01, 2.0
LBFGS_GTOL = 1e-7
SAME_LOSS, SAME_COORDS = 1e-6, 1e-2


def data():
    """300 standardised samples of scikit-learn's breast-cancer data (30 features): a rugged landscape."""
    from sklearn.datasets import load_breast_cancer

    cancer = load_breast_cancer()
    X = (cancer.data - cancer.data.mean(0)) / cancer.data.std(0)
    keep = np.random.default_rng(0).permutation(len(X))[:300]
    return X[keep], cancer.target[keep]


def start_point(land: Landscape, seed: int) -> np.ndarray:
    """The same random start hessview's chain uses (step 0)."""
    rng = np.random.default_rng([seed, 0])
    return rng.normal(0.0, 1.0 / np.sqrt(land.network.n_inputs), land.network.n_params)


def run_hessview(X, y, seed, n_steps):
    land = Landscape(X, y, hidden=HIDDEN, weight_decay=WEIGHT_DECAY, seed=seed)
    found = []
    t0 = time.perf_counter()

    def record(step, minimum, accepted):
        if minimum is not None:
            found.append((time.perf_counter() - t0, minimum.loss, minimum.coords))

    land.explore(n_steps, temperature=TEMPERATURE, step_size=STEP_SIZE, callback=record, progress=False)
    return time.perf_counter() - t0, found


def run_scipy(X, y, seed, n_steps):
    land = Landscape(X, y, hidden=HIDDEN, weight_decay=WEIGHT_DECAY, seed=seed)
    found = []
    t0 = time.perf_counter()

    def record(x, f, accept):
        found.append((time.perf_counter() - t0, float(f), np.array(x)))

    with single_thread():
        basinhopping(
            land.loss.value_and_gradient,
            start_point(land, seed),
            niter=n_steps,
            T=TEMPERATURE,
            stepsize=STEP_SIZE,
            callback=record,
            rng=seed,
            minimizer_kwargs={"method": "L-BFGS-B", "jac": True, "options": {"gtol": LBFGS_GTOL}},
        )
    return time.perf_counter() - t0, found


def import_topsearch(path):
    """Import topsearch's basin-hopping from a --no-deps install, or return None with the reason."""
    if path is None:
        return None, "not run (pass --topsearch PATH)"
    removed_in_numpy_2 = {
        "bool8": np.bool_,
        "object0": np.object_,
        "int0": np.intp,
        "uint0": np.uintp,
        "void0": np.void,
        "str0": np.str_,
        "bytes0": np.bytes_,
        "float_": np.float64,
        "complex_": np.complex128,
        "unicode_": np.str_,
        "string_": np.bytes_,
        "longfloat": np.longdouble,
        "cfloat": np.complex128,
        "clongfloat": np.clongdouble,
        "longcomplex": np.clongdouble,
        "singlecomplex": np.complex64,
    }
    for alias, target in removed_in_numpy_2.items():  # nptyping 2.5 still names these
        if not hasattr(np, alias):
            setattr(np, alias, target)
    for name in (
        "ase",
        "ase.geometry",
        "ase.geometry.analysis",
        "ase.neighborlist",
        "ase.calculators",
        "ase.calculators.psi4",
        "rdkit",
        "rdkit.Chem",
    ):
        if name not in sys.modules:
            stub = types.ModuleType(name)
            stub.Analysis = stub.Atoms = stub.Psi4 = stub.AllChem = object
            sys.modules[name] = stub
    sys.path.insert(0, path)
    try:
        from topsearch.data.coordinates import StandardCoordinates
        from topsearch.data.kinetic_transition_network import KineticTransitionNetwork
        from topsearch.global_optimisation.basin_hopping import BasinHopping
        from topsearch.global_optimisation.perturbations import StandardPerturbation
        from topsearch.similarity.similarity import StandardSimilarity
    except Exception as error:  # noqa: BLE001 - reported in the results table
        return None, f"import failed: {type(error).__name__}: {error}"
    return (
        StandardCoordinates,
        KineticTransitionNetwork,
        BasinHopping,
        StandardPerturbation,
        StandardSimilarity,
    ), "ok"


def run_topsearch(classes, X, y, seed, n_steps):
    coordinates, network, hopping, perturbation, similarity_class = classes
    land = Landscape(X, y, hidden=HIDDEN, weight_decay=WEIGHT_DECAY, seed=seed)
    found = []
    np.random.seed(seed)
    random.seed(seed)

    class Potential:
        def function_gradient(self, position):
            return land.loss.value_and_gradient(position)

    class RecordingSimilarity(similarity_class):
        def test_new_minimum(self, ktn, min_coords, min_energy):
            found.append((time.perf_counter() - t0, float(min_energy), np.array(min_coords.position)))
            super().test_new_minimum(ktn, min_coords, min_energy)

    coords = coordinates(ndim=land.network.n_params, bounds=[(-50.0, 50.0)] * land.network.n_params)
    coords.position = start_point(land, seed)
    # topsearch displaces by (U[0,1) - 0.5) * max_displacement: twice our half-width gives U[-s, s]
    runner = hopping(
        ktn=network(),
        potential=Potential(),
        similarity=RecordingSimilarity(SAME_COORDS, SAME_LOSS),
        step_taking=perturbation(max_displacement=2 * STEP_SIZE),
    )
    here = os.getcwd()
    with tempfile.TemporaryDirectory() as scratch, single_thread():
        os.chdir(scratch)  # topsearch writes a 'logfile' into the working directory
        try:
            t0 = time.perf_counter()
            runner.run(coords, n_steps, conv_crit=LBFGS_GTOL, temperature=TEMPERATURE)
            wall = time.perf_counter() - t0
        finally:
            os.chdir(here)
    return wall, found


def polish(loss, found):
    """Re-quench every reported minimum tightly; drop those that lead to no true minimum."""
    polished = []
    with single_thread():
        for t, _, coords in found:
            point = quench(loss, coords)
            if point is not None:
                polished.append((t, point.loss, point.coords))
    return polished


def distinct(network, found):
    kept = []
    for _, loss, coords in found:
        if not any(
            abs(loss - k_loss) < SAME_LOSS and align(network, k, coords)[1] < SAME_COORDS
            for k_loss, k in kept
        ):
            kept.append((loss, coords))
    return len(kept)


def saddle_check(land, coords_list) -> int:
    """How many points are first-order saddles with max |gradient| < 1e-6 (exact Hessian)."""
    from hessview.landscape.quench import analyse

    good = 0
    for coords in coords_list:
        point = analyse(land.loss, np.asarray(coords, dtype=float))
        good += int(point.n_negative == 1 and np.abs(point.gradient).max() < 1e-6)
    return good


def topsearch_tools(loss, n_params: int):
    """topsearch's pieces, set alike for ``--connect`` and ``--whole``.

    hessview's exact loss as topsearch's potential, the coordinates, the similarity, and a factory of
    the connection sampler for a kinetic transition network ``ktn``.
    """
    from topsearch.data.coordinates import StandardCoordinates
    from topsearch.potentials.potential import Potential
    from topsearch.sampling.exploration import NetworkSampling
    from topsearch.similarity.similarity import StandardSimilarity
    from topsearch.transition_states.hybrid_eigenvector_following import HybridEigenvectorFollowing
    from topsearch.transition_states.nudged_elastic_band import NudgedElasticBand

    class NetworkLoss(Potential):  # hessview's exact loss, gradient and Hessian for topsearch
        def function(self, x):
            return loss.value(np.asarray(x))

        def gradient(self, x, displacement=None):
            return loss.value_and_gradient(np.asarray(x))[1]

        def function_gradient(self, x):
            return loss.value_and_gradient(np.asarray(x))

        def hessian(self, x, displacement=None):
            return loss.hessian(np.asarray(x))

    coords = StandardCoordinates(ndim=n_params, bounds=[(-100.0, 100.0)] * n_params)
    potential = NetworkLoss()
    similarity = StandardSimilarity(distance_criterion=1e-3, energy_criterion=1e-6)

    def make_sampler(ktn):
        return NetworkSampling(
            ktn,
            coords,
            None,
            HybridEigenvectorFollowing(potential, ts_conv_crit=1e-6, ts_steps=100, pushoff=1e-2),
            NudgedElasticBand(
                potential, force_constant=1.0, image_density=5.0, max_images=20, neb_conv_crit=1e-2
            ),
            similarity,
        )

    return potential, coords, similarity, make_sampler


def connect_cycles(sampler, coords, cycles: int) -> None:
    """``cycles`` rounds of topsearch's ``ConnectUnconnected`` connection attempts (3 pairs each)."""
    for _ in range(cycles):
        pairs = sampler.select_minima(coords, "ConnectUnconnected", 3)
        if not pairs:
            break
        sampler.run_connection_attempts(pairs)


def connect_benchmark(args) -> None:
    """hessview ``connect()`` against topsearch's connection sampling on the same stored minima."""
    here = os.getcwd()
    with tempfile.TemporaryDirectory() as scratch:
        os.chdir(scratch)  # topsearch writes a 'logfile' into the working directory, also outside its runs
        try:
            _connect_benchmark(args)
        finally:
            os.chdir(here)


def _connect_benchmark(args) -> None:
    n, d, temperature, step = (60, 12, 0.3, 2.0) if args.large else (20, 4, 1.0, 3.0)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, d))
    y = (X[:, 0] * X[:, 1] > 0).astype(int)
    land = Landscape(X, y, hidden=4, weight_decay=1e-3, seed=0)
    land.explore(args.steps, temperature=temperature, step_size=step, progress=False)
    minima = land.minima
    print(
        f"network {d}-4-2 tanh ({land.network.n_params} weights), {n} samples, weight decay 1e-3; "
        f"{args.steps} basin-hopping steps -> {len(minima)} minima handed to every tool"
    )
    rows = []
    classes, status = import_topsearch(args.topsearch)
    if classes is not None:
        import networkx as nx
        from topsearch.data.kinetic_transition_network import KineticTransitionNetwork

        np.random.seed(0)
        ktn = KineticTransitionNetwork()
        for m in minima:
            ktn.add_minimum(m.coords.copy(), m.loss)
        _, coords, _, make_sampler = topsearch_tools(land.loss, land.network.n_params)
        sampler = make_sampler(ktn)
        with single_thread():
            t0 = time.perf_counter()
            connect_cycles(sampler, coords, args.cycles)
            wall = time.perf_counter() - t0
        sets = sorted((len(c) for c in nx.connected_components(ktn.G)), reverse=True)
        edges = [data["coords"] for _, _, data in ktn.G.edges(data=True)]
        rows.append(
            (
                f"topsearch 0.0.3 NetworkSampling, {args.cycles} ConnectUnconnected cycles",
                wall,
                ktn.n_minima,
                sets,
                len(edges),
                saddle_check(land, edges),
            )
        )
    t0 = time.perf_counter()
    land.connect(progress=False)
    wall = time.perf_counter() - t0
    tss = land.transition_states
    rows.insert(
        0,
        (
            "hessview `connect()`",
            wall,
            len(land.minima),
            [len(s) for s in land.connected_sets()],
            len(tss),
            saddle_check(land, [t.coords for t in tss]),
        ),
    )
    print(f"topsearch: {status}\n")
    print(
        "| tool | wall s | minima after | connected sets (sizes) | transition states | first-order saddles |"
    )
    print("|---|---|---|---|---|---|")
    for name, wall, n_min, sets, n_ts, good in rows:
        shown = ", ".join(map(str, sets[:8])) + (", ..." if len(sets) > 8 else "")
        print(f"| {name} | {wall:.1f} | {n_min} | {len(sets)}: {shown} | {n_ts} | {good}/{n_ts} |")
    if len(rows) == 2:
        print(f"\nwall-time ratio topsearch : hessview = {rows[1][1] / rows[0][1]:.1f}")


def whole_benchmark(args) -> None:
    """A whole run (minima, transition states, connected sets), hessview against topsearch."""
    here = os.getcwd()
    with tempfile.TemporaryDirectory() as scratch:
        os.chdir(scratch)  # topsearch writes a 'logfile' into the working directory, also outside its runs
        try:
            _whole_benchmark(args)
        finally:
            os.chdir(here)


def _classes_of(network, reference, minima) -> list[int]:
    """For each ``(loss, coords)``, the index of its symmetry class among the re-quenched minima.

    ``reference`` is a list of distinct ``(loss, coords)`` that grows as new classes are met; a minimum
    whose re-quench fails gets ``-1``.
    """
    classes = []
    for loss, coords in minima:
        if coords is None:
            classes.append(-1)
            continue
        match = next(
            (
                k
                for k, (k_loss, k_coords) in enumerate(reference)
                if abs(loss - k_loss) < SAME_LOSS and align(network, k_coords, coords)[1] < SAME_COORDS
            ),
            None,
        )
        if match is None:
            reference.append((loss, coords))
            match = len(reference) - 1
        classes.append(match)
    return classes


def _score(land, minima_coords, ts_records) -> dict:
    """Distinct minima, verified transition states and connected sets of one tool's result.

    ``ts_records``: ``(coords, index of minimum 1, index of minimum 2)`` into ``minima_coords``.
    """
    from hessview.landscape.union_find import UnionFind

    polished = []
    with single_thread():
        for coords in minima_coords:
            point = quench(land.loss, np.asarray(coords, dtype=float))
            polished.append((point.loss, point.coords) if point is not None else (np.inf, None))
    reference: list = []
    classes = _classes_of(land.network, reference, polished)
    verified = [rec for rec in ts_records if saddle_check(land, [rec[0]]) == 1]
    union = UnionFind(range(len(reference)))
    for _, a, b in verified:
        if classes[a] >= 0 and classes[b] >= 0:
            union.union(classes[a], classes[b])
    sets = sorted((len(g) for g in union.groups()), reverse=True)
    lowest = int(np.argmin([loss for loss, _ in reference]))
    with_lowest = next(len(g) for g in union.groups() if lowest in g)
    return {
        "distinct": len(reference),
        "reported": len(minima_coords),
        "ts": len(ts_records),
        "verified": len(verified),
        "sets": sets,
        "with_lowest": with_lowest,
        "lowest": reference[lowest][0],
    }


def _whole_benchmark(args) -> None:
    n, d, temperature, step = 20, 4, 1.0, 3.0
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, d))
    y = (X[:, 0] * X[:, 1] > 0).astype(int)
    print(
        f"network {d}-4-2 tanh, {n} samples, weight decay 1e-3; {args.steps} basin-hopping steps "
        f"(T = {temperature}, step {step}) and connection, each tool from the same start",
        flush=True,
    )
    results = {}
    classes, status = import_topsearch(args.topsearch)
    reference = Landscape(X, y, hidden=4, weight_decay=1e-3, seed=0)
    start = start_point(reference, 0)
    if classes is not None:
        from topsearch.data.kinetic_transition_network import KineticTransitionNetwork
        from topsearch.global_optimisation.basin_hopping import BasinHopping
        from topsearch.global_optimisation.perturbations import StandardPerturbation

        np.random.seed(0)
        random.seed(0)
        ktn = KineticTransitionNetwork()
        potential, coords, similarity, make_sampler = topsearch_tools(
            reference.loss, reference.network.n_params
        )
        coords.position = start.copy()
        hopping = BasinHopping(
            ktn=ktn,
            potential=potential,
            similarity=similarity,
            step_taking=StandardPerturbation(max_displacement=2 * step),
        )
        sampler = make_sampler(ktn)
        with single_thread():
            t0 = time.perf_counter()
            hopping.run(coords, args.steps, conv_crit=LBFGS_GTOL, temperature=temperature)
            connect_cycles(sampler, coords, args.cycles)
            wall = time.perf_counter() - t0
        minima_coords = [ktn.G.nodes[i]["coords"] for i in range(ktn.n_minima)]
        records = [(data["coords"], a, b) for a, b, data in ktn.G.edges(data=True)]
        results[f"topsearch 0.0.3 BasinHopping + {args.cycles} ConnectUnconnected cycles"] = (
            wall,
            _score(reference, minima_coords, records),
        )
    land = Landscape(X, y, hidden=4, weight_decay=1e-3, seed=0)
    t0 = time.perf_counter()
    land.explore(args.steps, temperature=temperature, step_size=step, progress=False)
    land.connect(progress=False)
    wall = time.perf_counter() - t0
    minima = land.minima
    index = {m.id: k for k, m in enumerate(minima)}
    records = [(t.coords, index[t.minimum1], index[t.minimum2]) for t in land.transition_states]
    results = {
        "hessview `explore()` + `connect()`": (wall, _score(land, [m.coords for m in minima], records)),
        **results,
    }
    print(f"topsearch: {status}\n")
    print(
        "| tool | wall s | minima reported | distinct minima | transition states | first-order saddles "
        "| connected sets of distinct minima (sizes) | set of the lowest minimum |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, (wall, r) in results.items():
        sets = r["sets"]
        shown = ", ".join(map(str, sets[:8])) + (", ..." if len(sets) > 8 else "")
        print(
            f"| {name} | {wall:.1f} | {r['reported']} | {r['distinct']} | {r['ts']} "
            f"| {r['verified']}/{r['ts']} "
            f"| {len(sets)}: {shown} | {r['with_lowest']} of {r['distinct']} (loss {r['lowest']:.6f}) |"
        )
    if len(results) == 2:
        (w0, r0), (w1, r1) = results.values()
        print(
            f"\nratios topsearch : hessview: wall time {w1 / w0:.1f}, distinct minima "
            f"{r1['distinct'] / r0['distinct']:.2f}, verified transition states "
            f"{r1['verified'] / max(r0['verified'], 1):.2f}, "
            f"connected sets {len(r1['sets']) / len(r0['sets']):.1f}"
        )


def hvp_benchmark(args) -> None:
    """Time per transition-state search, dense Hessian vs Hessian-vector products, at several sizes."""
    from hessview.landscape.network import RegularisedLoss
    from hessview.landscape.transition_states import band_maxima, dneb, eigenvector_following

    rng = np.random.default_rng(0)
    X = rng.normal(size=(20, 20))
    y = (X[:, 0] * X[:, 1] > 0).astype(int)
    rows = []
    for hidden in args.sizes:
        land = Landscape(X, y, hidden=hidden, weight_decay=1e-2, seed=1, hessian="hvp")
        land.explore(n_steps=args.steps, progress=False)
        minima = sorted(land.minima, key=lambda m: m.loss)
        losses = {
            mode: RegularisedLoss(land.network, land.X, land.y, 1e-2, mode) for mode in ("dense", "hvp")
        }
        times = {"dense": [], "hvp": []}
        agree, searches = 0, 0
        for first, second in list(zip(minima, minima[1:], strict=False))[: args.searches]:
            end, _ = align(land.network, first.coords, second.coords)
            with single_thread():
                images, energies = dneb(land.loss, first.coords, end, n_images=10)
            k = (band_maxima(energies) or [1 + int(np.argmax(energies[1:-1]))])[0]
            found = {}
            if not rows and searches == 0:  # untimed warm-up: first-call costs of torch and scipy
                for mode in ("dense", "hvp"):
                    with single_thread():
                        eigenvector_following(losses[mode], images[k], images[k + 1] - images[k - 1])
            order = ("dense", "hvp") if searches % 2 == 0 else ("hvp", "dense")  # alternate who goes first
            for mode in order:
                with single_thread():
                    start = time.perf_counter()
                    found[mode] = eigenvector_following(
                        losses[mode], images[k], images[k + 1] - images[k - 1]
                    )
                    times[mode].append(time.perf_counter() - start)
            searches += 1
            if found["dense"] is not None and found["hvp"] is not None:
                agree += abs(found["dense"].loss - found["hvp"].loss) < 1e-8
            print(
                f"P={land.network.n_params} search {searches}: "
                + ", ".join(
                    f"{m} {times[m][-1]:.2f} s ({'saddle' if found[m] is not None else 'failed'})"
                    for m in found
                ),
                file=sys.stderr,
                flush=True,
            )
        dense, hvp = float(np.median(times["dense"])), float(np.median(times["hvp"]))
        rows.append((land.network.n_params, searches, dense, hvp, agree))
    print(
        "network 20-h-2 tanh, 20 samples, weight decay 1e-2; one search = eigenvector-following from a band"
    )
    print("\n| weights P | searches | dense s (median) | HVP s (median) | dense / HVP | same saddle |")
    print("|---|---|---|---|---|---|")
    for n_params, searches, dense, hvp, agree in rows:
        print(
            f"| {n_params} | {searches} | {dense:.2f} | {hvp:.2f} | {dense / hvp:.2f} | {agree}/{searches} |"
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--topsearch", default=None, help="folder of a --no-deps topsearch install")
    parser.add_argument("--connect", action="store_true", help="benchmark connect() instead")
    parser.add_argument("--cycles", type=int, default=3, help="--connect: topsearch connection cycles")
    parser.add_argument("--large", action="store_true", help="--connect: the 60-point, 12-feature landscape")
    parser.add_argument("--hvp", action="store_true", help="time TS searches, dense Hessian vs HVP")
    parser.add_argument("--whole", action="store_true", help="whole run (minima + TS + sets) vs topsearch")
    parser.add_argument("--sizes", type=int, nargs="+", default=[6, 20, 44], help="--hvp: hidden widths")
    parser.add_argument("--searches", type=int, default=3, help="--hvp: searches per size")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.hvp:
        hvp_benchmark(args)
        return
    if args.whole:
        whole_benchmark(args)
        return
    if args.connect:
        connect_benchmark(args)
        return
    X, y = data()
    reference = Landscape(X, y, hidden=HIDDEN, weight_decay=WEIGHT_DECAY)
    network = reference.network
    classes, topsearch_status = import_topsearch(args.topsearch)
    methods = {"hessview": run_hessview, "scipy.optimize.basinhopping": run_scipy}
    if classes is not None:
        methods["topsearch BasinHopping"] = lambda *a: run_topsearch(classes, *a)

    for method in methods.values():  # warm-up: first-call costs (torch.func, imports) are not timed
        method(X, y, 0, 1)
    runs = {name: [] for name in methods}
    for seed in range(args.seeds):
        for name, method in methods.items():  # side by side: every method on each seed in turn
            wall, found = method(X, y, seed, args.steps)
            found = polish(reference.loss, found)
            runs[name].append((wall, found))
            print(
                f"seed {seed} {name}: {wall:.1f} s, {distinct(network, found)} distinct minima, "
                f"lowest {min(f[1] for f in found):.6f}",
                file=sys.stderr,
                flush=True,
            )

    lowest = min(f[1] for rs in runs.values() for _, found in rs for f in found)
    print(
        f"network: {X.shape[1]}-{HIDDEN}-2 tanh, {network.n_params} weights, "
        f"{len(X)} samples, weight decay {WEIGHT_DECAY}; T = {TEMPERATURE}, step = {STEP_SIZE}, "
        f"{args.steps} steps, seeds 0..{args.seeds - 1}; lowest known minimum {lowest:.6f}"
    )
    print(f"topsearch: {topsearch_status}\n")
    print(
        "| method | wall s (median) | distinct true minima (median) | minima / s (median) "
        "| time to lowest known, s (median over seeds that reach it) | seeds reaching it |"
    )
    print("|---|---|---|---|---|---|")
    rates = {}
    for name, rs in runs.items():
        walls = [w for w, _ in rs]
        counts = [distinct(network, found) for _, found in rs]
        rate = [c / w for c, w in zip(counts, walls, strict=True)]
        rates[name] = float(np.median(rate))
        reach = [next((t for t, loss, _ in found if loss <= lowest + SAME_LOSS), None) for _, found in rs]
        reached = [t for t in reach if t is not None]
        to_lowest = f"{np.median(reached):.2f}" if reached else "never"
        print(
            f"| {name} | {np.median(walls):.1f} | {np.median(counts):.0f} | {rates[name]:.2f} "
            f"| {to_lowest} | {len(reached)}/{len(rs)} |"
        )
    base = rates["hessview"]
    print(
        "\nminima/s ratio hessview : other = "
        + ", ".join(f"{base / r:.2f} ({n})" for n, r in rates.items() if n != "hessview" and r)
    )


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
