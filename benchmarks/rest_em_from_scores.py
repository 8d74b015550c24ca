"""One ReST-EM round whose E-step was measured by `reward_epochs.py`: keep, per passage, the best sampled self-edit
whose reward at E inner epochs is above the margin, then run the M-step on the kept ones and save the policy adapter
where `seal_validation.py` reads it (OUTPUT_DIR/checkpoint-STEPS).

Why not `seal-trl train`: a round's E-step at the paper's 10 inner epochs costs about 2 h on 2 CPU cores, and
`reward_epochs.py` has already scored the base policy's samples at that setting (resumable, same reward:
`reward_baseline: passage-matched`). This script spends no inner run. Its M-step is the trainer's, at
recipes/smollm2-135m/cpu_rest_em_rounds.yaml's settings: LoRA r=32, alpha 64, dropout 0.05 on q/k/v/o; AdamW lr 3e-4,
linear decay, gradient norm clipped at 1; the round's rows shuffled once and cut into micro-batches of 8 passages'
samples, each one optimizer step, `--iterations` passes; the loss `variants.rest_em_loss` (kept tokens' summed NLL
over the round's kept tokens); a micro-batch with nothing kept moves no weight. What differs from the trainer: the
samples were drawn by `generation.generate_texts` (the model's own generation settings), not by TRL's generate,
and a completion is re-tokenized from its text (EOS appended when it is shorter than the token limit).

    PYTHONPATH=. python benchmarks/rest_em_from_scores.py --scores runs/reward-epochs --epochs 10 \\
        --output-dir runs/rest-em-10ep
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import warnings
from pathlib import Path


def rest_em_m_step(policy, tokenizer, prompts: list, completions: list[list[str]], rewards: list[list[float]], *,
                   max_new_tokens: int, margin: float = 0.0, learning_rate: float = 3e-4, iterations: int = 2,
                   passages_per_step: int = 8, seed: int = 0) -> dict:
    """Keep the best completion of each prompt above `margin` and train the PEFT `policy` on the kept ones, in place,
    as SEALTrainer's ReST-EM M-step does (module docstring). Returns what it kept and each step's loss."""
    import torch

    from seal_trl.variants import rest_em_keep_mask, rest_em_loss

    n_samples = len(completions[0])
    keep = rest_em_keep_mask(torch.tensor([r for row in rewards for r in row], dtype=torch.float32), n_samples,
                             top_k=1, margin=margin).bool()
    rows = []  # every sample, kept or not: micro-batches are cut over all of them, as in the trainer
    for prompt, per in zip(prompts, completions):
        if isinstance(prompt, list):  # chat messages, templated as generation saw them
            prompt_ids = tokenizer(tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True),
                                   add_special_tokens=False)["input_ids"]
        else:
            prompt_ids = tokenizer(prompt)["input_ids"]
        for completion in per:
            ids = tokenizer(completion, add_special_tokens=False)["input_ids"][:max_new_tokens]
            if len(ids) < max_new_tokens and tokenizer.eos_token_id is not None:
                ids = ids + [tokenizer.eos_token_id]
            rows.append((prompt_ids, ids))
    kept = keep.nonzero().squeeze(1).tolist()
    kept_tokens = sum(len(rows[i][1]) for i in kept)
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    per_step = passages_per_step * n_samples
    steps = [order[i:i + per_step] for i in range(0, len(order), per_step)]
    total = len(steps) * iterations
    torch.manual_seed(seed)
    policy.train()
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.0, (total - s) / total))
    losses = []
    for _ in range(iterations):
        for step in steps:
            optimizer.zero_grad(set_to_none=True)
            loss_sum = 0.0
            for i in (i for i in step if keep[i]):
                prompt_ids, ids = rows[i]
                logits = policy(input_ids=torch.tensor([prompt_ids + ids])).logits[0, len(prompt_ids) - 1:-1]
                logps = torch.log_softmax(logits.float(), -1).gather(1, torch.tensor(ids)[:, None]).T
                loss = rest_em_loss(logps, torch.ones_like(logps), float(kept_tokens))
                loss.backward()
                loss_sum += loss.item()
            if any(p.grad is not None for p in params):  # as in the trainer: nothing kept, no weight moves
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
            with warnings.catch_warnings():  # a step that kept nothing skips the optimizer, not the schedule
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
                schedule.step()
            losses.append(loss_sum)
    policy.eval()
    return {"kept": len(kept), "kept_rows": kept, "kept_tokens": kept_tokens, "steps": total, "losses": losses}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scores", required=True, help="reward_epochs.py's output dir (samples.json, report.json)")
    p.add_argument("--epochs", type=int, required=True, help="which inner-epoch count's rewards to keep by")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--margin", type=float, default=0.0)
    p.add_argument("--learning-rate", type=float, default=3e-4)
    p.add_argument("--iterations", type=int, default=2, help="M-step passes over the round (num_iterations)")
    p.add_argument("--passages-per-step", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    import torch
    from peft import LoraConfig, get_peft_model

    from seal_trl.models import load_policy
    from seal_trl.tasks.knowledge import KnowledgeTask
    from seal_trl.tasks.squad import load_contexts

    scores = Path(args.scores)
    samples = json.loads((scores / "samples.json").read_text())
    report = json.loads((scores / "report.json").read_text())
    rewards = report["rewards"].get(str(args.epochs))
    if rewards is None:
        sys.exit(f"{scores}/report.json has no rewards at {args.epochs} inner epochs (has {sorted(report['rewards'])})")
    settings = samples["settings"]
    contexts = load_contexts("bundled", split="train", limit=len(rewards))
    torch.manual_seed(args.seed)
    _, policy, tokenizer = load_policy(None, None)
    task = KnowledgeTask(style=settings["style"], chat=bool(getattr(tokenizer, "chat_template", None)))
    lora = LoraConfig(r=32, lora_alpha=64, lora_dropout=0.05, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                      task_type="CAUSAL_LM")
    policy = get_peft_model(policy, lora)
    result = rest_em_m_step(policy, tokenizer, [task.prompt(c) for c in contexts], samples["edits"][:len(rewards)],
                            rewards, max_new_tokens=settings["max_new_tokens"], margin=args.margin,
                            learning_rate=args.learning_rate, iterations=args.iterations,
                            passages_per_step=args.passages_per_step, seed=args.seed)
    print(f"kept {result['kept']} of {len(rewards)} passages at {args.epochs} inner epochs; M-step losses "
          + " ".join(f"{x:.4f}" for x in result["losses"]))
    if not all(math.isfinite(x) for x in result["losses"]):
        sys.exit("the M-step's loss is not finite: nothing saved")
    out = Path(args.output_dir) / f"checkpoint-{result['steps']}"
    policy.save_pretrained(out)
    (out / "rest_em_round.json").write_text(json.dumps({
        **result, "scores": str(scores), "epochs": args.epochs, "margin": args.margin,
        "passages": len(rewards), "learning_rate": args.learning_rate, "seed": args.seed}, indent=1))
    print(f"saved {out}")


if __name__ == "__main__":
    main()
