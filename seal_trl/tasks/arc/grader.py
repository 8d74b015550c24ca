"""ArcGrader: greedy answers over augmented queries, mapped back and voted; 1.0 when an attempt is exact.

For each test input, the puzzle (demonstrations and test input) is transformed by each voting augmentation
(by default the 8 symmetries of the square), the model answers each transformed query greedily, each answer
that parses as a grid is mapped back through the augmentation's inverse, and the grids with the most votes are
the attempts (ties: the earlier augmentation wins, the identity first). The probe scores 1.0 when, for every
test input, one of the `attempts` (2, as in ARC) equals the expected output exactly; else 0.0.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import torch

from ...probes import Probe
from . import augment as aug
from .task import ArcProbe, format_query
from .grids import GridError, Grid, text_to_grid, to_tuple
from ...inner.tensors import encode_text, pad_left


def parse_answer(text: str) -> Grid | None:
    """The grid at the start of a generated answer (up to the first blank line), or None."""
    block = text.strip().split("\n\n")[0]
    try:
        return to_tuple(text_to_grid(block))
    except GridError:
        return None


def vote(candidates: Sequence[Grid | None], attempts: int = 2) -> list[Grid]:
    """The `attempts` most frequent grids (None ignored); ties go to the grid seen first."""
    counts = Counter(c for c in candidates if c is not None)
    first_seen = {}
    for i, c in enumerate(candidates):
        if c is not None:
            first_seen.setdefault(c, i)
    return sorted(counts, key=lambda g: (-counts[g], first_seen[g]))[:attempts]


class ArcGrader:
    """Scores an `ArcProbe`: 1.0 if every test output is among the 2 voted attempts, else 0.0.

    `augmentations` are the voting transforms (each needs an inverse); `last_predictions` keeps, per test
    input, the attempts of the last `score` call (as grids), for reports.
    """

    name = "arc"

    def __init__(self, *, max_new_tokens: int = 256, augmentations: Sequence[aug.Augmentation] = aug.DIHEDRAL,
                 attempts: int = 2, batch_size: int = 8):
        if not augmentations or any(a.inverse is None for a in augmentations):
            raise ValueError("ArcGrader needs voting augmentations that all have an inverse "
                             "(e.g. augment.DIHEDRAL)")
        if attempts < 1:
            raise ValueError(f"attempts must be >= 1, got {attempts}")
        self.max_new_tokens = max_new_tokens
        self.augmentations = tuple(augmentations)
        self.attempts = attempts
        self.batch_size = batch_size
        self.last_predictions: list[list[Grid]] = []

    def queries(self, tokenizer, probe: ArcProbe, test_index: int) -> list[str]:
        """One prompt per voting augmentation, in order."""
        test_input = probe.tests[test_index][0]
        prompts = []
        for a in self.augmentations:
            demos = [(a(x), a(y)) for x, y in probe.demonstrations]
            prompts.append(format_query(tokenizer, demos, a(test_input)))
        return prompts

    @torch.no_grad()
    def generate(self, model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int | None = None) -> list[str]:
        """Greedy answers, batched with left padding; generation stops at EOS or a blank line."""
        from transformers import GenerationConfig

        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        config = GenerationConfig(max_new_tokens=max_new_tokens or self.max_new_tokens, do_sample=False,
                                  pad_token_id=pad, eos_token_id=tokenizer.eos_token_id, stop_strings=["\n\n"])
        device = next(model.parameters()).device
        # tokenised as the inner loop's training examples are (tensors.encode_example), so prompts match
        encoded = [encode_text(tokenizer, p) for p in prompts]
        answers = [""] * len(prompts)
        for start in range(0, len(encoded), self.batch_size):
            chunk = list(range(start, min(start + self.batch_size, len(encoded))))
            batch = pad_left([encoded[k] for k in chunk], pad, device)
            out = model.generate(**batch, generation_config=config, tokenizer=tokenizer)
            for k, row in zip(chunk, out[:, batch["input_ids"].shape[1]:]):
                answers[k] = tokenizer.decode(row, skip_special_tokens=True)
        return answers

    def answer_budget(self, probe: ArcProbe) -> int:
        """New tokens allowed for an answer: `max_new_tokens`, or less for a puzzle of small grids (twice the
        largest grid it shows, in any orientation, plus its EOS; the expected output is never looked at)."""
        grids = [g for pair in probe.demonstrations for g in pair] + [t[0] for t in probe.tests]
        largest = max((len(g) + 1) * (len(g[0]) + 1) for g in grids)
        return min(self.max_new_tokens, 2 * largest + 1)

    def predict(self, model, tokenizer, probe: ArcProbe, test_index: int) -> list[Grid]:
        """The voted attempts for one test input, as grids of the original (unaugmented) puzzle."""
        answers = self.generate(model, tokenizer, self.queries(tokenizer, probe, test_index),
                                max_new_tokens=self.answer_budget(probe))
        candidates: list[Grid | None] = []
        for a, text in zip(self.augmentations, answers):
            grid = parse_answer(text)
            if grid is not None:
                try:
                    grid = to_tuple(a.invert(grid))
                except aug.NotInvertible:
                    grid = None
            candidates.append(grid)
        return vote(candidates, self.attempts)

    def score(self, model, tokenizer, probe: Probe) -> float:
        if not isinstance(probe, ArcProbe):
            raise TypeError("ArcGrader scores ARC probes only: build the probe with ArcTask.probe(context)")
        self.last_predictions = [self.predict(model, tokenizer, probe, i) for i in range(len(probe.tests))]
        solved = [expected in attempts for (_, expected), attempts in zip(probe.tests, self.last_predictions)]
        return 1.0 if all(solved) else 0.0
