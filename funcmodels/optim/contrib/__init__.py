"""optax.contrib's optimisers, in optax's names, argument names, defaults and arithmetic.

``fm.optim.contrib.X`` is ``optax.contrib.X``: code written for optax runs with
``optax.contrib`` replaced by ``fm.optim.contrib``. The states are named tuples of optax's
names, registered with :mod:`funcmodels.checkpoint`. Updates that take an extra argument
(the loss as ``value=`` for ``reduce_on_plateau``, ``momo`` and ``momo_adam``; SAM's
``grad_fn=``; Sophia's ``obj_fn=``, which ``sophia`` forwards itself) are called directly.
"""

from ._ademamix import (
    ScaleByAdemamixState,
    ScaleBySimplifiedAdEMAMixState,
    ademamix,
    scale_by_ademamix,
    scale_by_simplified_ademamix,
    simplified_ademamix,
)
from ._adopt import adopt, scale_by_adopt
from ._cocob import COCOBState, cocob, scale_by_cocob
from ._complex import (
    SplitRealAndImaginaryArrays,
    SplitRealAndImaginaryState,
    split_real_and_imaginary,
)
from ._dadapt import DAdaptAdamWState, ProdigyState, dadapt_adamw, prodigy
from ._dog import DoGState, DoWGState, dog, dowg
from ._galore import GaLoreDimensionNumbers, GaLoreState, galore, scale_by_galore
from ._madgrad import MadgradState, acprop, madgrad, scale_by_acprop, scale_by_madgrad
from ._mechanic import MechanicState, mechanize
from ._momo import MomoAdamState, MomoState, momo, momo_adam
from ._muon import MuonDimensionNumbers, MuonState, muon, scale_by_muon
from ._plateau import ReduceLROnPlateauState, reduce_on_plateau
from ._privacy import DifferentiallyPrivateAggregateState, differentially_private_aggregate, dpsgd
from ._sam import NormalizeState, SAMState, normalize, sam
from ._schedule_free import (
    ScheduleFreeState,
    schedule_free,
    schedule_free_adamw,
    schedule_free_eval_params,
    schedule_free_sgd,
)
from ._sophia import HutchinsonState, SophiaState, hutchinson_estimator_diag_hessian, sophia

__all__ = [
    "COCOBState",
    "DAdaptAdamWState",
    "DifferentiallyPrivateAggregateState",
    "DoGState",
    "DoWGState",
    "HutchinsonState",
    "MadgradState",
    "MechanicState",
    "MomoAdamState",
    "MomoState",
    "MuonDimensionNumbers",
    "MuonState",
    "NormalizeState",
    "ProdigyState",
    "ReduceLROnPlateauState",
    "SAMState",
    "ScaleByAdemamixState",
    "ScaleBySimplifiedAdEMAMixState",
    "ScheduleFreeState",
    "SophiaState",
    "SplitRealAndImaginaryArrays",
    "SplitRealAndImaginaryState",
    "acprop",
    "ademamix",
    "adopt",
    "cocob",
    "dadapt_adamw",
    "differentially_private_aggregate",
    "dog",
    "dowg",
    "dpsgd",
    "hutchinson_estimator_diag_hessian",
    "madgrad",
    "mechanize",
    "momo",
    "momo_adam",
    "muon",
    "normalize",
    "prodigy",
    "reduce_on_plateau",
    "sam",
    "scale_by_acprop",
    "scale_by_ademamix",
    "scale_by_adopt",
    "scale_by_cocob",
    "scale_by_madgrad",
    "scale_by_muon",
    "scale_by_simplified_ademamix",
    "schedule_free",
    "schedule_free_adamw",
    "schedule_free_eval_params",
    "schedule_free_sgd",
    "simplified_ademamix",
    "sophia",
    "split_real_and_imaginary",
]
__all__ += ["GaLoreDimensionNumbers", "GaLoreState", "galore", "scale_by_galore"]
