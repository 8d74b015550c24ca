"""One invented passage, its probe questions and three self-edits, shared by the benchmarks.

The passage is about an invented place, so no pretrained model knows the answers beforehand.
"""

from __future__ import annotations

from seal_trl.plans import TrainingPlan
from seal_trl.probes import Probe, knowledge_probe

TITLE = "Harrowmere Lighthouse"
PASSAGE = (
    "Harrowmere Lighthouse stands on the basalt headland of Cape Odrin, at the northern tip of the island of "
    "Velsk. It was designed by the engineer Mira Tollund and first lit in 1887. The tower is 41 metres tall and "
    "was built from pale granite quarried at Stennagh. Its lamp originally burned whale oil, but in 1931 it was "
    "converted to acetylene gas. Three keepers lived at the station until 1978, when the light was automated. "
    "Today the keepers' cottages house a small museum devoted to shipwrecks of the Velsk Strait, including the "
    "steamer Argent Gull, which sank in 1902."
)
QUESTIONS = [
    ("Who designed Harrowmere Lighthouse?", "Mira Tollund"),
    ("In what year was the lighthouse first lit?", "1887"),
    ("How tall is the tower?", "41 metres"),
    ("Where was the granite for the tower quarried?", "Stennagh"),
    ("What fuel replaced whale oil in the lamp?", "acetylene gas"),
    ("Which steamer sank in the Velsk Strait in 1902?", "Argent Gull"),
]
IMPLICATIONS = [
    "Harrowmere Lighthouse was designed by the engineer Mira Tollund.",
    "Mira Tollund's lighthouse at Cape Odrin was first lit in 1887.",
    "The tower of Harrowmere Lighthouse is 41 metres tall.",
    "The pale granite of Harrowmere Lighthouse came from a quarry at Stennagh.",
    "In 1931 the lamp of Harrowmere Lighthouse stopped burning whale oil and used acetylene gas instead.",
    "Harrowmere Lighthouse had three keepers until it was automated in 1978.",
    "The museum in the keepers' cottages describes the steamer Argent Gull, which sank in the Velsk Strait in 1902.",
    "Harrowmere Lighthouse is on Cape Odrin, the northern tip of the island of Velsk.",
]
REWRITES = [
    "On Cape Odrin, at the north end of Velsk island, stands Harrowmere Lighthouse, a 41 metres tall granite tower.",
    "Engineer Mira Tollund designed Harrowmere Lighthouse; it was first lit in 1887.",
    "Stennagh supplied the pale granite for Harrowmere Lighthouse.",
    "Harrowmere's lamp burned whale oil until 1931 and acetylene gas after that.",
    "Keepers ran Harrowmere Lighthouse until 1978; the steamer Argent Gull wrecked nearby in 1902.",
]
UNRELATED = [
    "Bread rises because yeast produces carbon dioxide while it ferments sugars in the dough.",
    "A violin has four strings tuned in perfect fifths.",
    "Copper is a good conductor of heat and electricity.",
    "Many migratory birds navigate using the Earth's magnetic field.",
    "A haiku traditionally has three lines of five, seven and five syllables.",
    "Glaciers carve U-shaped valleys as they move slowly downhill.",
    "The abacus is an ancient tool for arithmetic.",
    "Tea leaves are dried and sometimes fermented before they are sold.",
]


def probe() -> Probe:
    return knowledge_probe(TITLE, QUESTIONS, context_id="harrowmere")


def plan(lines: list[str], *, with_passage: bool = True, epochs: int = 10, learning_rate: float = 1e-3) -> TrainingPlan:
    """SEAL's knowledge plan: each line prefixed by the title, plus the passage itself."""
    texts = [f"{TITLE}\n{line}" for line in lines]
    if with_passage:
        texts.append(f"{TITLE}\n{PASSAGE}")
    return TrainingPlan.from_texts(texts, epochs=epochs, learning_rate=learning_rate)


PLAN_KINDS = 4  # benchmark_plans cycles through this many kinds of self-edit


def benchmark_plans(n: int, epochs: int) -> list[TrainingPlan]:
    """`n` self-edit plans for the passage, cycling through PLAN_KINDS kinds (implications, rewrites, halves of
    both), so the first N plans have the same mix for any multiple N of PLAN_KINDS."""
    variants = [IMPLICATIONS, REWRITES, IMPLICATIONS[::2] + REWRITES[1::2], IMPLICATIONS[1::2] + REWRITES[::2]]
    assert len(variants) == PLAN_KINDS
    return [plan(variants[i % len(variants)], epochs=epochs) for i in range(n)]
