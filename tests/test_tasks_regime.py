"""`trapo.tasks.regime` (pass@k alone and with an expert prefix) and the demo base's regime.

The fast tests use an oracle "model" that can only finish a chain once few enough digits are left, so the expected
pass@k with and without a prefix is known exactly. The slow test builds the real demo base (about 2-3 minutes) and
checks, on held-out problems, that it is in the regime the demo is built on.
"""

from __future__ import annotations

import pytest
import torch

from trapo.tasks.chains import HARD_TIERS, WARM_TIERS, Expert, Problem, make_problems
from trapo.tasks.regime import format_regime, guided_pass_at_k, in_regime, regime_report
from trapo.tasks.tiny_model import build_tokenizer


class ShortChainOracle(torch.nn.Module):
    """Writes the correct rest of the derivation when the last line shows at most ``reach`` digits, else junk."""

    def __init__(self, tokenizer, reach: int):
        super().__init__()
        self.tokenizer, self.reach = tokenizer, reach
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def generate(self, input_ids, attention_mask, max_new_tokens, **kwargs):
        rows = []
        for ids, mask in zip(input_ids, attention_mask, strict=True):
            text = self.tokenizer.decode(ids[mask.bool()])
            prompt, _, shown = text.partition("=")
            problem = Problem(tuple(int(c) for c in prompt.lstrip(".")))
            lines = [line for line in shown.split("\n\n") if line]
            digits = tuple(int(c) for c in lines[-1].lstrip(".")) if lines else problem.digits
            wrong = (problem.answer + 1) % 10
            if len(digits) > self.reach:
                rest = f"......{wrong}\n\nanswer {wrong}"
            elif len(digits) == 1:
                rest = f"answer {digits[0]}"
            else:  # its own (left-to-right) derivation from the last line shown, whoever wrote that line
                rest = Problem(digits).solution()
            new = self.tokenizer(rest, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]
            rows.append(ids.tolist() + new[:max_new_tokens])
        width = max(map(len, rows))
        pad = self.tokenizer.pad_token_id
        return torch.tensor([r + [pad] * (width - len(r)) for r in rows])


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def test_pass_at_k_alone_and_with_prefixes_follows_what_the_prefix_leaves(tokenizer):
    oracle = ShortChainOracle(tokenizer, reach=3)  # finishes from 3 digits left
    six = make_problems(4, (6,), "eval")  # 5 lines; 25% shows 2 lines (4 digits left), 50% shows 4 lines (2 left)
    three = make_problems(4, (3,), "eval")
    assert guided_pass_at_k(oracle, tokenizer, three, 0.0)["pass"] == 1.0
    assert guided_pass_at_k(oracle, tokenizer, six, 0.0) == {"pass": 0.0, "per_sample": 0.0}
    assert guided_pass_at_k(oracle, tokenizer, six, 0.25)["pass"] == 0.0
    assert guided_pass_at_k(oracle, tokenizer, six, 0.5) == {"pass": 1.0, "per_sample": 1.0}
    assert guided_pass_at_k(oracle, tokenizer, six, 0.5, greedy=True)["pass"] == 1.0


def test_prefixes_follow_the_expert_order_and_a_mixed_derivation_counts(tokenizer):
    """An expert reducing from the right shows other lines than the policy's own order; the oracle finishes from
    them in its own order, and that mixed derivation is correct."""
    oracle = RecordingOracle(tokenizer, reach=3)
    six = make_problems(4, (6,), "eval")
    assert guided_pass_at_k(oracle, tokenizer, six, 0.5, expert=Expert("right")) == {"pass": 1.0, "per_sample": 1.0}
    shown = oracle.shown[0].split("=", 1)[1]  # what the model was shown after the prompt: the expert's lines
    assert shown.startswith(six[0].steps("right")[0]) and not shown.startswith(six[0].steps("left")[0])


class RecordingOracle(ShortChainOracle):
    """`ShortChainOracle` that keeps the text of the first context of every generate call."""

    def __init__(self, tokenizer, reach: int):
        super().__init__(tokenizer, reach)
        self.shown: list[str] = []

    def generate(self, input_ids, attention_mask, max_new_tokens, **kwargs):
        self.shown.append(self.tokenizer.decode(input_ids[0][attention_mask[0].bool()]))
        return super().generate(input_ids, attention_mask, max_new_tokens, **kwargs)


def test_regime_report_and_criterion(tokenizer):
    report = regime_report(ShortChainOracle(tokenizer, reach=3), tokenizer, {3: make_problems(2, (3,), "eval"),
                           6: make_problems(2, (6,), "eval")})  # fmt: skip
    assert report[3]["alone"]["pass"] == 1.0 and report[6]["alone"]["pass"] == 0.0
    assert report[6]["prefix_50"]["pass"] == 1.0
    assert in_regime(report, [6]) and not in_regime(report, [3])  # tier 3 is solved alone: not hard
    assert "tier 6: pass@8 alone / 25% prefix / 50% prefix = 0.00 / 0.00 / 1.00" in format_regime(report)
    assert not in_regime(regime_report(ShortChainOracle(tokenizer, reach=1), tokenizer,
                                       {6: make_problems(2, (6,), "eval")}), [6])  # fmt: skip


@pytest.mark.slow
@pytest.mark.demo_base
def test_the_demo_base_fails_hard_tiers_alone_and_solves_them_with_half_the_expert_trace():
    """The premise of `trapo demo`, checked on held-out problems the base builder never looked at, on the base the
    demo and the vLLM lane use: built into the shared cache ($TRAPO_CACHE) when absent, so CI builds it once.

    Its own lane (`make test-demo-base`, every CI run): the build is the one piece of work that cannot be shared
    between `make test`'s two workers, and on one thread beside them it alone took 160 of that suite's 270 s."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trapo.tasks.base import BaseSpec, base_model_path, base_record

    path = base_model_path(BaseSpec(), log=lambda message: None)
    assert base_record(path)["in_regime"]
    model, tok = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    assert guided_pass_at_k(model, tok, make_problems(16, (min(WARM_TIERS),), "eval"), 0.0)["pass"] >= 0.3
    report = regime_report(model, tok, {t: make_problems(16, (t,), "eval") for t in HARD_TIERS})
    for tier in HARD_TIERS:
        assert report[tier]["alone"]["pass"] <= 0.1, report
        assert report[tier]["prefix_50"]["pass"] >= 0.3, report


def test_the_base_is_built_once_and_found_in_the_cache_afterwards(tmp_path):
    from trapo.tasks.base import BaseSpec, base_model_path

    spec = BaseSpec(min_steps=2, max_steps=2, check_every=2, check_regime=False)
    said = []
    first = base_model_path(spec, cache_dir=str(tmp_path), log=said.append)
    assert not any("cached at" in s for s in said)
    said.clear()
    assert base_model_path(spec, cache_dir=str(tmp_path), log=said.append) == first
    assert said == [f"base model: cached at {first}"]
    assert BaseSpec(seed=1).key() != BaseSpec().key()  # another spec, another cache entry
