"""`trapo demo --quick` end to end through the CLI: table, results.json and plots are written."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_quick_demo_writes_table_json_and_plots(tmp_path):
    out = tmp_path / "demo"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [
        sys.executable,
        "-m",
        "trapo.cli",
        "demo",
        "--quick",
        "--methods",
        "trapo,grpo,sft,sft-then-grpo",
        "--alpha",
        "0.05",
        "--learning-rate",
        "5e-4",
        "--output-dir",
        str(out),
        "--cache-dir",
        str(tmp_path / "cache"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| trapo |" in proc.stdout and "| sft-then-grpo |" in proc.stdout
    results = json.loads((out / "results.json").read_text())
    assert [r["method"] for r in results["runs"]] == ["trapo", "grpo", "sft", "sft-then-grpo"]
    assert results["settings"]["alpha"] == 0.05 and results["settings"]["learning_rate"] == 5e-4
    for run in results["runs"]:
        assert run["curve"][-1][0] == results["settings"]["steps"]  # evaluated at the last step
        assert set(run["final"]) == {"tier_2", "tier_3", "tier_4", "tier_5", "overall"}
    trapo = results["runs"][0]
    assert trapo["guided_share"] > 0 and trapo["level_share"]  # the quick base fails: guidance fires
    assert results["runs"][1]["guided_share"] == 0  # grpo is never guided
    for name in ("accuracy.png", "guidance.png", "results.md"):
        assert (out / name).stat().st_size > 0
    # The warm-started base is cached: a second run reuses it.
    again = subprocess.run(
        [
            *cmd[:4],
            "--quick",
            "--methods",
            "grpo",
            "--output-dir",
            str(out / "2"),
            "--cache-dir",
            str(tmp_path / "cache"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert again.returncode == 0 and "cached at" in again.stdout


def test_demo_rejects_unknown_methods(tmp_path):
    from trapo.demo import DemoSettings, run

    with pytest.raises(ValueError, match="unknown demo method"):
        run(DemoSettings(methods=("trapo", "ppo"), output_dir=str(tmp_path)))
