"""configs/ and `trapo train`: every YAML resolves into valid configs without loading a model, the recipe carries
the paper's values (docs/reproduce.md), overrides work TRL-style, the context extension is applied at load time,
and a whole `trapo train` run (sft-then-grpo, both phases) works on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import addition_rows

from trapo.cli import main
from trapo.config import TRAPOConfig
from trapo.core import PAPER_SCHEDULE
from trapo.core.schedule import schedule_as_data
from trapo.models import with_context_overrides
from trapo.recipes import RL_METHODS, rl_preset
from trapo.sft import TRAPOSFTConfig
from trapo.train_plan import load_train_plan

PAPER_STAGES = schedule_as_data(PAPER_SCHEDULE)

CONFIGS = Path(__file__).parents[1] / "configs"
RECIPE = CONFIGS / "trapo_qwen2.5_math_7b.yaml"
GPUS = 8


def plan_for(path, tmp_path, *extra):
    # use_cpu: bf16 configs validate on a machine without a GPU only with it (transformers checks the hardware).
    return load_train_plan(str(path), ["--output_dir", str(tmp_path / "out"), "--set", "use_cpu=true", *extra])


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_config_resolves(path, tmp_path):
    plan = plan_for(path, tmp_path)
    assert plan.script.model_name_or_path == "Qwen/Qwen2.5-Math-7B"
    assert plan.script.rope_theta == 40000 and plan.script.max_position_embeddings == 16384
    assert Path(plan.script.chat_template_file).is_file()
    if plan.method in RL_METHODS or plan.method == "sft-then-grpo":
        assert isinstance(plan.rl_args, TRAPOConfig)
        preset = rl_preset(plan.rl_args.method, plan.rl_args.num_generations)
        assert plan.rl_args.schedule == preset["schedule"] and plan.rl_args.prefix_loss == preset["prefix_loss"]
        assert plan.rl_args.output_dir == str(tmp_path / "out")
    if plan.method in ("sft", "sft-then-grpo"):
        assert isinstance(plan.sft_args, TRAPOSFTConfig)
        assert plan.sft_args.sft_loss == "nll" and plan.sft_args.loss_type == "nll"
    if plan.method == "sft":
        assert plan.rl_args is None and plan.sft_args.output_dir == str(tmp_path / "out")
    if plan.method == "sft-then-grpo":
        assert plan.rl_args.method == "grpo" and plan.sft_args.output_dir == str(tmp_path / "out" / "sft")
    expected_method = {"trapo_qwen2.5_math_7b": "trapo", "grpo-released": "grpo"}.get(path.stem, path.stem)
    assert plan.method == expected_method


def test_the_recipe_has_the_papers_values(tmp_path):
    args = plan_for(RECIPE, tmp_path).rl_args
    assert (
        args.method == "trapo" and args.schedule == PAPER_STAGES and args.prefix_loss == "trsft" and args.alpha == 0.1
    )
    assert args.learning_rate == 5e-6 and args.lr_scheduler_type == "constant" and args.weight_decay == 0.01
    assert args.max_grad_norm == 1.0 and args.max_steps == 500 and args.temperature == 1.0 and args.top_p == 1.0
    assert args.max_completion_length == 8192 and args.vllm_max_model_length == 1024 + 8192
    assert args.loss_type == "dr_grpo" and args.scale_rewards == "none" and args.beta == 0.0
    assert args.entropy_coef == 0.001 and args.num_generations == 8 and args.num_iterations == 1
    samples_per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * GPUS
    assert samples_per_step // args.num_generations == 128  # prompts per optimizer step
    assert args.steps_per_generation == args.gradient_accumulation_steps  # one optimizer step per rollout batch
    assert args.use_vllm and args.vllm_mode == "colocate" and args.bf16
    accelerate = yaml.safe_load((CONFIGS / "accelerate" / "zero3_8gpu.yaml").read_text())
    assert accelerate["num_processes"] == GPUS and accelerate["deepspeed_config"]["zero_stage"] == 3


def test_overrides(tmp_path):
    plan = plan_for(RECIPE, tmp_path, "--learning_rate", "1e-6", "--set", "schedule=[{n: 8}]", "--set", "alpha=0.2")
    assert plan.rl_args.learning_rate == 1e-6 and plan.rl_args.alpha == 0.2
    assert plan.rl_args.schedule == [{"n": 8, "prefix_ratio": 0.0}]  # resolved: what ran
    assert plan_for(RECIPE, tmp_path, "--method", "grpo", "--set", "schedule=null").rl_args.method == "grpo"
    plan = plan_for(CONFIGS / "sft-then-grpo.yaml", tmp_path, "--set", "sft.learning_rate=1e-5")
    assert plan.sft_args.learning_rate == 1e-5 and plan.rl_args.learning_rate == 1e-6  # the RL phase: its own
    with pytest.raises(ValueError, match=r"unknown config key\(s\) \['learning_rat'\]"):
        plan_for(RECIPE, tmp_path, "--set", "learning_rat=1")
    with pytest.raises(ValueError, match="unknown command-line option"):
        plan_for(RECIPE, tmp_path, "--no_such_option", "3")
    with pytest.raises(ValueError, match="num_generations"):
        plan_for(RECIPE, tmp_path, "--set", "num_generations=4")  # the schedule sums to 8


def test_dry_run_prints_the_resolved_plan(tmp_path, capsys):
    argv = ["train", "--config", str(RECIPE), "--dry-run", "--output_dir", str(tmp_path), "--set", "use_cpu=true"]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["method"] == "trapo" and printed["rl"]["schedule"] == PAPER_STAGES


def test_chat_template_renders_prompt_as_a_prefix_of_prompt_and_completion():
    from trapo.tasks.tiny_model import build_tokenizer

    tok = build_tokenizer()
    tok.chat_template = (CONFIGS / "chat_templates" / "qwen_think.jinja").read_text()
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}]
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    full = tok.apply_chat_template([*messages, {"role": "assistant", "content": "R"}], tokenize=False)
    assert prompt.endswith("<|im_start|>assistant\n<think>\n") and full == prompt + "R<|im_end|>\n"


def save_tiny(tokenizer, path):
    from trapo.tasks.tiny_model import build_model

    build_model(tokenizer, hidden_size=32, num_layers=1, num_heads=2, seed=0).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_context_override_is_a_patched_view(tmp_path, tokenizer):
    from transformers import AutoConfig, AutoModelForCausalLM

    source = save_tiny(tokenizer, tmp_path / "tiny")
    original = (source / "config.json").read_text()
    assert with_context_overrides(str(source), tmp_path / "view") == str(source)  # nothing to override
    view = Path(with_context_overrides(str(source), tmp_path / "view", 40000, 16384))
    config = AutoConfig.from_pretrained(view)
    assert config.rope_parameters["rope_theta"] == 40000 and config.max_position_embeddings == 16384
    assert (source / "config.json").read_text() == original
    assert (view / "model.safetensors").is_symlink()
    model = AutoModelForCausalLM.from_pretrained(view)
    assert model.config.rope_parameters["rope_theta"] == 40000
    assert with_context_overrides(str(source), view, 40000, 16384) == str(view)  # idempotent


def parity_reward(completions, **kwargs):
    return [float(len(c) % 2) for c in completions]


def test_trapo_train_end_to_end(tmp_path, tokenizer):
    source = save_tiny(tokenizer, tmp_path / "tiny")
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in addition_rows(8)))
    template = tmp_path / "template.jinja"
    template.write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    config = {
        "method": "sft-then-grpo",
        "model_name_or_path": str(source),
        "dataset_name": str(data),
        "reward": "test_train_plan:parity_reward",
        "rope_theta": 20000,
        "max_position_embeddings": 1024,
        "chat_template_file": str(template),
        "num_generations": 4,
        "per_device_train_batch_size": 8,
        "max_completion_length": 8,
        "max_steps": 1,
        "learning_rate": 1e-3,
        "use_cpu": True,
        "report_to": "none",
        "save_strategy": "no",
        "disable_tqdm": True,
        "output_dir": str(tmp_path / "out"),
        "sft": {"activation_checkpointing": False},
    }
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["train", "--config", str(tmp_path / "tiny.yaml")]) == 0
    finally:
        torch.set_num_threads(threads)
    for phase in (tmp_path / "out" / "sft", tmp_path / "out"):
        saved = json.loads((phase / "config.json").read_text())
        assert saved["rope_parameters"]["rope_theta"] == 20000 and saved["max_position_embeddings"] == 1024
        assert (phase / "model.safetensors").is_file()
        from transformers import AutoTokenizer

        assert AutoTokenizer.from_pretrained(phase).chat_template == template.read_text()


def test_trapo_train_resume_continues_from_the_last_complete_checkpoint(tmp_path, tokenizer, caplog):
    source = save_tiny(tokenizer, tmp_path / "tiny")
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in addition_rows(8)))
    config = {
        "method": "trapo",
        "model_name_or_path": str(source),
        "dataset_name": str(data),
        "reward": "test_train_plan:parity_reward",
        "per_device_train_batch_size": 8,
        "max_completion_length": 8,
        "max_steps": 2,
        "use_cpu": True,
        "report_to": "none",
        "save_strategy": "steps",
        "save_steps": 1,
        "logging_steps": 1,
        "disable_tqdm": True,
        "output_dir": str(tmp_path / "out"),
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["train", "--config", str(tmp_path / "run.yaml")]) == 0
        (tmp_path / "out" / "checkpoint-2" / "trapo_complete.json").unlink()  # as if killed while saving step 2
        assert main(["train", "--config", str(tmp_path / "run.yaml"), "--max_steps", "3", "--resume"]) == 0
    finally:
        torch.set_num_threads(threads)
    state = json.loads((tmp_path / "out" / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["global_step"] == 3
    assert [h["step"] for h in state["log_history"] if "loss" in h] == [1, 2, 3]
    assert "skipping incomplete checkpoint" in caplog.text
    assert f"resuming from {tmp_path / 'out' / 'checkpoint-1'}" in caplog.text


# ------------------------------------------------------------------------------------------- fidelity (docs/method.md)


@pytest.mark.parametrize("method", sorted(RL_METHODS))
def test_no_vllm_importance_sampling_correction_unless_asked(tmp_path, method):
    """TRL turns it on by default; neither the paper nor the released code has one."""
    assert not TRAPOConfig(
        output_dir=str(tmp_path), use_cpu=True, report_to=[], method=method
    ).vllm_importance_sampling_correction
    on = TRAPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[], method=method,
                     vllm_importance_sampling_correction=True)  # fmt: skip
    assert on.vllm_importance_sampling_correction


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_no_config_turns_on_the_importance_sampling_correction(path, tmp_path):
    plan = plan_for(path, tmp_path)
    if plan.rl_args is not None:
        assert plan.rl_args.vllm_importance_sampling_correction is False


def test_the_recipe_prompt_is_the_released_template_byte_for_byte(tmp_path):
    from trapo.data.text import restyle_prompt
    from trapo.tasks.tiny_model import build_tokenizer

    plan = plan_for(RECIPE, tmp_path)
    assert plan.script.prompt_style == "trapo"
    tokenizer = build_tokenizer()
    tokenizer.chat_template = Path(plan.script.chat_template_file).read_text()
    problem = "Find $x$ if $2x + 3 = 7$."
    dataset_prompt = [{"role": "system", "content": "Your task is to follow a systematic..."},
                      {"role": "user", "content": problem}]  # fmt: skip
    rendered = tokenizer.apply_chat_template(
        restyle_prompt(dataset_prompt, plan.script.prompt_style), tokenize=False, add_generation_prompt=True
    )
    released = (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        + problem
        + "\nPlease reason step by step, and put your final answer within \\boxed{}.<|im_end|>\n<|im_start|>assistant\n"
    )
    assert rendered == released


def test_the_recipe_scales_the_loss_as_the_released_actor(tmp_path):
    args = plan_for(RECIPE, tmp_path).rl_args
    assert args.loss_normalization == "sequence_budget" and args.entropy_tokens == "response"
    assert args.entropy_token_budget == 32768  # the released packing budget weights the entropy bonus
    assert args.expert_column == "expert"  # TRAPO's prefixes: the reasoning only


def test_the_luffy_baseline_trains_on_its_own_trace_data_and_reward(tmp_path):
    plan = plan_for(CONFIGS / "luffy.yaml", tmp_path)
    args = plan.rl_args
    assert args.method == "luffy" and args.prefix_loss == "luffy" and args.prefix_weight == "advantage"
    assert args.second_trace_for_full is False  # its own (first) trace, not the second 220k one
    assert args.expert_column == "expert_full" and args.scale_rewards == "none"
    assert plan.script.reward == "math_think_released" and plan.script.prompt_style == "dataset"
    assert plan.script.chat_template_file.endswith("qwen_think.jinja")


# Each baseline's optimisation as its authors' released script has it: (learning rate, optimizer steps per rollout
# batch, prompts per rollout batch on 8 GPUs, ratio clip, gradient clip); docs/method.md's fidelity table cites these.
RELEASED_OPTIMISATION = {
    "luffy": (1e-6, 2, 128, None, 1.0),  # LUFFY exp_scripts/train.sh:36,38,84
    "relift": (1e-6, 2, 128, None, 0.7),  # ReLIFT examples/math-7b/train.sh:37,32,72
    "grpo-released": (1e-6, 4, 128, (0.2, 0.2), 1.0),  # TRAPO exp_scripts/train_on_policy.sh:43,45,61
    "sft-then-grpo": (1e-6, 2, 128, (0.2, 0.2), 1.0),  # LUFFY exp_scripts/train_sft_rl.sh:30-41
}


@pytest.mark.parametrize("name", sorted(RELEASED_OPTIMISATION))
def test_the_baselines_optimise_as_their_released_scripts(tmp_path, name):
    lr, updates, prompts, clip, grad_clip = RELEASED_OPTIMISATION[name]
    args = plan_for(CONFIGS / f"{name}.yaml", tmp_path).rl_args
    assert args.learning_rate == lr and args.updates_per_rollout == updates
    samples = args.per_device_train_batch_size * args.steps_per_generation * GPUS
    assert samples // args.num_generations == prompts
    assert (args.epsilon, args.epsilon_high) == (clip or (None, None)) and args.max_grad_norm == grad_clip


def test_the_relift_config_takes_its_sft_steps_as_released(tmp_path):
    plan = plan_for(CONFIGS / "relift.yaml", tmp_path)
    args = plan.rl_args
    assert args.relift and args.relift_batch is None  # = a rollout batch's prompts, 128 on 8 GPUs
    assert (args.relift_learning_rate, args.relift_entropy_coef, args.relift_max_grad_norm) == (1e-6, 0.001, 1.0)
    assert args.num_generations == 8 and args.prefix_loss == "none" and args.expert_column == "expert_full"
    assert plan.script.reward == "math_think_released"


def test_the_sft_baseline_uses_the_openrlhf_optimiser_luffy_cites(tmp_path):
    sft = plan_for(CONFIGS / "sft.yaml", tmp_path).sft_args
    assert sft.learning_rate == 5e-5 and sft.lr_scheduler_type.value == "cosine_with_min_lr"
    assert sft.lr_scheduler_kwargs == {"min_lr_rate": 0.1} and (sft.adam_beta1, sft.adam_beta2) == (0.9, 0.95)
    assert sft.weight_decay == 0.0 and sft.max_grad_norm == 1.0 and sft.num_train_epochs == 3


@pytest.mark.parametrize("name", ["sft", "sft-then-grpo"])
def test_sft_baselines_train_on_whole_responses(tmp_path, name):
    plan = plan_for(CONFIGS / f"{name}.yaml", tmp_path)
    assert plan.sft_args.expert_column == "expert_full" and plan.script.prompt_style == "dataset"


@pytest.mark.parametrize(
    ("name", "kind"), [("zero3_8gpu.yaml", "DEEPSPEED"), ("fsdp2_8gpu.yaml", "FSDP")], ids=["zero3", "fsdp2"]
)
def test_the_gpu_launcher_configs_parse_as_accelerate_configs(name, kind):
    """Not run on GPUs here (docs/scale.md); read by accelerate's own loader, as `accelerate launch` reads them."""
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(CONFIGS / "accelerate" / name))
    assert config.distributed_type.name == kind and config.num_processes == 8 and config.mixed_precision == "bf16"
    if kind == "DEEPSPEED":
        assert config.deepspeed_config["zero_stage"] == 3
        assert config.deepspeed_config["offload_optimizer_device"] == "none"  # clear of DeepSpeed's offload bug
    else:
        assert (
            config.fsdp_config["fsdp_version"] == 2 and config.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"
        )


