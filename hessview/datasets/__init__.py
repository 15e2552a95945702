"""Physics data sets: Fermi-Hubbard chain ground states (exact diagonalisation) and 2D Ising Monte Carlo."""

from hessview.datasets.fermi_hubbard import (
    FERMI_HUBBARD_GRIDS,
    FermiHubbardData,
    fermi_hubbard_chain,
    fermi_hubbard_grid,
    fermi_hubbard_split,
)
from hessview.datasets.ising import (
    CRITICAL_TEMPERATURE,
    IsingData,
    ising_2d,
    onsager_energy,
    onsager_magnetisation,
)

__all__ = [
    "CRITICAL_TEMPERATURE",
    "FERMI_HUBBARD_GRIDS",
    "FermiHubbardData",
    "IsingData",
    "fermi_hubbard_chain",
    "fermi_hubbard_grid",
    "fermi_hubbard_split",
    "ising_2d",
    "onsager_energy",
    "onsager_magnetisation",
]
