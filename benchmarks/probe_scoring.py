"""Seconds to score the continual gate's probes, each candidate row encoding its whole prompt (before) against each
prompt encoded once for its candidates (`shared_prompt_logprobs`, after), on the same model in the same process.

The probes are what the continual gate scores at every measurement: each bundled stream document's labelled probe
(gate half) and the regression suite's multiple-choice questions. The model is the embedded SmolLM2-135M with a
random LoRA adapter (r=32 on the default modules) active, as the gate scores a candidate. Both ways are timed in
alternating order over several rounds; the ratio is before / after per round. Also reported: the largest
difference between the two ways' log-probs and soft accuracies (they should agree to rounding).

    PYTHONPATH=. python benchmarks/probe_scoring.py                     # 24 documents + suite, 5 rounds: ~2 min
    PYTHONPATH=. python benchmarks/probe_scoring.py --documents 2 --rounds 1 --no-append   # a dry run
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def probe_sets(documents: int):
    """(prompts, completions, gold masks) per probe: the stream documents' gate halves, then the regression suite."""
    from seal_trl.continual.document_probes import labelled_probe, probe_candidates
    from seal_trl.continual.regression import RegressionSuite
    from seal_trl.continual.stream import bundled_stream

    sets = [probe_candidates(labelled_probe(doc)) for doc in bundled_stream()[:documents]]
    suite = RegressionSuite.bundled()
    sets.append(([f"Question: {q}\nAnswer:" for q, _, _ in suite.qa], [[" " + c for c in cs] for _, cs, _ in suite.qa],
                 [[k == a for k in range(len(cs))] for _, cs, a in suite.qa]))
    return sets


def score_rows(model, tokenizer, prompts, completions):
    """Before: one row per (prompt, completion), batched 16 rows at a time by length."""
    import torch

    from seal_trl.inner.graders import completion_logprobs
    from seal_trl.inner.tensors import encode_example

    rows = [encode_example(tokenizer, p, c, loss_on_prompt=False, add_eos=False)
            for p, cs in zip(prompts, completions) for c in cs]
    return list(torch.split(completion_logprobs(model, tokenizer, rows, batch_size=16), [len(cs) for cs in completions]))


def score_shared(model, tokenizer, prompts, completions):
    from seal_trl.inner.shared_prompt import shared_prompt_logprobs

    return shared_prompt_logprobs(model, tokenizer, prompts, completions, max_rows=64)


def soft_accuracy(values, golds) -> float:
    import torch

    return 100.0 * sum(float(torch.softmax(v, 0)[torch.tensor(g)].sum()) for v, g in zip(values, golds)) / len(golds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--lora-rank", type=int, default=32, help="0: the base model alone")
    parser.add_argument("--no-append", action="store_true", help="print the section, do not append it to the log")
    args = parser.parse_args()

    import torch
    from peft import LoraConfig, get_peft_model

    from benchmarks.results_file import append_section, commit, utc_stamp
    from seal_trl.models import load_model_and_tokenizer

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, tokenizer = load_model_and_tokenizer(None)
    if args.lora_rank:
        config = LoraConfig(r=args.lora_rank, lora_alpha=2 * args.lora_rank, target_modules="all-linear",
                            init_lora_weights=False)
        model = get_peft_model(model, config)
    model.eval()
    sets = probe_sets(args.documents)
    rows = sum(len(c) for _, cs, _ in sets for c in cs)
    print(f"{len(sets)} probes, {sum(len(p) for p, _, _ in sets)} questions, {rows} candidate rows", flush=True)

    ways = {"before": score_rows, "after": score_shared}
    seconds: dict[str, list[float]] = {w: [] for w in ways}
    values: dict[str, list] = {}
    for r in range(args.rounds):
        for name in (("before", "after") if r % 2 == 0 else ("after", "before")):
            start = time.perf_counter()
            values[name] = [ways[name](model, tokenizer, p, c) for p, c, _ in sets]
            seconds[name].append(time.perf_counter() - start)
        print(f"  round {r + 1}: before {seconds['before'][-1]:.2f} s, after {seconds['after'][-1]:.2f} s", flush=True)
    ratios = [b / a for b, a in zip(seconds["before"], seconds["after"])]
    logprob_diff = max(float((x - y).abs().max()) for bs, as_ in zip(values["before"], values["after"])
                       for x, y in zip(bs, as_))
    soft_diff = max(abs(soft_accuracy(bs, g) - soft_accuracy(as_, g))
                    for bs, as_, (_, _, g) in zip(values["before"], values["after"], sets))
    section = [
        f"\n## Probe scoring, shared prompts ({utc_stamp()}, commit {commit()})", "",
        f"`python benchmarks/probe_scoring.py --documents {args.documents} --rounds {args.rounds} --threads "
        f"{args.threads} --lora-rank {args.lora_rank}`: the embedded model"
        + (f" with a random LoRA adapter r={args.lora_rank} (all linear layers)" if args.lora_rank else "")
        + f", {len(sets)} probes ({args.documents} document gate halves and the regression suite's questions), "
        f"{rows} candidate rows, {args.threads} torch thread(s).", "",
        f"- before (a row per candidate): median {statistics.median(seconds['before']):.2f} s per pass over the probes",
        f"- after (each prompt once): median {statistics.median(seconds['after']):.2f} s",
        f"- ratio before / after per round: median {statistics.median(ratios):.2f} (range {min(ratios):.2f}-"
        f"{max(ratios):.2f}, {len(ratios)} rounds)",
        f"- largest difference: {logprob_diff:.2e} in a mean token log-prob, {soft_diff:.2e} soft-accuracy points "
        "in a probe",
    ]
    if args.no_append:
        print("\n".join(section))
    else:
        append_section(section)


if __name__ == "__main__":
    main()
