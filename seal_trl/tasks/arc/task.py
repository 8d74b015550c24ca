"""Few-shot ARC: the self-edit is a JSON tool configuration; the plan is leave-one-out test-time training data.

Context = one puzzle (demonstration pairs + test pairs, see `data`). The policy sees the demonstrations and
writes a JSON configuration (`config`). The plan built from it: leave-one-out tasks over the demonstrations
(leave 1 and 2 out), each copied under the chosen augmentation groups, every copy with its demonstrations
reordered and, except the originals, its colours permuted (0 stays 0); capped at the plan bounds' example
limit. Each example is a chat prompt (the remaining demonstrations + the held-out input, rendered with the
tokenizer's chat template) and a completion (the held-out output grid). The probe is the test input(s),
scored by `tasks.arc.grader.ArcGrader`: 1 when one of 2 voted attempts reproduces every test output exactly.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...inner.tensors import TemplateText
from ...plans import PlanBounds, SelfEditError, TrainingPlan
from ...probes import Probe, ProbeItem
from ...seeding import check_distinct_context_ids, derive_seed
from . import augment as aug
from .config import DEFAULT_CONFIG, ArcConfig, parse_config
from .data import validate_context
from .grids import MAX_SIDE, Grid, grid_to_text, to_tuple
from ..base import Prompt
from ..squad import DatasetFormatError

Pair = tuple[np.ndarray, np.ndarray]

QUERY_INSTRUCTION = ("Each example maps an input grid to an output grid by the same rule. Grids are rows of "
                     "digits 0-9, one digit per cell. Give the output grid for the last input.")

SELF_EDIT_INSTRUCTION = (
    "You will adapt yourself to the puzzle below by fine-tuning on its examples. Choose how: which data "
    "augmentations to generate training examples with (basic: rotations, flips, reflections, transpose; size: "
    "resolution, height or width x2; chain: basic then size; repeat: tiling), whether the loss covers all tokens "
    "or only the output grids, the learning rate and the number of epochs. Reply with one JSON object in exactly "
    "this format:\n{example}"
)

#: The paper's ARC plan limits: at most 250 training examples, at most 375 optimizer steps.
ARC_BOUNDS = PlanBounds(max_examples=250, max_example_tokens=2048, max_total_tokens=250 * 2048,
                        min_learning_rate=1e-6, max_learning_rate=1e-2, max_epochs=20, step_budget=375)

_JSON_FIELDS = {"learning_rate": "training.learning_rate", "epochs": "training.num_train_epochs"}


def grids_block(pairs: Sequence[tuple[Any, Any]], query: Any) -> str:
    """The demonstrations and the query input as text (the body of the query prompt)."""
    parts = [QUERY_INSTRUCTION, ""]
    for i, (inp, out) in enumerate(pairs, 1):
        parts += [f"Example {i}", "Input:", grid_to_text(inp), "Output:", grid_to_text(out), ""]
    parts += ["Test", "Input:", grid_to_text(query), "Output:"]
    return "\n".join(parts)


def format_query(tokenizer, pairs: Sequence[tuple[Any, Any]], query: Any) -> str:
    """The prompt that asks for the output of `query` given `pairs`: a chat turn ready for the assistant's
    answer when the tokenizer has a chat template, else the plain text ending with a newline."""
    body = grids_block(pairs, query)
    if getattr(tokenizer, "chat_template", None):
        # grids and fixed instructions only: the rendering's special tokens are the template's
        return TemplateText(tokenizer.apply_chat_template([{"role": "user", "content": body}], tokenize=False,
                                                          add_generation_prompt=True))
    return body + "\n"


@dataclass(frozen=True)
class ArcProbe(Probe):
    """An ARC probe: the demonstrations and the (test input, expected output) pairs, as immutable grids.

    `items` holds one plain-text item per test input (its gold answer is the expected grid as text) so the
    generic probe checks and reports apply; `ArcGrader` reads `demonstrations` and `tests`.
    """

    demonstrations: tuple[tuple[Grid, Grid], ...] = ()
    tests: tuple[tuple[Grid, Grid], ...] = ()


def leave_out_indices(n: int, leave_out: Sequence[int] = (1, 2)) -> list[tuple[tuple[int, ...], int]]:
    """The leave-k-out tasks over `n` demonstrations as (kept demonstration indices, query index): for each k, each
    held-out pair as query and each choice of k-1 further pairs to drop; the rest (at least one) are the
    demonstrations. No duplicates. Indices only, so counting or sampling the tasks builds no grid."""
    tasks: list[tuple[tuple[int, ...], int]] = []
    for k in dict.fromkeys(leave_out):  # one k twice would repeat its tasks; different k's never coincide
        if k < 1 or n - k < 1:
            continue
        for query in range(n):
            others = [i for i in range(n) if i != query]
            for dropped in itertools.combinations(others, k - 1):
                tasks.append((tuple(i for i in others if i not in dropped), query))
    return tasks


def leave_out_tasks(pairs: Sequence[Pair], leave_out: Sequence[int] = (1, 2)) -> list[tuple[list[Pair], Pair]]:
    """The leave-k-out tasks of `leave_out_indices` with their pairs: (demonstrations, held-out pair)."""
    return [([pairs[i] for i in kept], pairs[query]) for kept, query in leave_out_indices(len(pairs), leave_out)]


def augmented_examples(pairs: Sequence[Pair], config: ArcConfig, rng: np.random.Generator, *,
                       leave_out: Sequence[int] = (1, 2), max_examples: int = 250, keep_background: bool = True,
                       max_side: int = MAX_SIDE) -> list[tuple[list[Pair], Pair]]:
    """The training tasks of a plan: leave-out tasks x (identity + the config's augmentation groups).

    Copies whose grids would exceed `max_side` are skipped. Originals (identity) come first and are kept
    when the total is capped at `max_examples`; the augmented copies are sampled with `rng`. Only the examples
    kept are built: the candidates are sampled as indices first, so the work is linear in `max_examples`, not in
    the (quadratic) number of leave-out tasks.
    """
    base = leave_out_indices(len(pairs), leave_out)
    transforms = [a for group in config.groups for a in aug.GROUPS[group]]

    def original(b: int) -> list[Pair]:
        kept, query = base[b]
        return _shuffled([pairs[i] for i in kept], rng) + [pairs[query]]

    def copy(b: int, transform) -> list[Pair] | None:
        kept, query = base[b]
        grids = [transform(g) for i in (*kept, query) for g in pairs[i]]
        if any(max(g.shape) > max_side for g in grids):
            return None
        colours = aug.random_colour_permutation(rng, keep_background=keep_background)
        grids = [aug.permute_colours(g, colours) for g in grids]
        new_pairs = list(zip(grids[::2], grids[1::2]))
        return _shuffled(new_pairs[:-1], rng) + [new_pairs[-1]]

    if len(base) >= max_examples:
        chosen = [original(b) for b in sorted(rng.choice(len(base), max_examples, replace=False))]
    else:
        chosen = [original(b) for b in range(len(base))]
        picked: list[tuple[int, list[Pair]]] = []
        room = max_examples - len(base)
        candidates = rng.permutation(len(base) * len(transforms)) if transforms and room > 0 else []
        for index in candidates:  # in a random order until the room is filled; oversized copies are passed over
            b, t = divmod(int(index), len(transforms))
            example = copy(b, transforms[t])
            if example is not None:
                picked.append((int(index), example))
                if len(picked) == room:
                    break
        chosen += [example for _, example in sorted(picked, key=lambda item: item[0])]
    return [(example[:-1], example[-1]) for example in chosen]


def _shuffled(pairs: list[Pair], rng: np.random.Generator) -> list[Pair]:
    return aug.permute_examples(pairs, rng.permutation(len(pairs)).tolist()) if len(pairs) > 1 else list(pairs)


@dataclass
class ArcTask:
    """Few-shot ARC puzzles with JSON tool-configuration self-edits (the paper's section 4.2 setting).

    `tokenizer` renders training examples and prompts with its chat template (set it here or through
    `build_dataset`). `bounds` cap the plan (the paper: 250 examples, 375 steps); use the same bounds in the
    inner loop's config (`arc_inner_config`). `leave_out` picks the leave-k-out tasks; `seed` the sampling of
    augmented copies, colour permutations and demonstration orders (per puzzle, reproducible).
    """

    tokenizer: Any = None
    bounds: PlanBounds = field(default_factory=lambda: ARC_BOUNDS)
    leave_out: tuple[int, ...] = (1, 2)
    keep_background: bool = True
    chat: bool | None = None
    seed: int = 0
    name: str = "arc"
    context_fields: Sequence[str] = ("context_id", "train", "test")

    def __post_init__(self):
        self.leave_out = tuple(self.leave_out)
        if not self.leave_out or any(k < 1 for k in self.leave_out):
            raise ValueError(f"ArcTask.leave_out must list k >= 1 (e.g. (1, 2)), got {self.leave_out}")

    @staticmethod
    def _pairs(context: Mapping[str, Any], split: str) -> list[Pair]:
        checked = validate_context(context, require_test_output=split == "test")
        return [(np.asarray(p["input"]), np.asarray(p["output"])) for p in checked[split]]

    def prompt(self, context: Mapping[str, Any]) -> Prompt:
        """The self-edit prompt: the demonstrations and the request for the JSON configuration."""
        pairs = self._pairs(context, "train")
        demos = "\n".join(f"Example {i}\nInput:\n{grid_to_text(a)}\nOutput:\n{grid_to_text(b)}\n"
                          for i, (a, b) in enumerate(pairs, 1))
        body = f"{SELF_EDIT_INSTRUCTION.format(example=DEFAULT_CONFIG.to_json())}\n\nPuzzle:\n{demos}"
        chat = self.chat if self.chat is not None else bool(getattr(self.tokenizer, "chat_template", None))
        if chat:
            return [{"role": "user", "content": body}]
        return f"{body}\nConfiguration:\n"

    def plan(self, context: Mapping[str, Any], self_edit: str, **hyperparameters) -> TrainingPlan:
        """Parse the JSON self-edit and build its plan. The self-edit sets learning rate, epochs and loss
        (its values win over `hyperparameters`); `batch_size`/`max_steps` may come from `hyperparameters`."""
        return self.plan_from_config(context, parse_config(self_edit), **hyperparameters)

    def plan_from_config(self, context: Mapping[str, Any], config: ArcConfig, **hyperparameters) -> TrainingPlan:
        """The plan for an already-parsed configuration (e.g. `DEFAULT_CONFIG` for the TTT baseline)."""
        if self.tokenizer is None:
            raise ValueError("ArcTask needs a tokenizer to render training examples: ArcTask(tokenizer=tok) or "
                             "task.build_dataset(contexts, tokenizer)")
        pairs = self._pairs(context, "train")
        rng = np.random.default_rng(derive_seed(self.seed, context["context_id"], config.to_json()) % (2**63))
        hp = {k: v for k, v in hyperparameters.items() if k in ("batch_size", "max_steps")}
        most = self.bounds.max_examples
        if hp.get("max_steps") is None:
            # as many augmented copies as the step budget trains at these epochs; never fewer than the leave-out
            # originals, so epochs that cannot train even those stay over budget
            fits = self.bounds.step_budget // max(config.num_train_epochs, 1) * hp.get("batch_size", 1)
            most = min(most, max(fits, len(leave_out_indices(len(pairs), self.leave_out))))
        tasks = augmented_examples(pairs, config, rng, leave_out=self.leave_out, max_examples=most,
                                   keep_background=self.keep_background)
        if not tasks:
            raise SelfEditError("empty", f"puzzle {context['context_id']!r} has {len(pairs)} demonstration(s); "
                                "leave-one-out training needs at least 2", field="train")
        examples = [(format_query(self.tokenizer, demos, q_in), grid_to_text(q_out)) for demos, (q_in, q_out) in tasks]
        plan = TrainingPlan.from_pairs(examples, learning_rate=config.learning_rate, epochs=config.num_train_epochs,
                                       loss_on=config.loss_on, **hp)
        try:
            return self.bounds.check(plan)
        except SelfEditError as err:
            if err.field in _JSON_FIELDS and err.reason == "out_of_bounds":
                raise SelfEditError(err.reason, str(err).split(": ", 1)[-1], field=_JSON_FIELDS[err.field]) from None
            if err.reason == "over_budget":
                raise SelfEditError("over_budget", f"{len(examples)} examples x {plan.epochs} epochs = "
                                    f"{plan.num_steps} steps; the budget is {self.bounds.step_budget} (fewer "
                                    "epochs or augmentation groups)", field="training.num_train_epochs") from None
            raise

    def probe(self, context: Mapping[str, Any]) -> ArcProbe:
        """The test input(s) and expected output(s); a puzzle without test outputs cannot be scored."""
        demos, tests = self._pairs(context, "train"), self._pairs(context, "test")
        items = tuple(ProbeItem(prompt=grids_block(demos, t_in), answers=(grid_to_text(t_out),), question=f"test {i}")
                      for i, (t_in, t_out) in enumerate(tests))
        return ArcProbe(items=items, context_id=str(context["context_id"]),
                        demonstrations=tuple((to_tuple(a), to_tuple(b)) for a, b in demos),
                        tests=tuple((to_tuple(a), to_tuple(b)) for a, b in tests))

    def build_dataset(self, contexts: Sequence[Mapping[str, Any]], tokenizer=None):
        """A `datasets.Dataset` with a `prompt` column plus the context columns the reward reads."""
        from datasets import Dataset

        if tokenizer is not None:
            self.tokenizer = tokenizer
        rows = []
        for i, context in enumerate(contexts):
            if not isinstance(context, Mapping):
                raise DatasetFormatError(f"ARC context {i} is a {type(context).__name__}, not a mapping")
            row = validate_context(context)
            row["prompt"] = self.prompt(row)
            rows.append(row)
        check_distinct_context_ids(rows)
        return Dataset.from_list(rows)


def arc_inner_config(**overrides):
    """An `InnerLoopConfig` for ARC: the paper's LoRA r=128, alpha=16, the ARC grader (2 voted attempts),
    reward = success, and `ARC_BOUNDS`. Override anything, e.g. `lora_r=16` on a CPU."""
    from ...inner.config import InnerLoopConfig

    settings = dict(lora_r=128, lora_alpha=16, learning_rate=DEFAULT_CONFIG.learning_rate,
                    num_epochs=DEFAULT_CONFIG.num_train_epochs, grader="arc", reward="success", max_new_tokens=256,
                    max_seq_length=ARC_BOUNDS.max_example_tokens, bounds=ARC_BOUNDS)
    settings.update(overrides)
    return InnerLoopConfig(**settings)
