"""K self-edits trained at once: K LoRA adapters ("slots") over one frozen base model.

Every adapted layer gets stacked adapters A: (K, r, d_in) and B: (K, d_out, r). A training step takes the
next batch of every slot still training, stacks the rows grouped by slot, and one forward pass serves them
all: the frozen base layers see one larger batch, and each LoRA layer adds every slot's delta with one
batched matmul, each row routed to its own slot. The loss is the sum of per-slot mean losses, so a slot's
gradient is exactly the one it would get alone. The optimizer is PyTorch's fused AdamW with one parameter group
per slot (its own learning rate and step count), gradients are clipped per slot, and a slot that has
finished or failed gets no gradient and so does not move: the slots are mathematically independent, and K
batched runs equal K sequential runs up to float rounding.

All slot weights live in one buffer and their gradients in another (see `SlotLoRA`), so zeroing and
resetting are single operations and autograd writes every gradient in place.
"""

from __future__ import annotations

import logging
import math
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..plans import SelfEditError
from .graders import LogLikelihoodGrader
from .host import LoopHost
from .jobs import INNER_ADAPTER, InnerJob, InnerResult, checked_measures
from .sync import POLICY_ADAPTER
from .steps import learning_rate_at, lora_a_inits, plan_batches
from .packed_attention import packed_examples
from .packing import PackedBatch, pack_slots
from .tensors import IGNORE_INDEX, EncodedExample, labelled_logits, labelled_targets, pad_right

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SlotRouting:
    """Which slot each token of the current forward pass belongs to.

    Rows split evenly by slot (`pad_index` None): the rows are G equal groups, group g in slot `slots[g]`.
    A packed row, whose tokens are contiguous by slot in slot order: `offsets` (K,) int32 holds where each of
    the K slots' tokens end (an idle slot's span is empty), for a grouped matmul over the jagged spans; where
    that kernel is not available, `pad_index`, `unpad_index` (from `PackedBatch`) gather each slot's tokens into
    a padded (G, L) block for a batched matmul and scatter them back after.
    """

    slots: torch.Tensor
    every_slot: bool = False  # slots == arange(K): use the stacked tensors as they are
    pad_index: torch.Tensor | None = None
    pad_valid: torch.Tensor | None = None
    unpad_index: torch.Tensor | None = None
    offsets: torch.Tensor | None = None


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward makes the incoming gradient contiguous (the grouped matmul's backward needs it)."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad.contiguous()


def grouped_mm_supported(shapes: Sequence[torch.Size], dtype: torch.dtype, device: torch.device) -> bool:
    """Whether `torch.nn.functional.grouped_mm` (jagged groups, no padding) runs forward and backward here for
    LoRA matrices of these shapes. Its kernels want 16-byte aligned strides and, on some devices, low precision;
    the batched loop falls back to gather + `bmm` where it does not."""
    grouped_mm = getattr(F, "grouped_mm", None)
    if grouped_mm is None:
        return False
    itemsize = torch.empty((), dtype=dtype).element_size()
    if any(dim * itemsize % 16 for shape in shapes for dim in shape):
        return False
    try:
        r, d_in = shapes[0]
        x = torch.ones(4, d_in, dtype=dtype, device=device, requires_grad=True)
        a = torch.ones(2, r, d_in, dtype=dtype, device=device, requires_grad=True)
        out = grouped_mm(x, a.transpose(1, 2), offs=torch.tensor([1, 4], dtype=torch.int32, device=device))
        out.backward(torch.ones_like(out))
    except (RuntimeError, NotImplementedError):
        return False
    return True


class SlotLoRA:
    """K stacked LoRA adapters attached to the LoRA layers of an `InnerLoop`'s model by forward hooks.

    The hooks add `scaling * B[s] @ A[s] @ x` for each row's slot `s` while a routing is set, and nothing
    otherwise, so the model behaves as before outside `routed(...)`.
    """

    def __init__(self, layers: Sequence, adapter_name: str, num_slots: int, *, dropout: float = 0.0):
        self.layers = list(layers)
        self.num_slots = num_slots
        self.dropout = dropout
        first = self.layers[0].lora_A[adapter_name].weight
        self.dtype, self.device = first.dtype, first.device
        self.a_shapes = [layer.lora_A[adapter_name].weight.shape for layer in self.layers]
        self.b_shapes = [layer.lora_B[adapter_name].weight.shape for layer in self.layers]
        self.scaling = [float(layer.scaling[adapter_name]) for layer in self.layers]
        # Two buffers, weights and gradients, laid out layer by layer: each layer's A is one contiguous
        # (K, r, d_in) block and its B one (K, d_out, r) block, so the batched matmuls read plain contiguous
        # tensors. The blocks are leaf views with their gradient views set, so autograd accumulates in place
        # into `grad`. Each slot's slice of every block is a second set of leaf views over the same memory:
        # those are the optimizer's parameters, one parameter group per slot.
        total = sum(a.numel() + b.numel() for a, b in zip(self.a_shapes, self.b_shapes)) * num_slots
        self.flat = torch.zeros(total, dtype=self.dtype, device=self.device)
        self.grad = torch.zeros_like(self.flat)
        self.a, self.b = [], []
        self.slot_params: list[list[torch.Tensor]] = [[] for _ in range(num_slots)]
        self.slot_grads: list[list[torch.Tensor]] = [[] for _ in range(num_slots)]
        offset = 0
        for a_shape, b_shape in zip(self.a_shapes, self.b_shapes):
            for shape, stacked in ((a_shape, self.a), (b_shape, self.b)):
                size = shape.numel()
                stacked.append(self._leaf(offset, (num_slots, *shape)))
                for slot in range(num_slots):
                    start = offset + slot * size
                    self.slot_params[slot].append(self._leaf(start, tuple(shape)))
                    self.slot_grads[slot].append(self.grad[start : start + size].view(shape))
                offset += num_slots * size
        self._routing: SlotRouting | None = None
        self.grouped = grouped_mm_supported([*self.a_shapes, *self.b_shapes], self.dtype, self.device)

    def _leaf(self, start: int, shape: tuple[int, ...]) -> torch.Tensor:
        size = math.prod(shape)
        weight = self.flat[start : start + size].view(shape).requires_grad_(True)
        weight.grad = self.grad[start : start + size].view(shape)
        return weight

    def zero_grad(self) -> None:
        self.grad.zero_()

    def slot_tensors(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer `index`'s adapters: A (K, r, d_in) and B (K, d_out, r), views into the flat buffer."""
        return self.a[index], self.b[index]

    @torch.no_grad()
    def reset_slot(self, slot: int, seed: int) -> None:
        """A from the same seeded init a sequential run uses, B zero: the slot starts as the identity."""
        params = self.slot_params[slot]
        for a, fresh in zip(params[0::2], lora_a_inits(self.a_shapes, seed)):
            a.copy_(fresh)
        for b in params[1::2]:
            b.zero_()

    @contextmanager
    def attached(self):
        handles = [layer.register_forward_hook(self._hook(i), with_kwargs=True) for i, layer in enumerate(self.layers)]
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()

    @contextmanager
    def routed(self, routing: SlotRouting):
        self._routing = routing
        try:
            yield
        finally:
            self._routing = None

    def _hook(self, index: int):
        def add_slot_deltas(module, args, kwargs, output):
            routing = self._routing
            if routing is None:
                return output
            x = args[0] if args else kwargs["x"]
            a, b = self.slot_tensors(index)
            x = x.to(a.dtype)
            if self.dropout and module.training:
                x = F.dropout(x, self.dropout, training=True)
            features, scaling = x.shape[-1], self.scaling[index]  # scaling applied to the r-wide hidden: cheaper
            if routing.offsets is not None and self.grouped:
                # every slot's span of the packed row through its own A and B, no padding and no gather
                grouped_mm, offsets = F.grouped_mm, routing.offsets
                hidden = grouped_mm(x.reshape(-1, features), a.transpose(1, 2), offs=offsets) * scaling
                delta = _ContiguousGrad.apply(grouped_mm(hidden, b.transpose(1, 2), offs=offsets))
                return output + delta.reshape(output.shape).to(output.dtype)
            if not routing.every_slot:
                a, b = a.index_select(0, routing.slots), b.index_select(0, routing.slots)
            if routing.pad_index is None:
                grouped = x.reshape(routing.slots.numel(), -1, features)
                delta = torch.bmm(torch.bmm(grouped, a.transpose(1, 2)) * scaling, b.transpose(1, 2))
            else:
                # Padding positions read token 0 and are zeroed: their outputs are never scattered back, and a NaN
                # in token 0 (its slot diverged) must not reach the other slots' A gradients as 0 * NaN.
                # index_select, not advanced indexing: its backward (index_add) is several times faster on CPU.
                grouped = x.reshape(-1, features).index_select(0, routing.pad_index.flatten())
                grouped = grouped.view(*routing.pad_index.shape, features).masked_fill(~routing.pad_valid, 0.0)
                delta = torch.bmm(torch.bmm(grouped, a.transpose(1, 2)) * scaling, b.transpose(1, 2))
                delta = delta.reshape(-1, delta.shape[-1]).index_select(0, routing.unpad_index)
            return output + delta.reshape(output.shape).to(output.dtype)

        return add_slot_deltas


def per_slot_mean_nll(logits: torch.Tensor, labels: torch.Tensor, token_slots: torch.Tensor, num_slots: int
                      ) -> torch.Tensor:
    """Mean next-token NLL of each slot's tokens in a packed row; NaN for no tokens. `logits` come from
    `labelled_logits` (one row per labelled next token)."""
    token_nll = F.cross_entropy(logits.float(), labelled_targets(labels), reduction="none")
    target_slots = token_slots[1:][labels[0, 1:] != IGNORE_INDEX]
    zeros = torch.zeros(num_slots, dtype=token_nll.dtype, device=logits.device)
    sums = zeros.index_add(0, target_slots, token_nll)
    counts = zeros.index_add(0, target_slots, torch.ones_like(token_nll))
    return sums / counts


@dataclass
class _Slot:
    job: InnerJob
    encoded: list[EncodedExample]
    result: InnerResult
    seed: int
    position: int  # index of the job in the caller's list
    index: int = 0  # slot in the SlotLoRA buffer
    setup_seconds: float = 0.0
    batches: Iterator[list[EncodedExample]] | None = None
    step: int = 0
    training: bool = True


class BatchedTrainer:
    """Trains up to K plans at once in the slots of one `SlotLoRA` and scores each on its probe."""

    def __init__(self, loop: LoopHost, num_slots: int):
        self.loop = loop
        self.num_slots = num_slots
        self.slots = SlotLoRA(loop._layers, INNER_ADAPTER, num_slots, dropout=loop.config.lora_dropout)
        # AdamW with one parameter group (one learning rate, one step count) per slot. A slot whose gradients
        # are None for a step is skipped by the optimizer, which is how finished and failed slots stay still.
        self.optimizer = torch.optim.AdamW(
            [{"params": params} for params in self.slots.slot_params], lr=1e-3, weight_decay=0.0, fused=True
        )

    def _reset_optimizer_slot(self, slot: int) -> None:
        for p in self.slots.slot_params[slot]:
            self.optimizer.state.pop(p, None)

    @contextmanager
    def _session(self):
        """Slots on, the engine's own inner adapter off (the policy adapter, if any, stays on and frozen)."""
        keep = [POLICY_ADAPTER] if POLICY_ADAPTER in self.loop.model.peft_config else []
        for layer in self.slots.layers:
            layer.set_adapter(keep, inference_mode=True)
        try:
            with self.slots.attached():
                yield
        finally:
            self.loop._activate_adapters()
            self.loop.model.eval()

    def train_and_score(self, slots: list[_Slot]) -> float:
        """Train `slots` together, then score those that did not fail. Returns the wall seconds spent training."""
        with self._session():
            t0 = time.perf_counter()
            self._train(slots)
            train_seconds = time.perf_counter() - t0
            self._score([s for s in slots if s.result.error is None])
            self._measure([s for s in slots if s.result.error is None and s.job.measure is not None])
        return train_seconds

    def train(self, slots: list[_Slot]) -> None:
        """Train `slots` together and score nothing (what `batch_self_edits="auto"` times)."""
        with self._session():
            self._train(slots)

    def _train(self, slots: list[_Slot]) -> None:
        loop = self.loop
        for k, slot in enumerate(slots):
            self.slots.reset_slot(k, slot.seed)
            self._reset_optimizer_slot(k)
            slot.batches = plan_batches(slot.encoded, slot.job.plan, slot.seed)
        self.slots.zero_grad()
        loop.model.train()
        while True:
            stepping: list[tuple[int, list[EncodedExample]]] = []
            for k, slot in enumerate(slots):
                batch = next(slot.batches, None) if slot.training else None
                if batch is None:
                    slot.training = False
                    continue
                stepping.append((k, batch))
            if not stepping:
                break
            packed = pack_slots(stepping, loop.device)
            ends = torch.tensor([packed.tokens_per_slot.get(k, 0) for k in range(self.num_slots)]).cumsum(0)
            routing = SlotRouting(slots=packed.slots, pad_index=packed.pad_index, pad_valid=packed.pad_valid,
                                  unpad_index=packed.unpad_index,
                                  every_slot=[k for k, _ in stepping] == list(range(self.num_slots)),
                                  offsets=ends.to(device=loop.device, dtype=torch.int32))
            # Backward runs inside the routing and packing too: gradient checkpointing recomputes the forward there.
            with self.slots.routed(routing), packed_examples(loop.model, packed.example_lengths):
                with loop.autocast():
                    logits = labelled_logits(loop.model, packed.labels, input_ids=packed.input_ids,
                                             position_ids=packed.position_ids, use_cache=False)
                self._step(slots, stepping, packed, logits)
        loop.model.eval()

    def _step(self, slots: list[_Slot], stepping: list[tuple[int, list[EncodedExample]]], packed: PackedBatch,
              logits: torch.Tensor) -> None:
        """Backward and one optimizer step for the slots whose loss is finite; the others fail."""
        loop = self.loop
        losses = per_slot_mean_nll(logits, packed.labels, packed.token_slots, self.num_slots)
        values = losses.tolist()
        finite = []
        for k, _ in stepping:
            if math.isfinite(values[k]):
                finite.append(k)
            else:
                self._fail(slots[k], "nan_loss", f"training loss became {values[k]} at step {slots[k].step}",
                           field="learning_rate")
        if finite:
            losses[finite].sum().backward()
            for k in range(self.num_slots):
                grads = self.slots.slot_grads[k] if k in finite else [None] * len(self.slots.slot_params[k])
                for p, g in zip(self.slots.slot_params[k], grads):
                    p.grad = g
            for k in finite:
                if loop.config.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(self.slots.slot_params[k], loop.config.max_grad_norm,
                                                   foreach=True)
                self.optimizer.param_groups[k]["lr"] = learning_rate_at(
                    slots[k].job.plan, slots[k].step, loop.config.lr_schedule)
            self.optimizer.step()
            self.slots.zero_grad()
        for k in finite:
            slot = slots[k]
            slot.result.losses.append(values[k])
            slot.result.tokens_trained += packed.tokens_per_slot[k]
            slot.step += 1
            slot.result.steps = slot.step

    @staticmethod
    def _fail(slot: _Slot, reason: str, message: str, *, field: str | None = None) -> None:
        err = SelfEditError(reason, message, field=field)
        slot.result.error, slot.result.error_message = err.reason, str(err)
        slot.training = False

    # ----- scoring ---------------------------------------------------------------------------------
    @torch.no_grad()
    def _score(self, slots: list[_Slot]) -> None:
        if not slots:
            return
        t0 = time.perf_counter()
        grader = self.loop.grader
        indices = [s.index for s in slots]
        with self.loop.autocast():
            if isinstance(grader, LogLikelihoodGrader):
                values = self._loglik_scores(grader, slots, indices)
            else:
                values = []
                for s, k in zip(slots, indices):
                    with self.slots.routed(SlotRouting(slots=torch.tensor([k], device=self.slots.device))):
                        values.append(float(grader.score(self.loop.model, self.loop.tokenizer, s.job.probe)))
        seconds = (time.perf_counter() - t0) / len(slots)
        for s, value in zip(slots, values):
            s.result.score_seconds = seconds
            if math.isfinite(value):
                s.result.score_after = value
            else:
                self._fail(s, "nan_loss", f"the probe score is {value}", field="score_after")

    @torch.no_grad()
    def _measure(self, slots: list[_Slot]) -> None:
        """Each job's `measure` of its adapted model: the model routed through that slot alone, as a generative
        grader scores it. An exception that is not a `SelfEditError` fails the group, which is rerun one at a time."""
        for s in slots:
            t0 = time.perf_counter()
            routing = SlotRouting(slots=torch.tensor([s.index], device=self.slots.device))
            try:
                with self.slots.routed(routing), self.loop.autocast():
                    s.result.measures = checked_measures(s.job.measure(self.loop.model, self.loop.tokenizer,
                                                                       s.job.probe))
            except SelfEditError as err:
                s.result.error, s.result.error_message = err.reason, str(err)
            s.result.measure_seconds = time.perf_counter() - t0

    def _loglik_scores(self, grader: LogLikelihoodGrader, slots: list[_Slot], indices: list[int]) -> list[float]:
        """Every slot's probe answers in shared forward passes, each row through its own slot.

        Each forward pass takes the same number of rows from every slot (a slot with fewer answers repeats
        its last one, and the repeat is ignored), so the rows split evenly by slot and need no gather.
        """
        tokenizer, model = self.loop.tokenizer, self.loop.model
        per_slot = [grader.answer_examples(tokenizer, s.job.probe) for s in slots]
        orders = [sorted(range(len(enc)), key=lambda i: len(enc[i].input_ids)) for enc, _ in per_slot]
        per_answer = [torch.empty(len(enc)) for enc, _ in per_slot]
        longest = max(len(order) for order in orders)
        rows_each = max(1, grader.batch_size // len(slots))
        routing = SlotRouting(slots=torch.tensor(indices, device=self.slots.device),
                              every_slot=indices == list(range(self.num_slots)))
        for start in range(0, longest, rows_each):
            taken = []  # (slot position, answer index or None for a repeat)
            for p, order in enumerate(orders):
                for i in range(start, start + rows_each):
                    taken.append((p, order[i] if i < len(order) else None))
            rows = [per_slot[p][0][i if i is not None else orders[p][-1]] for p, i in taken]
            batch = pad_right(rows, self.loop.pad_token_id, self.loop.device)
            with self.slots.routed(routing):
                logits = labelled_logits(model, batch["labels"], input_ids=batch["input_ids"],
                                         attention_mask=batch["attention_mask"])
            values = grader.answer_logprobs(logits, batch["labels"])
            for (p, i), value in zip(taken, values):
                if i is not None:
                    per_answer[p][i] = value
        return [grader.best_per_question(per_answer[p], owner, len(s.job.probe.items))
                for p, ((_, owner), s) in enumerate(zip(per_slot, slots))]


def run_batched(loop: LoopHost, jobs: Sequence[InnerJob], num_slots: int, *,
                on_result: Callable[[int, InnerResult], None] | None = None) -> list[InnerResult]:
    """Execute `jobs` K at a time; results in the order of `jobs`. Never raises for a bad self-edit.

    A plan that fails validation scores 0 at once and takes no slot. If a whole batched group fails for a
    reason that is not one self-edit's fault (e.g. out of memory), its jobs are rerun one at a time.
    """
    trainer = loop._batched_trainer(num_slots)
    results: list[InnerResult] = []
    pending: list[_Slot] = []

    def finish(position: int) -> None:
        result = results[position]
        if result.error is not None:
            result.score_after, result.reward = None, 0.0
        if on_result is not None:
            on_result(position, result)

    for position, job in enumerate(jobs):
        start = time.perf_counter()
        seed = loop.config.seed if job.seed is None else job.seed
        before = loop.score(job.probe, context_id=job.context_id)
        result = InnerResult(score_before=before, score_after=None, reward=0.0, seed=seed)
        results.append(result)
        try:
            encoded = loop._encode(job.plan)
        except Exception as err:  # as in `InnerLoop.run`: a self-edit never takes the call down
            if isinstance(err, SelfEditError):
                result.error, result.error_message = err.reason, str(err)
            else:
                logger.exception("encoding a self-edit raised (context %s, seed %s)", job.context_id, seed)
                result.error, result.error_message = "exception", f"{type(err).__name__}: {err}"
                result.traceback = traceback.format_exc()
            result.seconds = time.perf_counter() - start
            finish(position)
            continue
        pending.append(_Slot(job=job, encoded=encoded, result=result, seed=seed, position=position,
                             setup_seconds=time.perf_counter() - start))
    for first in range(0, len(pending), num_slots):
        group = pending[first : first + num_slots]
        for k, slot in enumerate(group):
            slot.index = k
        start = time.perf_counter()
        try:
            train_seconds = trainer.train_and_score(group)
        except Exception as err:  # not one self-edit's fault: isolate by running the group one at a time
            logger.warning("batched inner loop failed (%s: %s); rerunning %d self-edits one at a time",
                           type(err).__name__, err, len(group))
            for slot in group:
                rerun = loop.run(slot.job.plan, slot.job.probe, context_id=slot.job.context_id, seed=slot.seed,
                                 measure=slot.job.measure)
                results[slot.position] = rerun
                finish(slot.position)
            continue
        share = (time.perf_counter() - start) / len(group)
        for slot in group:
            result = slot.result
            result.train_seconds = train_seconds / len(group)
            if result.error is None:
                result.reward = loop.reward_from(result.score_before, result.score_after)
            result.seconds = slot.setup_seconds + share
            finish(slot.position)
    return results
