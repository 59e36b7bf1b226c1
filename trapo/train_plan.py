"""What ``trapo train`` runs: a TRL-style YAML config resolved into a `TrainPlan` (TRAPOConfig / TRAPOSFTConfig per
phase), then loaded and trained (`run_train`).

A config is one flat YAML mapping, as with TRL's ``--config``: the script's own keys (`TrainScriptArguments`),
``method``, and any field of `TRAPOConfig` (RL methods) or `TRAPOSFTConfig` (``sft``, and the first phase of
``sft-then-grpo``). Two additions to TRL's format:

- ``base: other.yaml`` (relative to the file) starts from another config, so a baseline is the recipe plus the keys
  that make it a baseline, and cannot drift from it;
- ``sft:`` a mapping of values for the SFT phase only (e.g. its learning rate); shared keys apply to both phases,
  except ``loss_type``, whose meaning differs between the two configs: a top-level one is the RL
  phase's.

Merging defaults and command-line overrides is TRL's `TrlParser` (``--learning_rate 1e-6``); ``--set key=value`` also
takes YAML values and dotted keys (``--set schedule='[{n: 8}]'``, ``--set sft.learning_rate=1e-5``), which argparse
cannot express. Keys known to no config are an error, naming them. Parsing builds the config objects (and so
validates them) without loading any model or dataset.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from trapo.core.schedule import named_schedule, schedule_as_data
from trapo.data.text import PROMPT_STYLES
from trapo.rewards import REWARDS

# Fields both configs have but with different meanings: at the top level they configure the RL phase only; the SFT
# phase reads them from `sft:`.
RL_ONLY_KEYS = frozenset({"loss_type"})


@dataclass
class TrainScriptArguments:
    """What ``trapo train`` loads before building the trainer (model, data, reward, context extension)."""

    model_name_or_path: str | None = field(default=None, metadata={"help": "Hub id or local folder of the model."})
    model_revision: str | None = field(default=None, metadata={"help": "Hub revision (branch, tag or commit)."})
    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Training rows: a .parquet/.jsonl file, a save_to_disk folder or a Hub dataset; TRAPO rows "
            "(prompt, answer, expert) or the verl/LUFFY layout (see trapo.data)."
        },
    )
    rl_dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "The RL phase's rows of a method with two phases (sft-then-grpo), read like dataset_name; None = "
            "dataset_name. LUFFY's SFT→RL trains its RL phase on held-out problems: `trapo prepare "
            "--complement-of` writes them (docs/reproduce.md)."
        },
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration name."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split to train on."})
    expert_format: str = field(
        default="think",
        metadata={"help": "verl/LUFFY traces: 'think' keeps the reasoning inside <think>…</think>, 'full' all of it."},
    )
    prompt_style: str = field(
        default="dataset",
        metadata={
            "help": "'dataset': the rows' prompts as they are; 'trapo': rebuilt from the problem as TRAPO's released "
            "code does (system 'You are a helpful assistant.', the boxed-answer instruction appended; render with "
            "configs/chat_templates/qwen_plain.jinja)."
        },
    )
    reward: str = field(
        default="math",
        metadata={
            "help": "Reward function(s), comma-separated: 'math' (Math-Verify on the boxed answer), 'math_think' "
            "(LUFFY's: a closed </think> and a verified answer after it), 'chains' (the built-in task) or "
            "'module:function'."
        },
    )
    rope_theta: float | None = field(
        default=None, metadata={"help": "Override the model's rope θ at load time (recipe: 40000, LUFFY's 16k)."}
    )
    max_position_embeddings: int | None = field(
        default=None, metadata={"help": "Override the model's context length at load time (recipe: 16384)."}
    )
    dtype: str = field(default="auto", metadata={"help": "Weights dtype at load: auto | bfloat16 | float32 ..."})
    attn_implementation: str | None = field(
        default=None, metadata={"help": "Attention kernel, e.g. flash_attention_2 or sdpa (transformers' default)."}
    )
    chat_template_file: str | None = field(
        default=None,
        metadata={
            "help": "Jinja chat template that replaces the tokenizer's; saved with the model, so `trapo eval` uses "
            "it too."
        },
    )


@dataclass
class TrainPlan:
    """A resolved ``trapo train`` run: the method and the config of each phase (None when the method has none)."""

    method: str
    script: TrainScriptArguments
    rl_args: object | None = None
    sft_args: object | None = None
    config_dir: str = "."  # custom reward modules are looked up here first

    def rewards(self) -> list | None:
        """The reward functions of the RL phase (None for ``sft``), imported now: a typo fails before any load."""
        from trapo.recipes import phases

        return resolve_rewards(self.script.reward, (self.config_dir,)) if "rl" in phases(self.method) else None

    def preflight(self) -> None:
        """What can be checked before loading anything: rewards importable, model folder present, outputs writable."""
        from trapo.preflight import check_hub_access, check_model_path, check_writable

        self.rewards()
        check_model_path(self.script.model_name_or_path)
        for args in (self.rl_args, self.sft_args):
            if args is not None:
                check_writable(args.output_dir)
                if args.push_to_hub:
                    check_hub_access("push_to_hub")


def _field_names(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def load_yaml(path: str | os.PathLike) -> dict:
    """A YAML config with its ``base:`` chain merged in (the file's own keys win; ``sft:`` merged key by key)."""
    path = Path(path)
    with open(path, encoding="utf-8") as f:
        try:
            config = yaml.safe_load(f) or {}
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(error, "problem", None) or str(error).splitlines()[0]
            raise ValueError(f"{path}: not valid YAML{where}: {problem}") from error
    if not isinstance(config, dict):
        raise ValueError(f"{path}: a config must be a YAML mapping")
    base = config.pop("base", None)
    if base is None:
        return config
    merged = load_yaml(path.parent / base)
    sft = {**merged.get("sft", {}), **config.pop("sft", {})}
    merged.update(config)
    if sft:
        merged["sft"] = sft
    return merged


def _set(config: dict, dotted: str, value) -> None:
    *parents, key = dotted.split(".")
    for parent in parents:
        config = config.setdefault(parent, {})
    config[key] = value


def _pop_option(args: list[str], name: str) -> list[str]:
    """Remove every ``--name value`` / ``--name=value`` from ``args``; return the values in order."""
    values, i = [], 0
    while i < len(args):
        if args[i] == name and i + 1 < len(args):
            values.append(args[i + 1])
            del args[i : i + 2]
        elif args[i].startswith(name + "="):
            values.append(args[i].split("=", 1)[1])
            del args[i]
        else:
            i += 1
    return values


def _options(strings: list[str]) -> set[str]:
    return {s.split("=", 1)[0] for s in strings if s.startswith("--")}


def load_train_plan(config_path: str | None = None, argv: list[str] | None = None) -> TrainPlan:
    """Resolve a YAML config plus command-line overrides into a validated `TrainPlan` (nothing is loaded)."""
    from trl import TrlParser

    from trapo.config import TRAPOConfig
    from trapo.recipes import phases, rl_method, sft_preset
    from trapo.sft import TRAPOSFTConfig

    args = list(argv or [])
    config = load_yaml(config_path) if config_path else {}
    for item in _pop_option(args, "--set"):
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        _set(config, key.strip(), yaml.safe_load(value))
    for value in _pop_option(args, "--method"):
        config["method"] = value
    for key, value in (config.pop("env", None) or {}).items():
        os.environ[key] = str(value)
    method = config.pop("method", "trapo")
    steps = phases(method)
    sft_only = config.pop("sft", None) or {}
    script_keys, rl_keys, sft_keys = (
        _field_names(TrainScriptArguments),
        _field_names(TRAPOConfig),
        _field_names(TRAPOSFTConfig),
    )
    unknown = sorted(set(config) - script_keys - rl_keys - sft_keys) + [
        f"sft.{k}" for k in sorted(set(sft_only) - sft_keys)
    ]
    if unknown:
        raise ValueError(
            f"unknown config key(s) {unknown}: not a field of TrainScriptArguments, TRAPOConfig or TRAPOSFTConfig"
        )
    from trapo.preflight import check_types

    classes = (TrainScriptArguments, TRAPOConfig, TRAPOSFTConfig)
    check_types(config, classes)
    check_types(sft_only, (TRAPOSFTConfig,), prefix="sft.")

    if isinstance(config.get("schedule"), str):  # a named schedule ("paper", "released"): argparse takes lists only
        config["schedule"] = schedule_as_data(named_schedule(config["schedule"]))
    built, leftovers = {}, []
    if "rl" in steps:
        parser = _one_line_errors(TrlParser([TrainScriptArguments, TRAPOConfig]))
        parser.set_defaults_with_config(**{k: v for k, v in config.items() if k in script_keys | rl_keys})
        parser.set_defaults_with_config(method=rl_method(method))
        script, rl_args, rest = parser.parse_args_into_dataclasses(args=args, return_remaining_strings=True)
        built["rl"], built["script"] = rl_args, script
        leftovers.append(_options(rest))
    if "sft" in steps:
        parser = _one_line_errors(TrlParser([TrainScriptArguments, TRAPOSFTConfig]))
        values = {k: v for k, v in config.items() if k in script_keys | sft_keys and k not in RL_ONLY_KEYS}
        values = {**sft_preset(method), **values}
        if "rl" in steps and "output_dir" not in sft_only:
            cli_output = _pop_option(list(args), "--output_dir")
            values["output_dir"] = os.path.join(cli_output[-1] if cli_output else config.get("output_dir", "."), "sft")
        parser.set_defaults_with_config(**{**values, **sft_only})
        sft_argv = args if "rl" not in steps else _without(args, "--output_dir")
        script, sft_args, rest = parser.parse_args_into_dataclasses(args=sft_argv, return_remaining_strings=True)
        built["sft"] = sft_args
        built.setdefault("script", script)
        leftovers.append(_options(rest))
    unknown_cli = set.intersection(*leftovers) if leftovers else set()
    if unknown_cli:
        raise ValueError(f"unknown command-line option(s) {sorted(unknown_cli)}")
    script = built["script"]
    missing = [k for k in ("model_name_or_path", "dataset_name") if not getattr(script, k)]
    if missing:
        raise ValueError(f"the config must set {missing}")
    if script.expert_format not in ("think", "full"):
        raise ValueError(f"expert_format must be 'think' or 'full', got {script.expert_format!r}")
    if script.prompt_style not in PROMPT_STYLES:
        raise ValueError(f"prompt_style must be one of {PROMPT_STYLES}, got {script.prompt_style!r}")
    if "rl" in steps:
        for spec in reward_specs(script.reward):
            if spec not in REWARDS and ":" not in spec:
                raise ValueError(f"reward {spec!r}: use {', '.join(REWARDS)} or module:function")
    return TrainPlan(method, script, built.get("rl"), built.get("sft"), config_dir=str(Path(config_path or ".").parent))


def _one_line_errors(parser):
    """argparse reports a bad value by printing its whole usage (200 lines for TRAPOConfig) and exiting: raise a
    ValueError instead, which the CLI prints as one line."""

    def error(message: str):
        raise ValueError(f"{message} (see trapo train --help)")

    parser.error = error
    return parser


def _without(args: list[str], name: str) -> list[str]:
    args = list(args)
    _pop_option(args, name)
    return args


def reward_specs(spec: str | list[str]) -> list[str]:
    items = spec if isinstance(spec, list | tuple) else str(spec).split(",")
    return [s.strip() for s in items if s.strip()]


def resolve_rewards(spec: str | list[str], search: tuple = ()) -> list:
    """Reward callables from built-in names (`REWARDS`) or ``module:function`` (looked up in ``search`` folders, the
    working directory and the installed packages)."""
    from trapo.preflight import import_reward

    return [import_reward(REWARDS.get(name, name), search) for name in reward_specs(spec)]


def describe_plan(plan: TrainPlan) -> str:
    """A readable summary of the resolved plan (what ``--dry-run`` prints)."""
    summary = {"method": plan.method, "script": dataclasses.asdict(plan.script)}
    keys = [
        "output_dir", "learning_rate", "lr_scheduler_type", "weight_decay", "max_grad_norm", "max_steps",
        "num_train_epochs", "per_device_train_batch_size", "gradient_accumulation_steps", "bf16", "seed",
        "method", "schedule", "prefix_loss", "sft_loss", "alpha", "prefix_weight", "num_generations",
        "max_completion_length",
        "temperature", "top_p", "entropy_coef", "loss_type", "scale_rewards", "beta", "use_vllm", "vllm_mode",
        "max_length",
    ]  # fmt: skip
    for phase, args in (("rl", plan.rl_args), ("sft", plan.sft_args)):
        if args is not None:
            summary[phase] = {k: getattr(args, k) for k in keys if hasattr(args, k)}
    return json.dumps(summary, indent=2, default=str)


def run_train(plan: TrainPlan, resume: bool | str | None = None) -> int:
    """Load the model (with the context override), the data and the rewards; train; save the final model."""
    from accelerate import PartialState

    from trapo.data import load_training_rows
    from trapo.data.text import restyle_prompt
    from trapo.models import load_model, load_tokenizer, with_context_overrides
    from trapo.preflight import check_chat_template
    from trapo.recipes import train_method

    plan.preflight()
    rewards = plan.rewards()
    script = plan.script
    first = plan.sft_args if plan.sft_args is not None else plan.rl_args
    with PartialState().local_main_process_first():  # one writer per node; the others find the view ready
        model_path = with_context_overrides(
            script.model_name_or_path,
            Path(plan.rl_args.output_dir if plan.rl_args is not None else first.output_dir) / "base-model",
            script.rope_theta,
            script.max_position_embeddings,
            script.model_revision,
        )

    def rows(name: str):
        dataset = load_training_rows(
            name,
            script.dataset_train_split,
            script.dataset_config,
            expert_column=first.expert_column,
            answer_column=getattr(plan.rl_args, "answer_column", "answer"),
            expert_format=script.expert_format,
        )
        if script.prompt_style != "dataset":
            dataset = dataset.map(lambda row: {"prompt": restyle_prompt(row["prompt"], script.prompt_style)})
        return dataset

    dataset = rows(script.dataset_name)
    rl_dataset = rows(script.rl_dataset_name) if script.rl_dataset_name and plan.sft_args is not None else None
    tokenizer = load_tokenizer(model_path, first.trust_remote_code, script.chat_template_file)
    check_chat_template(tokenizer, dataset[0]["prompt"])
    model = load_model(model_path, script.dtype, script.attn_implementation, first.trust_remote_code)
    train_method(
        plan.method,
        model,
        tokenizer,
        dataset,
        rewards,
        sft_args=plan.sft_args,
        rl_args=plan.rl_args,
        save_final=True,
        resume=resume,
        rl_dataset=rl_dataset,
    )
    return 0
