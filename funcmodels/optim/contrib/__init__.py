"""optax.contrib's optimisers, in optax's names, argument names, defaults and arithmetic.

``fm.optim.contrib.X`` is ``optax.contrib.X``: code written for optax runs with
``optax.contrib`` replaced by ``fm.optim.contrib``. The states are named tuples of optax's
names, registered with :mod:`funcmodels.checkpoint`. Updates that take the loss
(``reduce_on_plateau``'s ``value=``) are called directly.
"""

from ._cocob import COCOBState, cocob, scale_by_cocob
from ._dadapt import DAdaptAdamWState, ProdigyState, dadapt_adamw, prodigy
from ._mechanic import MechanicState, mechanize
from ._plateau import ReduceLROnPlateauState, reduce_on_plateau
from ._sam import NormalizeState, SAMState, normalize, sam
from ._schedule_free import (
    ScheduleFreeState,
    schedule_free,
    schedule_free_adamw,
    schedule_free_eval_params,
    schedule_free_sgd,
)

__all__ = [
    "COCOBState",
    "DAdaptAdamWState",
    "MechanicState",
    "NormalizeState",
    "ProdigyState",
    "SAMState",
    "cocob",
    "dadapt_adamw",
    "mechanize",
    "normalize",
    "prodigy",
    "sam",
    "scale_by_cocob",
    "ReduceLROnPlateauState",
    "ScheduleFreeState",
    "reduce_on_plateau",
    "schedule_free",
    "schedule_free_adamw",
    "schedule_free_eval_params",
    "schedule_free_sgd",
]
