"""Shared fixtures: a tiny local model, a toy addition dataset and the one way tests build a `TRAPOTrainer` on them
(`make_trainer`), plus `tiny_config` / `sft_config` (no downloads, seeded)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs two workers on two cores: one thread each
    import torch

    torch.set_num_threads(1)


def addition_rows(n: int = 16) -> list[dict]:
    """Rows with prompt, answer and two expert traces whose paragraphs are separated by "\\n\\n"."""
    rows = []
    for i in range(n):
        a, b = i % 7 + 1, i // 7 + 2
        rows.append(
            {
                "prompt": f"{a}+{b}=",
                "answer": str(a + b),
                "expert": [f"add {a} and {b}\n\nso the sum is\n\n{a + b}", f"{b} plus {a}\n\ngives {a + b}"],
            }
        )
    return rows


@pytest.fixture(scope="session")
def tokenizer():
    from trapo.tasks.tiny_model import build_tokenizer

    return build_tokenizer()


@pytest.fixture
def tiny_model(tokenizer):
    from trapo.tasks.tiny_model import build_model

    return build_model(tokenizer, hidden_size=32, num_layers=1, num_heads=2, seed=0)


@pytest.fixture
def addition_dataset():
    from datasets import Dataset

    return Dataset.from_list(addition_rows())


def constant_reward(value: float):
    def reward(completions, **kwargs):
        return [value] * len(completions)

    reward.__name__ = f"constant_{value:g}"
    return reward


def tiny_config(tmp_path, **overrides):
    from trapo.trainer import TRAPOConfig

    values = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=16,
        max_steps=2,
        max_completion_length=16,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        learning_rate=1e-3,
        seed=0,
        disable_tqdm=True,
    )
    values.update(overrides)
    return TRAPOConfig(**values)


def sft_config(tmp_path, **overrides):
    from trapo.sft import TRAPOSFTConfig

    values = dict(
        output_dir=str(tmp_path / "sft"),
        per_device_train_batch_size=8,
        max_steps=2,
        learning_rate=1e-3,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        gradient_checkpointing=False,
        seed=0,
        disable_tqdm=True,
    )
    values.update(overrides)
    return TRAPOSFTConfig(**values)


@pytest.fixture
def make_trainer(tmp_path, tokenizer):
    """``make_trainer(reward=0.0, rows=None, model=None, out="out", args=None, **config)``: a `TRAPOTrainer` on the
    tiny model (a fresh one unless given) and the addition rows (or ``rows``), with ``tiny_config`` overridden by
    ``config`` under ``tmp_path / out``, and the session's tokenizer (or ``tokenizer``). ``reward`` is a number (a
    constant reward) or reward function(s); other keyword arguments of the trainer go in ``trainer_kwargs``."""
    from datasets import Dataset

    from trapo.tasks.tiny_model import build_model
    from trapo.trainer import TRAPOTrainer

    def build(
        reward=0.0, rows=None, model=None, out="out", args=None, tokenizer=tokenizer, trainer_kwargs=None, **config
    ):
        if args is None:
            config.setdefault("output_dir", str(tmp_path / out))
            args = tiny_config(tmp_path, **config)
        rewards = constant_reward(reward) if isinstance(reward, int | float) else reward
        return TRAPOTrainer(
            model=model
            if model is not None
            else build_model(tokenizer, hidden_size=32, num_layers=1, num_heads=2, seed=0),
            reward_funcs=rewards,
            args=args,
            train_dataset=rows
            if isinstance(rows, Dataset)
            else Dataset.from_list(addition_rows() if rows is None else rows),
            processing_class=tokenizer,
            **(trainer_kwargs or {}),
        )

    return build


def pytest_collection_modifyitems(config, items):
    """Order for `make test`'s two workers (``--dist worksteal``: each starts on one half of the list, an idle one
    steals from the other's end): the longest test (the quick demo, run twice, about 2 minutes) opens the first
    half, the other slow tests (about as long together) open the second, so they run side by side and the quick tests
    fill in around them."""
    slow = [item for item in items if item.get_closest_marker("slow") is not None]
    longest = [item for item in slow if item.name == "test_quick_demo_writes_table_json_and_plots"]
    quick = [item for item in items if item.get_closest_marker("slow") is None]
    half = (len(items) - len(slow)) // 2
    items[:] = longest + quick[:half] + [item for item in slow if item not in longest] + quick[half:]
