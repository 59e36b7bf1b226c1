"""End-to-end checks of TRAPOTrainer on a tiny randomly initialised model (CPU, no downloads)."""

from __future__ import annotations

import pytest
import torch
from conftest import addition_rows, constant_reward, tiny_config

from trapo.core import mixed_loss
from trapo.recipes import RL_METHODS
from trapo.trainer import TRAPOTrainer


def rollout(trainer, dataset, num_prompts=2):
    """One rollout (the default scheduler) on the first prompts, exactly as the training loop builds it."""
    rows = [dataset[i] for i in range(num_prompts) for _ in range(trainer.num_generations)]
    trainer.model.train()
    return trainer._generate_and_score_completions(rows)


@pytest.mark.parametrize("method", sorted(RL_METHODS))
def test_every_rl_preset_trains_two_steps(make_trainer, tiny_model, method):
    before = [p.detach().clone() for p in tiny_model.parameters()]
    trainer = make_trainer(model=tiny_model, reward=0.0, method=method)
    trainer.train()
    assert trainer.state.global_step == 2
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    moved = any(not torch.equal(a, b.detach()) for a, b in zip(before, tiny_model.parameters(), strict=True))
    # With reward 0 everywhere GRPO and context-only have zero advantages and no SFT term: only the entropy
    # bonus moves them; every other preset imitates expert tokens.
    assert moved


def test_zero_reward_fires_every_guided_stage_and_marks_one_sft_copy_per_prefix(
    make_trainer, tiny_model, tokenizer, addition_dataset
):
    trainer = make_trainer(model=tiny_model, reward=0.0, max_completion_length=24)
    out = rollout(trainer, addition_dataset)
    prefix_mask = out["prefix_mask"]
    guided = prefix_mask.any(dim=1).view(2, 8)
    sft = out["imitated_mask"].bool()
    # Per group: stage 1 (4 samples) unguided, stages 2-4 (2+1+1 samples) guided.
    assert guided.tolist() == [[False] * 4 + [True] * 4] * 2
    # Stage 2's two samples share one prefix: only the first imitates it; stages 3 and 4 once each.
    assert sft.any(dim=1).view(2, 8).tolist() == [[False] * 4 + [True, False, True, True]] * 2
    assert torch.equal(sft, prefix_mask & sft.any(dim=1, keepdim=True))
    # The full-trace sample (stage 4) is the second expert trace + EOS, with nothing generated.
    full = out["completion_ids"][7][out["completion_mask"][7].bool()].tolist()
    expected = tokenizer(addition_dataset[0]["expert"][1], add_special_tokens=False)["input_ids"]
    assert full == expected + [tokenizer.eos_token_id]
    assert out["prefix_mask"][7][out["completion_mask"][7].bool()].all()
    # Trace "add 1 and 2\n\nso the sum is\n\n3" is 27 tokens, 28 with its EOS (the cut counts it, as the released
    # code does); breaks at 11 and 25. Stage 2 (ratio 0.25): k = 7, the break at 11 lies before 0.55·28 so the prefix
    # ends after it. Stage 3 (0.5): k = 14, the next break (25) lies past 0.8·28, so the cut falls back to k.
    assert tokenizer.decode(out["completion_ids"][4][: int(prefix_mask[4].sum())]) == "add 1 and 2\n\n"
    assert int(prefix_mask[6].sum()) == 14
    assert torch.all(out["advantages"] == 0)


def test_full_reward_gives_no_guidance_and_zero_advantages(make_trainer, tiny_model, addition_dataset):
    trainer = make_trainer(model=tiny_model, reward=1.0)
    out = rollout(trainer, addition_dataset)
    assert not (out["prefix_mask"]).any()
    assert out["imitated_mask"].sum() == 0
    assert torch.all(out["advantages"] == 0)
    assert trainer.rollout_stats["guided_samples"] == 0


