"""Time hessview's data generation: the paper's Fermi-Hubbard training set and the Ising demo set.

Run:  .venv/bin/python benchmarks/bench_datasets.py [--repeats 3]
Each run writes to a fresh temporary cache (so nothing is read from disk) and reports the median.
Side by side, on a 20-point subset: sparse Lanczos (what hessview uses) against dense ``numpy.linalg.eigh``.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import numpy as np

from hessview.datasets import fermi_hubbard_chain, fermi_hubbard_grid, ising_2d
from hessview.datasets.fermi_hubbard import _ChainHamiltonian


def median_time(func, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), times


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    grid = fermi_hubbard_grid("train")
    rows = []

    t, _ = median_time(
        lambda: fermi_hubbard_chain(grid, cache_dir=tempfile.mkdtemp(), progress=False), args.repeats
    )
    rows.append(("Fermi-Hubbard training set, 1000 ground states, L=12 (dim 924)", t))

    temps = np.linspace(1.2, 3.4, 24)
    t, _ = median_time(
        lambda: ising_2d(temps, L=16, n_per_T=40, cache_dir=tempfile.mkdtemp(), progress=False), args.repeats
    )
    rows.append(("Ising demo training set, 24 T x 40 configs, 16x16, 1000+ sweeps", t))
    temps20 = np.linspace(1.0, 3.5, 20)
    t, _ = median_time(
        lambda: ising_2d(temps20, L=16, n_per_T=100, cache_dir=tempfile.mkdtemp(), progress=False),
        args.repeats,
    )
    rows.append(("Ising, 20 T x 100 configs, 16x16", t))

    chain = _ChainHamiltonian(12, 6)
    subset = grid[::50]
    sparse, _ = median_time(lambda: [chain.ground_state(v, 0.0, 1e-7) for v in subset], args.repeats)
    dense, _ = median_time(
        lambda: [np.linalg.eigh(chain.matrix(v, 0.0, 1e-7).toarray()) for v in subset], args.repeats
    )

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    for name, seconds in rows:
        print(f"| {name} | {seconds:.2f} s |")
    print(
        f"| 20 ground states: sparse eigsh {sparse:.3f} s vs dense eigh {dense:.3f} s | "
        f"ratio {dense / sparse:.1f}x |"
    )


if __name__ == "__main__":
    main()
