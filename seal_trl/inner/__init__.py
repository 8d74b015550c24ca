"""The inner loop: execute a self-edit as a LoRA fine-tune and score the probe."""

from .auto_slots import SlotChoice
from .config import DEFAULT_TARGET_MODULES, InnerLoopConfig
from .engine import InnerLoop
from .jobs import InnerJob, InnerResult
from .graders import AnswerMatchGrader, Grader, JudgeGrader, LogLikelihoodGrader, make_grader

__all__ = [
    "DEFAULT_TARGET_MODULES",
    "AnswerMatchGrader",
    "Grader",
    "InnerJob",
    "InnerLoop",
    "InnerLoopConfig",
    "InnerResult",
    "JudgeGrader",
    "LogLikelihoodGrader",
    "SlotChoice",
    "make_grader",
]
