"""SEALTrainer under `accelerate launch` with 2 CPU processes (gloo): both ranks run inner loops."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def launch(config: str, tiny_model_dir, out_dir: Path, port: int) -> list[dict]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(ROOT / "accelerate_configs" / f"{config}.yaml"), "--main_process_port", str(port),
           str(ROOT / "tests" / "scripts" / "multiprocess_seal.py"), str(tiny_model_dir), str(out_dir)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return [json.loads((out_dir / f"rank-{r}.json").read_text()) for r in (0, 1)]


@pytest.fixture(scope="module")
def ddp_run(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    return out, launch("multi_cpu", tiny_model_dir, out, 29533)


def test_two_processes_score_their_own_completions_and_save_one_checkpoint(ddp_run):
    out, ranks = ddp_run
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


def test_each_rank_trains_on_its_own_slice_of_the_gathered_weights(ddp_run):
    """The variant's weights cover the whole generation batch (every rank); rank r must keep rows
    [r*n, (r+1)*n). The script makes rank 0's weights distinct (1, 2, ...) and rank 1's all 0 (nothing kept,
    which must not hang the M-step's all-reduce), so a wrong slice cannot pass."""
    _, ranks = ddp_run
    assert len(ranks[0]["advantages"]) == 2  # both steps trained
    for generation in range(len(ranks[0]["advantages"])):
        n = len(ranks[0]["advantages"][generation])
        for rank in ranks:
            start = rank["rank"] * n
            expected = [float(i + 1) if i < n else 0.0 for i in range(start, start + n)]
            assert rank["advantages"][generation] == expected


@pytest.mark.parametrize("config", ["zero2_cpu", "zero3_cpu"])
def test_deepspeed_on_cpu_gives_the_same_inner_rewards_as_ddp(config, ddp_run, tiny_model_dir, tmp_path):
    """ZeRO-3 shards the policy; each rank must gather it whole into its own inner model. Same seeds and data
    as the DDP run, so every rank's inner-loop rewards must match DDP's exactly."""
    ddp = ddp_run[1]
    sharded = launch(config, tiny_model_dir, tmp_path / config, 29562)
    for a, b in zip(ddp, sharded):
        assert [r["context_id"] for r in a["runs"]] == [r["context_id"] for r in b["runs"]]
        assert [r["reward"] for r in a["runs"]] == pytest.approx([r["reward"] for r in b["runs"]], abs=1e-5)
    assert (tmp_path / config / "run" / "model.safetensors").exists()
