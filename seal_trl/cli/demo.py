"""`seal-trl demo`: the whole SEAL loop on a laptop CPU with the embedded model and the bundled passages.

1. Baselines on held-out passages: no adaptation, the passage alone, the base model's own self-edits.
2. One ReST-EM round on training passages (sample self-edits, fine-tune on each, keep the best per passage,
   SFT the policy's LoRA on the kept ones).
3. The trained policy's self-edits on the same held-out passages. Every method is compared with the base model's
   self-edits passage by passage (paired table, per-passage table, QA accuracy of greedy answers); report.md,
   report.json and a chart of the paired differences go into a fresh run directory.
"""

from __future__ import annotations

import argparse
import json
import os
import time

from ..reporting import new_run_dir, summary_tables, write_report
from .evaluate import check_sampling_flags

BASE, SEAL = "self-edit (base model)", "self-edit (SEAL, 1 round)"


def run_demo(args: argparse.Namespace) -> int:
    from peft import LoraConfig

    from ..config import SEALConfig
    from ..evaluation import evaluate_methods
    from ..models import embedded_model_path, load_tokenizer
    from ..tasks.knowledge import KnowledgeTask
    from ..tasks.squad import load_bundled
    from ..trainer import SEALTrainer

    check_sampling_flags(args.samples, args.temperature)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    run_dir = new_run_dir(args.output_dir, "demo")
    print(f"run directory: {run_dir}")
    path = str(embedded_model_path())
    tokenizer = load_tokenizer(path)
    task = KnowledgeTask(style="implications", chat=True)
    train = load_bundled("train")[: args.train_contexts]
    validation = load_bundled("validation")[: args.validation]
    batch = args.train_contexts * args.generations
    per_device = next(d for d in (8, 6, 4, 3, 2, 1) if batch % d == 0)
    config = SEALConfig(
        output_dir=str(run_dir / "policy"), algorithm="rest_em", use_cpu=True, report_to=[], save_strategy="no",
        per_device_train_batch_size=per_device, steps_per_generation=batch // per_device,
        num_generations=args.generations, num_iterations=2, max_steps=2 * (batch // per_device),
        max_completion_length=args.max_new_tokens, temperature=1.0, learning_rate=3e-4, seed=args.seed,
        inner_epochs=args.inner_epochs, logging_steps=1, disable_tqdm=False,
    )
    lora = LoraConfig(r=32, lora_alpha=64, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                      task_type="CAUSAL_LM")
    trainer = SEALTrainer(path, args=config, train_dataset=task.build_dataset(train, tokenizer),
                          processing_class=tokenizer, task=task, peft_config=lora)
    scores, details = {}, {}
    sampling = {"samples": args.samples, "temperature": args.temperature, "qa_metrics": args.qa_metrics}

    def evaluate(methods, names):
        trainer.model.eval()
        trainer._sync_inner_loop()
        try:
            evaluate_methods(trainer.inner_loop, task, validation, methods, policy=trainer.model, tokenizer=tokenizer,
                             max_new_tokens=args.max_new_tokens, seed=args.seed, names=names, scores=scores,
                             details=details, **sampling)
        finally:
            (run_dir / "partial.json").write_text(json.dumps({"scores": scores, **details}, indent=2, default=str))

    try:
        print("\n[1/3] baselines on held-out passages")
        evaluate(["none", "passage", "self-edit"], {"self-edit": BASE})
        print(f"\n[2/3] one ReST-EM round: {args.train_contexts} passages x {args.generations} self-edits")
        trainer.train()
        trainer.save_model(str(run_dir / "policy"))
        print("\n[3/3] the trained policy's self-edits on the held-out passages")
        evaluate(["self-edit"], {"self-edit": SEAL})
    except KeyboardInterrupt:
        print(f"\ninterrupted: what finished is in {run_dir / 'partial.json'}; run `seal-trl demo` again for a "
              "fresh run (earlier run directories are kept)")
        return 130
    round_logs = [h for h in trainer.state.log_history if "seal/keep_fraction" in h]
    minutes = (time.perf_counter() - started) / 60
    qa = details.get("qa")
    passages = [f"{t} (`{c}`)" for c, t in zip(details["contexts"], details["titles"])]
    paths = write_report(run_dir, title="SEAL demo: held-out QA log-likelihood after adaptation", scores=scores,
                         metric="answer log-likelihood", reference=BASE, passages=passages, qa=qa, seed=args.seed,
                         details={**details, "round": round_logs, "minutes": minutes,
                                  "settings": {k: v for k, v in vars(args).items() if k != "func"}})
    (run_dir / "partial.json").unlink(missing_ok=True)
    print("\n" + summary_tables(scores, metric="answer log-likelihood", reference=BASE, qa=qa, seed=args.seed,
                                 errors=details.get("errors")))
    if round_logs:
        r = round_logs[0]
        print(f"\nReST-EM round: keep fraction {r['seal/keep_fraction']:.2f}, mean gain all "
              f"{r['seal/gain_mean']:+.3f}, kept {r['seal/gain_kept_mean']:+.3f}")
    print(f"\n{minutes:.1f} minutes. report: {paths['markdown']}  chart: {paths.get('chart')}  "
          f"policy adapter: {run_dir / 'policy'}")
    return 0
