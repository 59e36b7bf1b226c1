"""Is the base model in the regime TRAPO is for? pass@k on a tier alone and with an expert prefix.

TRAPO helps where the policy's own samples fail but a partial expert solution gets it over the line: on the hard
tiers, pass@k alone should be near 0 and pass@k with a 50% prefix well above it. `guided_pass_at_k` measures both
exactly as the trainer would guide (the prefix cut at a paragraph boundary by `trapo.core.cut_prefix`, the whole
response scored by the task's verifier); `regime_report` measures every tier; `in_regime` states the criterion the
base builder stops on.
"""

from __future__ import annotations

import torch

from trapo.core import cut_prefix
from trapo.tasks.chains import Expert, Problem, verify

RATIOS = (0.0, 0.25, 0.5)  # alone, and the paper's stage-2 and stage-3 prefixes


@torch.no_grad()
def guided_pass_at_k(
    model,
    tokenizer,
    problems: list[Problem],
    ratio: float,
    k: int = 8,
    max_new_tokens: int = 72,
    greedy: bool = False,
    seed: int = 0,
    expert: Expert | None = None,
) -> dict[str, float]:
    """pass@k and per-sample success of ``model`` on ``problems`` when shown ``ratio`` of the expert solution.

    Samples at temperature 1 (``greedy``: one greedy sample each, so pass@k is accuracy). The prefix is cut from
    the derivation ``expert`` writes (by default the base's own convention); the response scored is prefix +
    continuation, as in training.
    """
    was_training = model.training
    model.eval()
    boundary = {tokenizer.convert_tokens_to_ids("\n\n")}
    contexts, prefixes = [], []
    for problem in problems:
        prompt = tokenizer(problem.prompt, add_special_tokens=False)["input_ids"]
        solution = tokenizer((expert or Expert()).solution(problem), add_special_tokens=False)["input_ids"]
        prefix = solution[: cut_prefix(solution, ratio, boundary)] if ratio > 0 else []
        contexts.append(prompt + prefix)
        prefixes.append(prefix)
    repeats = 1 if greedy else k
    batch = [c for c in contexts for _ in range(repeats)]
    width = max(map(len, batch))
    device = next(model.parameters()).device
    ids = torch.full((len(batch), width), tokenizer.pad_token_id, device=device)
    mask = torch.zeros_like(ids)
    for i, c in enumerate(batch):  # left padding
        ids[i, width - len(c) :] = torch.tensor(c, device=device)
        mask[i, width - len(c) :] = 1
    sampling = {"do_sample": False} if greedy else {"do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0}
    torch.manual_seed(seed)
    out = model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=max_new_tokens,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **sampling,
    )
    texts = tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
    model.train(was_training)
    solved = torch.tensor(
        [verify(tokenizer.decode(prefixes[i // repeats]) + t, problems[i // repeats]) for i, t in enumerate(texts)],
        dtype=torch.float32,
    ).view(len(problems), repeats)
    return {"pass": solved.max(dim=1).values.mean().item(), "per_sample": solved.mean().item()}


def regime_report(
    model,
    tokenizer,
    problems_by_tier: dict[int, list[Problem]],
    k: int = 8,
    seed: int = 0,
    expert: Expert | None = None,
) -> dict:
    """``{tier: {"alone": pass@k, "prefix_25": ..., "prefix_50": ...}}`` (each with per-sample success too), the
    prefixes cut from the derivation ``expert`` writes."""
    report = {}
    for tier, problems in sorted(problems_by_tier.items()):
        report[tier] = {
            _name(ratio): guided_pass_at_k(model, tokenizer, problems, ratio, k=k, seed=seed, expert=expert)
            for ratio in RATIOS
        }
    return report


def in_regime(report: dict, hard_tiers, max_alone: float = 0.1, min_guided: float = 0.3) -> bool:
    """The regime TRAPO is for, on every hard tier: pass@k alone < ``max_alone``, with a 50% prefix ≥ ``min_guided``."""
    return all(
        report[t]["alone"]["pass"] < max_alone and report[t]["prefix_50"]["pass"] >= min_guided for t in hard_tiers
    )


def format_regime(report: dict) -> str:
    """One line per tier: pass@k alone / with a 25% prefix / with a 50% prefix."""
    lines = []
    for tier, cells in report.items():
        values = " / ".join(f"{cells[_name(r)]['pass']:.2f}" for r in RATIOS)
        lines.append(f"  tier {tier}: pass@8 alone / 25% prefix / 50% prefix = {values}")
    return "\n".join(lines)


def _name(ratio: float) -> str:
    return "alone" if ratio == 0 else f"prefix_{round(ratio * 100)}"