def test_advantages_are_group_centred_over_guided_and_unguided_samples(make_trainer, tiny_model, addition_dataset):
    def guided_success(completions, **kwargs):
        # Scores 1 exactly when the completion starts with the expert's text (guided samples).
        return [
            1.0 if c.startswith("add") or c.startswith(kwargs["expert"][i][1][:3]) else 0.0
            for i, c in enumerate(completions)
        ]

    trainer = make_trainer(model=tiny_model, reward=guided_success)
    out = rollout(trainer, addition_dataset, num_prompts=1)
    guided = (out["prefix_mask"]).any(dim=1)
    rewards = guided.float()  # the random model never writes "add" itself
    assert torch.allclose(out["advantages"], rewards - rewards.mean())
    assert guided.sum() == 4


def test_trainer_loss_equals_core_mixed_loss(make_trainer, tiny_model, addition_dataset):
    trainer = make_trainer(model=tiny_model, reward=0.0, gradient_checkpointing=False)
    torch.manual_seed(0)
    inputs = rollout(trainer, addition_dataset)
    inputs["advantages"] = torch.randn(inputs["advantages"].shape)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop
    loss = trainer._compute_loss(trainer.model, inputs)

    # Independent log-probs: a plain forward pass and log_softmax, no TRL helper.
    input_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
    attention = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
    width = inputs["completion_ids"].size(1)
    logits = trainer.model(input_ids=input_ids, attention_mask=attention).logits[:, -width - 1 : -1]
    logps = logits.float().log_softmax(-1).gather(-1, inputs["completion_ids"].unsqueeze(-1)).squeeze(-1)
    entropies = -(logits.float().softmax(-1) * logits.float().log_softmax(-1)).sum(-1)
    completion = inputs["completion_mask"].bool()
    prefix = inputs["prefix_mask"]
    expected, _ = mixed_loss(
        logps,
        inputs["advantages"],
        completion,
        prefix,
        inputs["imitated_mask"].bool(),
        max_completion_length=trainer.max_completion_length,
        entropies=entropies,
        entropy_coef=0.001,
    )
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-6)
    assert inputs["imitated_mask"].sum() > 0 and (completion & ~prefix).sum() > 0


@pytest.mark.parametrize("reward", [0.0, 1.0])
def test_speculative_rollout_takes_the_same_decisions_as_staged(make_trainer, tiny_model, addition_dataset, reward):
    """Same guidance, prefixes and SFT marks as 'staged' in one generate call; the unpicked candidates are counted."""
    outs, trainers = {}, {}
    for mode in ("staged", "speculative"):
        trainers[mode] = make_trainer(out=mode, model=tiny_model, reward=reward, rollout=mode)
        outs[mode] = rollout(trainers[mode], addition_dataset)
    staged, speculative = outs["staged"], outs["speculative"]
    for key in ("imitated_mask", "advantages"):
        assert torch.equal(staged[key], speculative[key]), key
    prefix = {m: o["prefix_mask"].sum(1) for m, o in outs.items()}
    assert torch.equal(prefix["staged"], prefix["speculative"])
    stats = {m: t.rollout_stats for m, t in trainers.items()}
    assert stats["speculative"]["generation_calls"] == 1 < stats["staged"]["generation_calls"]
    assert stats["speculative"]["guided_samples"] == stats["staged"]["guided_samples"]
    # Paper schedule: stages 2-4 have both variants (2 + 1 + 1 samples each); one variant per stage is dropped,
    # the unguided ones with reward 0 and the guided ones with reward 1: 4 per prompt, 2 prompts.
    assert stats["speculative"]["discarded_samples"] == 2 * 4


def test_guided_stages_decode_only_what_the_budget_leaves(make_trainer, tiny_model, addition_dataset):
    """A stage whose requests all carry a prefix decodes at most budget − shortest prefix new tokens."""
    trainer = make_trainer(model=tiny_model, reward=0.0, max_completion_length=24, rollout="staged")
    seen = []
    generate = trainer._generate_single_turn

    def recording(prompt_ids, *args):
        seen.append(trainer.generation_config.max_new_tokens)
        return generate(prompt_ids, *args)

    trainer._generate_single_turn = recording
    out = rollout(trainer, addition_dataset)
    prefix = out["prefix_mask"].sum(1).view(2, 8)
    # Stage 1 unguided: the whole budget; stages 2 and 3 (all guided with reward 0): 24 − their shortest prefix.
    assert seen == [24, 24 - int(prefix[:, 4:6].min()), 24 - int(prefix[:, 6].min())]
    assert trainer.generation_config.max_new_tokens == 24  # restored
    assert int(out["completion_mask"].sum(1).max()) <= 24


