"""Each document's report-half score on the promoted model just before its own step, for a continual run's arms.

`benchmarks/continual.py` scores a document's report half before any training (the base model) and right after its
own step, so its *learning* (after minus base) mixes what the step taught with what the earlier promotions had
already changed about the document (a naive merge that raised held-out perplexity +544% also moves the scores of
documents it never saw). The *step gain* (after minus just before the step) separates the two. Arms run since this
script existed record `before_own` as they go; this script adds it to arms that did not, from each arm's registry:
the version promoted after step k-1 is loaded exactly as the learner loads it (the base weights plus the merged
chain) and document k's report half is scored on it. The record says which steps were filled in here
(`before_own_backfilled`).

    PYTHONPATH=. python benchmarks/continual_step_gain.py --out runs/continual --arms naive,reject,rescale
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

HERE = Path(__file__).resolve().parent


def backfill(out: Path, arm: str, *, threads: int) -> int:
    """Fill in `before_own` on every step of `arm` that lacks it (a finished arm only: a running worker would write
    over it); returns how many were filled."""
    import torch

    sys.path.insert(0, str(HERE))
    from continual import _write, load, run_documents
    from results_file import commit as current_commit

    from seal_trl.continual.document_probes import labelled_probe, score_probe
    from seal_trl.continual.inner_loop import ContinualInnerLoop, adapter_scaling
    from seal_trl.continual.registry import AdapterRegistry
    from seal_trl.inner.config import InnerLoopConfig

    path = out / f"arm-{arm}.json"
    record = json.loads(path.read_text())
    if not record.get("done"):
        raise SystemExit(f"{path}: the arm has not finished; fill it in after its last step")
    settings = json.loads((out / "run.json").read_text())["settings"]
    missing = [s for s in record["steps"] if "before_own" not in s]
    if not missing:
        return 0
    torch.set_num_threads(threads)
    docs = {d.doc_id: d for d in run_documents(out, settings["documents"])}
    registry = AdapterRegistry(out / f"registry-{arm}")
    model, tok = load(settings["model"])
    r = settings["lora_r"]
    inner = ContinualInnerLoop(model, tok, InnerLoopConfig(lora_r=r, lora_alpha=2 * r))
    by_step = {s["step"]: s for s in record["steps"]}
    for step in missing:
        previous = by_step.get(step["step"] - 1)
        version = previous["registry_promoted"] if previous else None
        if step["step"] and previous is None:
            raise SystemExit(f"{path}: step {step['step'] - 1} is not recorded, so the model before step "
                             f"{step['step']} is unknown")
        chain = [(v, registry.load_adapter(v), adapter_scaling(registry.adapter_config(v)))
                 for v in registry.chain(version)]
        inner.set_promoted(chain, "merge")
        inner.reset_adapter(0)
        step["before_own"] = score_probe(inner.model, tok, labelled_probe(docs[step["doc"]].report_view()))
    filled = record.get("before_own_backfilled", {}).get("steps", [])
    record["before_own_backfilled"] = {"commit": current_commit(), "steps": sorted(filled + [s["step"] for s in missing])}
    _write(path, record)
    return len(missing)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="the continual run's directory (its run.json gives the model)")
    p.add_argument("--arms", required=True, help="comma-separated arms to fill in")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    for arm in args.arms.split(","):
        n = backfill(Path(args.out), arm, threads=args.threads)
        print(f"{arm}: before_own filled in on {n} step(s)", flush=True)


if __name__ == "__main__":
    main()
