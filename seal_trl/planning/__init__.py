"""The memory and time planner behind `seal-trl plan`: parameter and FLOP arithmetic, no model loaded."""

from .memory import Component, MemoryPlan, PlanSettings, plan_memory
from .shapes import KNOWN_SHAPES, ModelShape, load_shape
from .timing import Phase, RoundSettings, plan_round

__all__ = ["KNOWN_SHAPES", "Component", "MemoryPlan", "ModelShape", "Phase", "PlanSettings", "RoundSettings",
           "load_shape", "plan_memory", "plan_round"]
