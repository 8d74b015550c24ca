"""The inner loop: execute a self-edit as a LoRA fine-tune and score the probe."""

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
    "make_grader",
]
