"""Basin-hopping global optimisation (Li & Scheraga 1987; Wales & Doye 1997, GMIN).

Each step perturbs the current minimum's coordinates uniformly in :math:`[-s, s]^P`, quenches, stores the
minimum, and accepts it as the new current minimum with the Metropolis probability
:math:`\\min(1, e^{-(L_\\text{new} - L_\\text{old})/T})`. Step ``k`` draws its random numbers from
``numpy.random.default_rng([seed, k])`` and the step counter, current minimum and step size are committed
together with each new minimum, so a run killed at any moment resumes exactly where the last commit left it.

With a ``target_acceptance`` the step size adapts as GMIN's does: after every ``adjust_every`` steps it is
multiplied by 1.1 when the fraction of accepted steps in that window exceeded the target (steps too
timid), and divided by 1.1 otherwise.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

from hessview.landscape.quench import quench

if TYPE_CHECKING:
    from hessview.landscape.database import Minimum
    from hessview.landscape.landscape import Landscape

_STEP_KEY = "basin_hopping_step"
_CURRENT_KEY = "basin_hopping_current"
_ADAPTIVE_KEY = "basin_hopping_adaptive"
#: GMIN-style factor by which the step size grows or shrinks
ADJUST_FACTOR = 1.1


def _start(landscape: Landscape, callback) -> int:
    """Quench a random starting point (step 0) and store it as the current minimum."""
    rng = np.random.default_rng([landscape.seed, 0])
    scale = 1.0 / math.sqrt(landscape.network.n_inputs)
    for _ in range(10):
        point = quench(landscape.loss, rng.normal(0.0, scale, landscape.network.n_params))
        if point is not None:
            break
    else:
        raise RuntimeError("no minimum found from 10 random starting points")
    db = landscape.db
    with db.transaction():
        minimum_id, _ = landscape._record_minimum(point)
        db.set_meta(_CURRENT_KEY, str(minimum_id))
        db.set_meta(_STEP_KEY, "1")
    if callback is not None:
        callback(0, db.minimum(minimum_id), True)
    return minimum_id


def run(
    landscape: Landscape,
    n_steps: int,
    temperature: float,
    step_size: float,
    callback: Callable[[int, Minimum | None, bool], None] | None,
    progress: bool,
    target_acceptance: float | None = None,
    adjust_every: int = 10,
) -> float:
    """Run ``n_steps`` more basin-hopping steps on ``landscape``, resuming from its database.

    Returns the step size in use at the end (changed only with ``target_acceptance``).
    """
    db = landscape.db
    current_id = db.get_meta(_CURRENT_KEY)
    current_id = _start(landscape, callback) if current_id is None else int(current_id)
    current = db.minimum(current_id)
    step = int(db.get_meta(_STEP_KEY))
    adaptive = {"step_size": step_size, "accepted": 0, "steps": 0}
    if target_acceptance is not None and db.get_meta(_ADAPTIVE_KEY) is not None:
        adaptive = json.loads(db.get_meta(_ADAPTIVE_KEY))
    for _ in tqdm(range(n_steps), desc="basin-hopping", disable=not progress):
        size = adaptive["step_size"]
        rng = np.random.default_rng([landscape.seed, step])
        start = current.coords + rng.uniform(-size, size, current.coords.shape)
        point = quench(landscape.loss, start)
        found = None
        accepted = False
        with db.transaction():
            if point is not None:
                found_id, _ = landscape._record_minimum(point)
                found = db.minimum(found_id)
                rise = found.loss - current.loss
                accepted = rise <= 0 or rng.random() < math.exp(-rise / temperature)
                if accepted:
                    db.set_meta(_CURRENT_KEY, str(found_id))
            db.set_meta(_STEP_KEY, str(step + 1))
            if target_acceptance is not None:
                adaptive["steps"] += 1
                adaptive["accepted"] += int(accepted)
                if adaptive["steps"] >= adjust_every:
                    ratio = adaptive["accepted"] / adaptive["steps"]
                    factor = ADJUST_FACTOR if ratio > target_acceptance else 1.0 / ADJUST_FACTOR
                    adaptive = {"step_size": size * factor, "accepted": 0, "steps": 0}
                db.set_meta(_ADAPTIVE_KEY, json.dumps(adaptive))
        if accepted:
            current = found
        if callback is not None:
            callback(step, found, accepted)
        step += 1
    return float(adaptive["step_size"])