def test_eval_mode_groups_advantages_by_num_generations_eval(make_trainer, tiny_model, tokenizer, addition_dataset):
    """Evaluation draws num_generations_eval samples per prompt: its advantages are centred on those groups."""

    def parity(completions, **kwargs):
        return [float(len(c) % 2) for c in completions]

    trainer = make_trainer(model=tiny_model, reward=parity, num_generations_eval=4, per_device_eval_batch_size=8)
    trainer.model.eval()
    rows = [addition_dataset[i] for i in range(2) for _ in range(4)]
    out = trainer._generate_and_score_completions(rows)
    texts = tokenizer.batch_decode(out["completion_ids"], skip_special_tokens=True)
    rewards = torch.tensor(parity(texts)).view(2, 4)
    assert 0 < rewards.sum() < 8  # mixed rewards: the grouping matters
    assert torch.allclose(out["advantages"].view(2, 4), rewards - rewards.mean(dim=1, keepdim=True))
    assert not (out["prefix_mask"]).any()  # evaluation is never guided


class FakeVLLM:
    """Stands in for TRL's vLLM client: writes "12" + EOS for every request, with sampling log-prob -1 per token."""

    def __init__(self, tokenizer, max_completion_length):
        self.ids = tokenizer("12", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        self.max_completion_length = max_completion_length
        self.requests = []

    def sync_weights(self):
        pass

    def generate(self, prompts, images, num_generations, profiler):
        self.requests.append(prompts)
        n = min(len(self.ids), self.max_completion_length)
        return None, [self.ids[:n] for _ in prompts], [[[-1.0]] * n for _ in prompts], None


def test_vllm_importance_sampling_ratio_leaves_expert_prefixes_out(
    make_trainer, tiny_model, tokenizer, addition_dataset
):
    """With the correction on, a guided sample's ratio covers only what the sampler generated: prefix tokens (never
    sampled by vLLM) have no sampling log-prob and are masked out; a full-trace sample's ratio is exactly 1."""
    trainer = make_trainer(model=tiny_model, reward=0.0, max_completion_length=24,
        vllm_importance_sampling_correction=True, vllm_importance_sampling_mode="sequence_truncate",
        vllm_importance_sampling_clip_max=1e9,
    )  # fmt: skip
    trainer.use_vllm, trainer.vllm_importance_sampling_correction = True, True
    trainer.vllm_generation, trainer._last_loaded_step = FakeVLLM(tokenizer, 24), 0
    out = rollout(trainer, addition_dataset)
    completion = out["completion_mask"].bool()
    generated = completion & ~out["prefix_mask"]
    prefix = out["prefix_mask"]
    assert prefix.any(dim=1).view(2, 8).tolist() == [[False] * 4 + [True] * 4] * 2  # stages 2-4 guided (reward 0)
    # The trainer's own log-probs of the completions, independently of TRL's helper.
    ids = torch.cat([out["prompt_ids"], out["completion_ids"]], dim=1)
    attention = torch.cat([out["prompt_mask"], out["completion_mask"]], dim=1)
    width = out["completion_ids"].size(1)
    with torch.no_grad():
        logits = trainer.model(input_ids=ids, attention_mask=attention).logits[:, -width - 1 : -1]
    old = logits.float().log_softmax(-1).gather(-1, out["completion_ids"].unsqueeze(-1)).squeeze(-1)
    expected = torch.exp(((old + 1.0) * generated).sum(dim=1, keepdim=True))  # sampling log-prob is -1
    torch.testing.assert_close(out["importance_sampling_ratio"], expected, rtol=1e-4, atol=1e-5)
    full_trace = ~generated.any(dim=1)
    assert full_trace.sum() == 2 and torch.all(out["importance_sampling_ratio"][full_trace] == 1.0)


def test_vllm_logprobs_are_returned_even_when_nothing_was_generated(addition_dataset):
    """TRL needs the log-prob list under vLLM; a batch of full-trace samples alone has none of its own."""
    from trapo.rollout import RolloutBatch, Sample

    batch = RolloutBatch(groups=[[Sample(group=0, stage=3, prefix=[5, 6, 1])]], guided_per_stage=[0, 0, 0, 1])
    output = TRAPOTrainer._rollout_output(batch, [[7, 8]], with_logprobs=True)
    assert output["logprobs"] == [[None, None, None]] and output["env_mask"] == [[0, 0, 0]]
    assert TRAPOTrainer._rollout_output(batch, [[7, 8]])["logprobs"] is None


def test_the_default_rollout_is_auto_and_the_run_folder_records_what_it_ran(make_trainer, tiny_model, tmp_path):
    import yaml

    trainer = make_trainer(model=tiny_model, max_steps=1)
    assert trainer.args.rollout == "auto" and trainer.rollout_kind == "speculative"
    trainer.train()
    assert yaml.safe_load((tmp_path / "out" / "trapo_config.yaml").read_text())["rollout"] == "speculative"
    trainer.args.rollout = "staged"
    assert trainer.rollout_kind == "staged"


def test_the_headline_reward_is_the_policys_own(make_trainer, tiny_model):
    """A model that solves nothing must not show a positive `reward` because the expert samples score."""

    def expert_only(completions, **kwargs):  # only the full expert trace (which starts with it) scores
        return [1.0 if c.startswith(kwargs["expert"][i][1][:5]) else 0.0 for i, c in enumerate(completions)]

    trainer = make_trainer(model=tiny_model, reward=expert_only, max_steps=1, max_completion_length=32)
    trainer.train()
    (log,) = [h for h in trainer.state.log_history if "reward" in h]
    assert log["reward"] == 0.0  # the policy's own samples: nothing solved
    assert log["trapo/reward_with_guidance"] == pytest.approx(1 / 8)  # one expert sample of 8 per prompt
    assert log["trapo/reward_unguided"] == 0.0


def test_logged_completions_mark_where_the_expert_prefix_ends(make_trainer, tiny_model, addition_dataset):
    trainer = make_trainer(model=tiny_model, reward=0.0, log_completions=True, max_completion_length=32)
    rollout(trainer, addition_dataset, num_prompts=1)
    logged = list(trainer._logs["completion"])[-8:]
    assert not any(TRAPOTrainer.PREFIX_END_MARK in c for c in logged[:4])  # stage 1: unguided
    assert all(TRAPOTrainer.PREFIX_END_MARK in c for c in logged[4:])  # stages 2-4: guided (reward 0)
    assert logged[4].startswith("add 1 and 2\n\n" + TRAPOTrainer.PREFIX_END_MARK)


def test_the_run_folder_gets_the_resolved_config(make_trainer, tmp_path, tiny_model, addition_dataset):
    import yaml

    trainer = make_trainer(model=tiny_model, reward=0.0, max_steps=1, method="luffy")
    trainer.train()
    saved = yaml.safe_load((tmp_path / "out" / "trapo_config.yaml").read_text())
    assert saved["config"]["method"] == "luffy" and saved["config"]["prefix_loss"] == "luffy"  # preset filled in
    assert saved["config"]["second_trace_for_full"] is False and saved["config"]["alpha"] == 0.1
    assert saved["reward_functions"] == ["constant_0"] and saved["dataset"]["rows"] == len(addition_dataset)
    assert saved["rollout"] == "speculative"


# ---------------------------------------------------------------- settings honoured


@pytest.mark.parametrize(
    "several", [{"num_iterations": 2}, {"steps_per_generation": 2}], ids=["iterations", "minibatches"]
)
def test_several_steps_per_rollout_batch_train_on_a_real_clipped_ratio(make_trainer, monkeypatch, several):
    """Two optimizer steps per rollout batch, as two passes over it (num_iterations=2) or one pass in two halves
    (steps_per_generation=2: LUFFY's and ReLIFT's two mini-batches): the second step sees old log-probs (ρ ≠ 1 after
    the first update) and the clip epsilon."""
    import trapo.trainer as module

    seen = []

    def recording(logps, *args, **kwargs):
        old = kwargs["old_logps"]
        ratio = None if old is None else (logps.detach() - old).exp()
        seen.append((ratio, kwargs["clip_eps"]))
        return mixed_loss(logps, *args, **kwargs)

    monkeypatch.setattr(module, "mixed_loss", recording)

    def parity(completions, **kwargs):
        return [float(len(c) % 2) for c in completions]

    trainer = make_trainer(reward=parity, epsilon=0.2, max_steps=2, learning_rate=0.05, **several)
    assert trainer.args.updates_per_rollout == 2
    trainer.train()
    assert trainer.state.global_step == 2 and len(seen) == 2
    assert all(clip == (0.2, 0.2) for _, clip in seen)
    (first, _), (second, _) = seen
    assert first is not None and torch.allclose(first, torch.ones_like(first))  # old = current before any update
    assert (second - 1).abs().max() > 1e-3  # the second pass trains on the same samples with a moved policy


def test_truncated_samples_lose_their_prefix_loss_with_mask_truncated_completions(make_trainer, addition_dataset):
    trainer = make_trainer(mask_truncated_completions=True, max_completion_length=24)
    out = rollout(trainer, addition_dataset)
    eos = trainer.eos_token_ids[0]
    lengths = out["completion_mask"].sum(1)
    truncated = torch.tensor(
        [ids[int(n) - 1] != eos if n else True for ids, n in zip(out["completion_ids"], lengths, strict=True)]
    )
    assert truncated.any() and (~truncated).any()
    for key in ("prefix_mask", "imitated_mask"):
        assert not out[key][truncated].any(), key
    assert out["prefix_mask"][~truncated].any()  # the full-trace samples (EOS) keep theirs


def test_the_completions_table_shows_the_advantages_trained_on(make_trainer, addition_dataset):
    def guided_only(completions, **kwargs):  # differs from what TRL would compute only through the grouping
        return [float(len(c) % 3 == 0) for c in completions]

    trainer = make_trainer(reward=guided_only, log_completions=True)
    out = rollout(trainer, addition_dataset)
    logged = list(trainer._logs["advantages"])[-len(out["advantages"]) :]
    assert logged == pytest.approx(out["advantages"].tolist())


def test_a_mixture_of_experts_model_gets_its_load_balancing_loss(make_trainer, tokenizer, monkeypatch):
    from transformers import MixtralConfig, MixtralForCausalLM

    config = MixtralConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, output_router_logits=True,
        router_aux_loss_coef=0.02, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    trainer = make_trainer(model=MixtralForCausalLM(config), max_steps=1)
    assert trainer.aux_loss_enabled and trainer.router_aux_loss_coef == 0.02
    trainer.train()
    (log,) = [h for h in trainer.state.log_history if "trapo/aux_loss" in h]
    assert log["trapo/aux_loss"] > 0


# ---------------------------------------------------------------- checks that cannot be skipped


def test_input_checks_run_on_the_tokenizer_trl_loads_from_the_model_name(tmp_path, tokenizer, caplog):
    """No processing_class: TRL loads the tokenizer from the model folder, and the checks still run on it."""
    from datasets import Dataset

    from trapo.tasks.tiny_model import build_model
    from trapo.trainer import TRAPOTrainer

    build_model(tokenizer, hidden_size=32, num_layers=1, num_heads=2).save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    rows = Dataset.from_list([{**r, "expert": ["x" * 40, "y"]} for r in addition_rows(8)])
    with caplog.at_level("WARNING", logger="trapo.data.validation"):
        args = tiny_config(tmp_path, max_completion_length=16)
        TRAPOTrainer(model=str(tmp_path / "m"), reward_funcs=constant_reward(0), args=args, train_dataset=rows)
    assert "8 of 8 training rows have an expert trace longer than max_completion_length" in caplog.text


def test_prompts_plus_the_budget_must_fit_the_models_context(make_trainer, tokenizer):
    from trapo.tasks.tiny_model import build_model

    small = build_model(tokenizer, hidden_size=32, num_layers=1, num_heads=2, max_positions=18)
    with pytest.raises(ValueError, match=r"plus max_completion_length \(16\) is .* past the model's context of 18"):
        make_trainer(model=small, max_completion_length=16)
    make_trainer(model=small, out="fits", max_completion_length=12)  # the longest prompt is 4 tokens


def test_datasets_with_images_are_refused(make_trainer):
    rows = [{**r, "image": None} for r in addition_rows(4)]
    with pytest.raises(ValueError, match=r"has \['image'\]: TRAPOTrainer's rollout is text-only"):
        make_trainer(rows=rows)


def test_a_reward_that_cannot_score_the_experts_own_traces_is_named_before_training(make_trainer, caplog):
    with caplog.at_level("WARNING", logger="trapo.scoring"):
        make_trainer(reward=0.0, max_steps=1).train()
    assert "'constant_0' give the expert's own traces a reward above 0 on only 0 of 16 sampled rows" in caplog.text
    caplog.clear()

    def answer_in_text(completions, answer, **kwargs):
        return [float(a in c) for c, a in zip(completions, answer, strict=True)]

    with caplog.at_level("WARNING", logger="trapo.scoring"):
        make_trainer(reward=answer_in_text, out="ok", max_steps=1).train()
    assert "expert's own traces" not in caplog.text


# ---------------------------------------------------------------- the pipelined rollout on continuous batching


def test_the_pipelined_rollout_trains_through_continuous_batching_and_discards_nothing(make_trainer):
    def parity(completions, **kwargs):
        return [float(len(c) % 2) for c in completions]

    trainer = make_trainer(reward=parity, rollout="pipelined", max_steps=2)
    assert trainer.rollout_kind == "pipelined"
    trainer.train()
    stats = trainer.rollout_stats
    full_traces = stats["samples"] - stats["generation_requests"]  # the stage-4 samples that write nothing
    assert stats["generation_requests"] > 0 and 0 <= full_traces <= stats["prompts"]
    assert stats["discarded_tokens"] == 0 and "generation_calls" not in stats
    assert [h["trapo/discarded_tokens"] for h in trainer.state.log_history if "trapo/discarded_tokens" in h] == [0, 0]


def test_continuous_batching_samples_replayed_through_the_staged_rollout_give_the_same_batch(
    make_trainer, addition_dataset
):
    """Decision equivalence on a real engine: the staged scheduler, fed the samples continuous batching wrote for
    each context, takes the same decisions and builds the same batch as the pipelined one did."""
    from trapo.core import PAPER_SCHEDULE
    from trapo.engines import request_engine

    def parity(completions, **kwargs):
        return [float(len(c) % 2) for c in completions]

    trainer = make_trainer(reward=parity, rollout="pipelined", max_completion_length=24)
    rows = [addition_dataset[i] for i in range(4)]
    prompt_ids = [list(ids) for ids in trainer._tokenize_prompts([r["prompt"] for r in rows])[0]]
    with request_engine(trainer, 32, 40) as engine:
        pipelined = trainer._make_rollout(PAPER_SCHEDULE, engine, "pipelined").run(rows, prompt_ids)
    written: dict[tuple, list] = {}
    for x in pipelined.samples:
        if x.continuation:
            written.setdefault((tuple(prompt_ids[x.group]), tuple(x.prefix)), []).append(x.continuation)

    def replay(contexts, max_new):
        return [written[next(k for k in written if list(k[0]) + list(k[1]) == c)].pop(0) for c in contexts], None

    staged = trainer._make_rollout(PAPER_SCHEDULE, replay, "staged").run(rows, prompt_ids)

    def key(batch):
        return [(x.group, x.stage, x.prefix, x.continuation, x.reward) for x in batch.samples]

    assert key(staged) == key(pipelined) and staged.guided_per_stage == pipelined.guided_per_stage
    assert 0 < sum(pipelined.guided_per_stage) < 3 * len(rows)  # some decisions each way: the test can tell
