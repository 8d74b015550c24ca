"""SEALTrainer under `accelerate launch` with 2 CPU processes (gloo): both ranks run inner loops.

The topology matrix: DDP, DeepSpeed ZeRO-2 and ZeRO-3, each with a full-weight, a LoRA and a QLoRA (4-bit base +
LoRA) policy, two optimizer steps each. One launch per topology trains the three policies in turn (starting the
processes is most of a launch's cost), shared by every test below.
"""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOPOLOGIES = ["multi_cpu", "zero2_cpu", "zero3_cpu"]
POLICIES = ["full", "lora", "qlora"]
MATRIX = [(config, policy) for config in TOPOLOGIES for policy in POLICIES]
# The inner model computes with the policy's own weights (a QLoRA policy's base dequantised: the product its 4-bit
# layers compute), on the same device: equal up to rounding, 0 here.
LOGITS_TOLERANCE = 1e-6


def launch(config: str, tiny_model_dir, out_dir: Path, port: int) -> dict[str, tuple[Path, list[dict]]]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(ROOT / "accelerate_configs" / f"{config}.yaml"), "--main_process_port", str(port),
           str(ROOT / "tests" / "scripts" / "multiprocess_seal.py"), str(tiny_model_dir), str(out_dir),
           "--policy", ",".join(POLICIES)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return {policy: (out_dir / policy, [json.loads((out_dir / policy / f"rank-{r}.json").read_text()) for r in (0, 1)])
            for policy in POLICIES}


@pytest.fixture(scope="module")
def launched(tiny_model_dir, tmp_path_factory):
    """launched(config, policy) -> (that policy's output folder, [rank 0's record, rank 1's]); one launch per config."""
    done = {}

    def get(config: str, policy: str):
        if config not in done:
            port = 29533 + TOPOLOGIES.index(config)  # a port of its own: a lingering one cannot collide
            try:
                done[config] = launch(config, tiny_model_dir, tmp_path_factory.mktemp(config), port)
            except (AssertionError, subprocess.TimeoutExpired) as err:  # fail its tests, without relaunching it
                done[config] = err
        if isinstance(done[config], Exception):
            pytest.fail(f"the {config} launch failed: {done[config]}")
        return done[config][policy]

    return get


def test_two_processes_score_their_own_completions_and_save_one_checkpoint(launched):
    out, ranks = launched("multi_cpu", "full")
    assert all(r["world"] == 2 for r in ranks)
    # each rank ran the inner loop on its own share of the completions
    assert all(len(r["runs"]) > 0 for r in ranks)
    assert all(run["error"] is None for r in ranks for run in r["runs"])
    # DDP keeps the replicas identical, and the one saved checkpoint is that model
    assert ranks[0]["param_sha"] == ranks[1]["param_sha"]
    from transformers import AutoModelForCausalLM

    saved = AutoModelForCausalLM.from_pretrained(out / "run").state_dict()
    digest = hashlib.sha256()
    for name, tensor in sorted(saved.items()):
        digest.update(name.encode())
        digest.update(tensor.float().numpy().tobytes())
    assert digest.hexdigest() == ranks[0]["param_sha"]


def test_each_rank_trains_on_its_own_slice_of_the_gathered_weights(launched):
    """The variant's weights cover the whole generation batch (every rank); rank r must keep rows
    [r*n, (r+1)*n). The script makes rank 0's weights distinct (1, 2, ...) and rank 1's all 0 (nothing kept,
    which must not hang the M-step's all-reduce), so a wrong slice cannot pass."""
    _, ranks = launched("multi_cpu", "full")
    assert len(ranks[0]["advantages"]) == 2  # both steps trained
    for generation in range(len(ranks[0]["advantages"])):
        n = len(ranks[0]["advantages"][generation])
        for rank in ranks:
            start = rank["rank"] * n
            expected = [float(i + 1) if i < n else 0.0 for i in range(start, start + n)]
            assert rank["advantages"][generation] == expected


@pytest.mark.parametrize("config,policy", MATRIX)
def test_after_every_optimizer_step_each_rank_inner_model_computes_the_gathered_policy(config, policy, launched):
    """The sync at each generation (steps 0 and 1) and after the last step (2): on every rank, the inner model's
    logits on a fixed input are the policy's (gathered whole under ZeRO-3), while training moved the policy."""
    _, ranks = launched(config, policy)
    for rank in ranks:
        assert rank["world"] == 2 and rank["policy"] == policy
        assert [s["step"] for s in rank["syncs"]] == [0, 1, 2]
        assert all(run["error"] is None for run in rank["runs"]) and {run["step"] for run in rank["runs"]} == {0, 1}
        for sync in rank["syncs"]:
            assert sync["logits_max_diff"] <= LOGITS_TOLERANCE, (rank["rank"], sync)
        # without this the check above would hold for an inner model that never followed the policy
        assert all(sync["policy_moved"] > 1e-3 for sync in rank["syncs"][1:]), rank["syncs"]


@pytest.mark.parametrize("config,policy", MATRIX)
def test_a_context_split_across_ranks_gets_one_before_score_and_baseline(config, policy, launched):
    """num_generations 4 over 2 ranks x 2: each context's self-edits land on both ranks; each rank computes the
    before-score and the passage baseline itself, and must get the same numbers as the other."""
    _, ranks = launched(config, policy)
    for step in (0, 1):
        seen = [{run["context_id"]: (run["score_before"], run["baseline"]) for run in rank["runs"]
                 if run["step"] == step} for rank in ranks]
        assert seen[0].keys() == seen[1].keys() and seen[0]  # split: the same contexts on both ranks
        assert seen[0] == seen[1]
        assert all(baseline is not None for _, baseline in seen[0].values())


@pytest.mark.parametrize("config,policy", [(c, p) for c, p in MATRIX if c != "multi_cpu"])
def test_deepspeed_on_cpu_gives_the_same_inner_rewards_as_ddp(config, policy, launched):
    """ZeRO-2 and ZeRO-3 train the same policy as DDP (same seed and data), so every rank's inner-loop rewards,
    before-scores and baselines must match DDP's at both steps; and the run saves its model."""
    ddp = launched("multi_cpu", policy)[1]
    out, sharded = launched(config, policy)
    for a, b in zip(ddp, sharded):
        assert [(r["step"], r["context_id"]) for r in a["runs"]] == [(r["step"], r["context_id"]) for r in b["runs"]]
        for key in ("reward", "score_before", "baseline"):
            assert [r[key] for r in a["runs"]] == pytest.approx([r[key] for r in b["runs"]], abs=1e-5), key
    saved = "model.safetensors" if policy == "full" else "adapter_model.safetensors"
    assert (out / "run" / saved).exists()
