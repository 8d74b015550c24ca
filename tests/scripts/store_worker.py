"""Run by tests/test_result_store.py: score self-edits with a result store, optionally kill -9 itself after K runs.

    store_worker.py MODEL_DIR STORE_PATH OUT_JSON KILL_AFTER   (KILL_AFTER 0: run to the end)
"""

import json
import os
import signal
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from seal_trl.inner import InnerLoop, InnerLoopConfig  # noqa: E402
from seal_trl.reward import SelfEditReward  # noqa: E402
from seal_trl.tasks.knowledge import KnowledgeTask  # noqa: E402

CONTEXTS = [{"context_id": f"c{i}", "title": f"Place {i}", "context": f"The river Velmora {i} runs through Ostrand.",
             "questions": [{"question": "Which valley?", "answers": ["Ostrand"]}]} for i in range(3)]
EDITS = ["The Velmora crosses Ostrand.", "Ostrand is the valley of the Velmora.", "A river runs through Ostrand."]


def main(model_dir: str, store: str, out: str, kill_after: int) -> None:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    loop = InnerLoop(AutoModelForCausalLM.from_pretrained(model_dir), tokenizer,
                     InnerLoopConfig(lora_r=4, lora_alpha=8, target_modules=("q_proj", "v_proj"), num_epochs=2))
    runs = []
    original = loop.run

    def counted(*args, **kwargs):
        result = original(*args, **kwargs)
        runs.append(result.reward)
        return result

    loop.run = counted
    reward = SelfEditReward(KnowledgeTask(), loop, repeats=2, store=store, progress=False)
    if kill_after:
        put = reward.store.put

        def put_then_maybe_die(key, result):
            put(key, result)
            if len(runs) == kill_after:
                os.kill(os.getpid(), signal.SIGKILL)

        reward.store.put = put_then_maybe_die
    contexts = [c for c in CONTEXTS for _ in EDITS]
    edits = [e for _ in CONTEXTS for e in EDITS]
    scored = reward.score_many(contexts, edits)
    with open(out, "w") as fh:
        json.dump({"runs": len(runs), "rewards": [s[0] for s in scored], "hits": reward.store.hits}, fh)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
