"""Assemble benchmarks/RESULTS.md from the per-area sections in benchmarks/results/*.md."""

from pathlib import Path

HEADER = """# Benchmark results

Each section below comes from `benchmarks/results/<area>.md`, written by the benchmark script named in it,
with the command that reproduces it. All figures were measured on the shared 2-core development machine;
where the load was high the sections say so and quote CPU seconds or ratios measured side by side in one
run. Regenerate this file with `python benchmarks/make_results.py`.
"""

ORDER = ["engine", "explorer", "datasets", "landscape", "scale", "ground_truth", "ground_truth_profile"]


def main() -> None:
    here = Path(__file__).parent
    sections = sorted((here / "results").glob("*.md"), key=lambda p: (ORDER + [p.stem]).index(p.stem))
    body = "\n\n".join(p.read_text().strip() for p in sections)
    (here / "RESULTS.md").write_text(HEADER + "\n" + body + "\n")


if __name__ == "__main__":
    main()
