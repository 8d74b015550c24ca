"""seal-trl: Self-Adapting Language Models (SEAL) for Hugging Face TRL.

The public API, imported lazily so `import seal_trl` stays cheap (the trainer pulls in TRL):

    from seal_trl import SEALTrainer, SEALConfig, SelfEditReward, InnerLoop, InnerLoopConfig, KnowledgeTask, ArcTask
"""

from importlib import import_module
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_EXPORTS = {
    "SEALConfig": "seal_trl.config",
    "SEALTrainer": "seal_trl.trainer",
    "SelfEditReward": "seal_trl.reward",
    "RewardTerms": "seal_trl.reward_terms",
    "SyncInnerLoopCallback": "seal_trl.callbacks",
    "InnerLoop": "seal_trl.inner.engine",
    "InnerLoopConfig": "seal_trl.inner.config",
    "InnerResult": "seal_trl.inner.jobs",
    "InnerJob": "seal_trl.inner.jobs",
    "TrainingPlan": "seal_trl.plans",
    "PlanBounds": "seal_trl.plans",
    "SelfEditError": "seal_trl.plans",
    "Probe": "seal_trl.probes",
    "knowledge_probe": "seal_trl.probes",
    "KnowledgeTask": "seal_trl.tasks.knowledge",
    "ArcTask": "seal_trl.tasks.arc.task",
    "load_contexts": "seal_trl.tasks.squad",
    "load_model_and_tokenizer": "seal_trl.models",
    "ContinualLearner": "seal_trl.continual.learner",
    "ContinualConfig": "seal_trl.continual.learner",
    "GateThresholds": "seal_trl.continual.gate",
    "GateVerdict": "seal_trl.continual.gate",
    "AdapterRegistry": "seal_trl.continual.registry",
    "read_documents": "seal_trl.continual.documents",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # the same names for type checkers and the API docs (mkdocstrings reads this statically)
    from seal_trl.callbacks import SyncInnerLoopCallback
    from seal_trl.config import SEALConfig
    from seal_trl.continual.documents import read_documents
    from seal_trl.continual.gate import GateThresholds, GateVerdict
    from seal_trl.continual.learner import ContinualConfig, ContinualLearner
    from seal_trl.continual.registry import AdapterRegistry
    from seal_trl.inner.config import InnerLoopConfig
    from seal_trl.inner.engine import InnerLoop
    from seal_trl.inner.jobs import InnerJob, InnerResult
    from seal_trl.models import load_model_and_tokenizer
    from seal_trl.plans import PlanBounds, SelfEditError, TrainingPlan
    from seal_trl.probes import Probe, knowledge_probe
    from seal_trl.reward import SelfEditReward
    from seal_trl.reward_terms import RewardTerms
    from seal_trl.tasks.arc.task import ArcTask
    from seal_trl.tasks.knowledge import KnowledgeTask
    from seal_trl.tasks.squad import load_contexts
    from seal_trl.trainer import SEALTrainer


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'seal_trl' has no attribute {name!r}")
