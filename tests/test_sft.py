"""The sft and sft-then-grpo baselines: dataset conversion, the TrSFT loss inside SFTTrainer, end-to-end runs."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import sft_config
from datasets import Dataset
from torch import nn
from trl import SFTTrainer
from trl.trainer.utils import FusedCausalLMOutput

from trapo.sft import TrSFTTrainer, expert_sft_dataset, train_sft


def make_sft_trainer(tmp_path, model, tokenizer, dataset, cls=TrSFTTrainer, **overrides):
    return cls(
        model=model,
        args=sft_config(tmp_path, **overrides),
        train_dataset=expert_sft_dataset(dataset),
        processing_class=tokenizer,
    )


def batch_of(trainer, n=8):
    """A collated batch of the trainer's prepared (tokenised, labelled) rows."""
    rows = [{k: trainer.train_dataset[i][k] for k in ("input_ids", "labels")} for i in range(n)]
    return trainer.data_collator(rows)


def completion_logps(model, batch):
    """Per-token log-probs of the labels from a plain forward (independent of TRL's fused head), and their mask."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
    labels = batch["labels"][:, 1:]
    mask = labels != -100
    logps = logits.log_softmax(-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return logps, mask


def grads(model):
    return [p.grad.detach().clone() for p in model.parameters()]


# ------------------------------------------------------------------ dataset conversion


def test_expert_sft_dataset_one_row_per_trace(addition_dataset):
    sft = expert_sft_dataset(addition_dataset)
    assert sft.column_names == ["prompt", "completion"] and len(sft) == 2 * len(addition_dataset)
    row = addition_dataset[0]
    assert sft[0] == {"prompt": row["prompt"], "completion": row["expert"][0]}
    assert sft[1] == {"prompt": row["prompt"], "completion": row["expert"][1]}
    assert len(expert_sft_dataset(addition_dataset, max_traces=1)) == len(addition_dataset)
    with_eos = expert_sft_dataset([{"prompt": "p", "expert": ["a", "b<eos>"]}], eos_token="<eos>")
    assert with_eos["completion"] == ["a<eos>", "b<eos>"]


def test_expert_sft_dataset_chat_prompts():
    prompt = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "1+2="}]
    sft = expert_sft_dataset(Dataset.from_list([{"prompt": prompt, "expert": ["three", "3"], "answer": "3"}]))
    assert len(sft) == 2 and sft[0]["prompt"] == prompt
    assert sft[1]["completion"] == [{"role": "assistant", "content": "3"}]


@pytest.mark.parametrize(
    "expert, message",
    [
        ([], r"row 1: 'expert' must be a non-empty list"),
        ("a string", r"row 1: 'expert' must be a non-empty list.*wrap a single string"),
        (["fine", ""], r"row 1: expert trace 1 is ''"),
        ([None], r"row 1: expert trace 0 is None"),
    ],
)
def test_expert_sft_dataset_rejects_bad_rows_by_index(expert, message):
    rows = [{"prompt": "p", "expert": ["ok"]}, {"prompt": "q", "expert": expert}]
    with pytest.raises(ValueError, match=message):
        expert_sft_dataset(rows)


def test_expert_sft_dataset_rejects_missing_column(addition_dataset):
    with pytest.raises(ValueError, match="'traces'"):
        expert_sft_dataset(addition_dataset, expert_column="traces")


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"sft_loss": "luffy"}, "sft_loss must be one of"),
        ({"alpha": 0.0}, "alpha must be in"),
        ({"sft_loss": "trsft", "loss_type": "dft"}, "loss_type='nll'"),
    ],
)
def test_config_rejects_bad_settings(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        sft_config(tmp_path, **overrides)


# ------------------------------------------------------------------ the loss


def test_nll_loss_equals_trl_loss(tmp_path, tiny_model, tokenizer, addition_dataset):
    ours = make_sft_trainer(tmp_path, tiny_model, tokenizer, addition_dataset, sft_loss="nll")
    batch = batch_of(ours)
    assert (batch["labels"][:, 0] == -100).all()  # the prompt is masked: completion-only loss
    trl = make_sft_trainer(tmp_path, tiny_model, tokenizer, addition_dataset, cls=SFTTrainer)
    loss = ours.compute_loss(ours.model, dict(batch))
    assert torch.allclose(loss, trl.compute_loss(trl.model, dict(batch)), atol=1e-5)
    logps, mask = completion_logps(tiny_model, batch)
    assert torch.allclose(loss, -(logps * mask).sum() / mask.sum(), atol=1e-5)
    assert 0.0 <= ours._metrics["train"]["trapo/sft_clip_frac"][-1] <= 1.0


def test_trsft_hook_on_a_hand_checked_case(tmp_path, tiny_model, tokenizer, addition_dataset):
    """p = 0.5, 0.05, 0.9 (+ one ignored position), alpha 0.1: values -1, -0.5, -1; weights on ∇log p 1, 0.5, 1."""
    trainer = make_sft_trainer(tmp_path, tiny_model, tokenizer, addition_dataset, sft_loss="trsft", alpha=0.1)
    probs = torch.tensor([[0.5, 0.05, 0.9, 1.0]])
    mask = torch.tensor([[True, True, True, False]])

    def loss_and_grad(kind):
        trainer.args.sft_loss = kind
        logps = probs.log().masked_fill(~mask, 0.0).requires_grad_()

        class Fused(nn.Module):
            def forward(self):
                return FusedCausalLMOutput(log_probs=logps, label_mask=mask)

        module = Fused()
        with trainer._token_loss_hook(module):
            out = module()
        loss = -out.log_probs.sum() / mask.sum()  # what TRL's compute_loss does with the output
        loss.backward()
        return loss.item(), logps.grad[0].tolist()

    value, grad = loss_and_grad("trsft")
    assert value == pytest.approx(-(1 + 0.5 + 1) / 3)
    assert grad == pytest.approx([-1 / 3, -0.5 / 3, -1 / 3, 0.0])
    value, grad = loss_and_grad("nll")
    assert value == pytest.approx(-sum(math.log(p) for p in (0.5, 0.05, 0.9)) / 3)
    assert grad == pytest.approx([-1 / 3, -1 / 3, -1 / 3, 0.0])  # differs from trsft only where p < alpha


def test_trsft_loss_and_gradients_on_the_model(tmp_path, tiny_model, tokenizer, addition_dataset):
    trainer = make_sft_trainer(tmp_path, tiny_model, tokenizer, addition_dataset, sft_loss="trsft")
    batch = batch_of(trainer)
    logps, mask = completion_logps(tiny_model, batch)
    p = logps.detach().exp()[mask]
    # Half the tokens inside the trust region, half outside; alpha sits between two tokens' probabilities so that
    # float differences between TRL's fused head and the plain forward cannot move a token across it.
    ranked = p.sort().values
    alpha = ranked[len(ranked) // 2 - 1 : len(ranked) // 2 + 1].mean().item()

    def trainer_grads(kind, a):
        trainer.args.sft_loss, trainer.args.alpha = kind, a
        tiny_model.zero_grad()
        loss = trainer.compute_loss(trainer.model, dict(batch))
        loss.backward()
        return loss, grads(tiny_model)

    loss, got = trainer_grads("trsft", alpha)
    assert torch.allclose(loss, -(p / p.clamp(min=alpha)).sum() / mask.sum(), atol=1e-5)
    assert trainer._metrics["train"]["trapo/sft_clip_frac"][-1] == pytest.approx((p < alpha).float().mean().item())
    # Reference: NLL with each token's gradient scaled by min(1, p / alpha), from a plain forward.
    tiny_model.zero_grad()
    logps, mask = completion_logps(tiny_model, batch)
    weight = (logps.detach().exp() / alpha).clamp(max=1.0)
    (-(weight * logps * mask).sum() / mask.sum()).backward()
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(got, grads(tiny_model), strict=True))
    # alpha -> 0: every token is inside the trust region and TrSFT's gradient is NLL's.
    _, tiny_alpha = trainer_grads("trsft", 1e-9)
    _, nll = trainer_grads("nll", 1e-9)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(tiny_alpha, nll, strict=True))
    assert not all(torch.allclose(a, b, atol=1e-6) for a, b in zip(got, nll, strict=True))


# ------------------------------------------------------------------ end to end


def mean_expert_nll(model, trainer):
    with torch.no_grad():
        logps, mask = completion_logps(model, batch_of(trainer, len(trainer.train_dataset)))
    return (-(logps * mask).sum() / mask.sum()).item()


@pytest.mark.parametrize("sft_loss", ["nll", "trsft"])
def test_sft_lowers_the_loss_on_expert_traces(tmp_path, tiny_model, tokenizer, addition_dataset, sft_loss):
    probe = make_sft_trainer(tmp_path, tiny_model, tokenizer, addition_dataset)
    before = mean_expert_nll(tiny_model, probe)
    args = sft_config(tmp_path, sft_loss=sft_loss, max_steps=20, learning_rate=1e-2, logging_steps=5)
    model = train_sft(tiny_model, tokenizer, addition_dataset, args)
    assert model is tiny_model
    after = mean_expert_nll(model, probe)
    assert after < before - 1.0, (before, after)