def test_sft_then_grpo_trains_its_rl_phase_on_held_out_problems(tmp_path):
    plan = plan_for(CONFIGS / "sft-then-grpo.yaml", tmp_path)
    assert plan.script.rl_dataset_name == "data/openr1_math_complement_trapo.parquet"
    assert plan.script.dataset_name != plan.script.rl_dataset_name


def test_the_complement_keeps_only_problems_outside_the_base():
    from trapo.data.prepare import complement_of

    base = [{"prompt": [{"role": "user", "content": "What is  1+1?"}]}, {"prompt": "2+2?"}]
    rows = [{"prompt": "What is 1+1?", "answer": "2"}, {"prompt": "3+3?", "answer": "6"}, {"prompt": "2+2?"}]
    assert complement_of(base, rows) == [{"prompt": "3+3?", "answer": "6"}]  # whitespace and chat form ignored


def test_train_method_runs_the_rl_phase_on_its_own_rows(tmp_path, tokenizer, monkeypatch):
    from datasets import Dataset

    import trapo.recipes as recipes

    seen = {}
    monkeypatch.setattr(recipes, "_run_sft", lambda model, tok, data, *a: seen.setdefault("sft", data) and model)
    monkeypatch.setattr(recipes, "_run_rl", lambda model, tok, data, *a: seen.setdefault("rl", data))
    sft_rows, rl_rows = Dataset.from_list(addition_rows(4)), Dataset.from_list(addition_rows(8))
    from conftest import sft_config, tiny_config

    recipes.train_method("sft-then-grpo", "model", tokenizer, sft_rows, parity_reward, sft_args=sft_config(tmp_path),
                         rl_args=tiny_config(tmp_path, method="grpo"), rl_dataset=rl_rows)  # fmt: skip
    assert seen["sft"] is sft_rows and seen["rl"] is rl_rows
    with pytest.raises(ValueError, match="rl_dataset is for a method with an SFT and an RL phase"):
        recipes.train_method("grpo", "model", tokenizer, sft_rows, parity_reward,
                             rl_args=tiny_config(tmp_path, method="grpo"), rl_dataset=rl_rows)  # fmt: skip
