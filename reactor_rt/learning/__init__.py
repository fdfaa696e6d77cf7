"""Live learning: feedback on served interactions turned into guarded updates of the model (plain PyTorch).

`LiveLearner.apply(LearningExample) -> LearningResult`; the runtime's learner actor wraps it.
"""

from reactor_rt.learning.example import REJECT_REASONS, LearningExample, LearningResult, MemorySource
from reactor_rt.learning.learner import LiveLearner
from reactor_rt.learning.params import PARAM_SETS, ParamSet, apply_serving_state, select_parameters
from reactor_rt.learning.persistence import saved_version
from reactor_rt.learning.rate_limit import TokenBucket

__all__ = [
    "PARAM_SETS",
    "REJECT_REASONS",
    "LearningExample",
    "LearningResult",
    "LiveLearner",
    "MemorySource",
    "ParamSet",
    "TokenBucket",
    "apply_serving_state",
    "saved_version",
    "select_parameters",
]
