"""Text conventions shared by data preparation, training and evaluation.

`LUFFY_SYSTEM_PROMPT` is the system message of every prompt in the LUFFY/verl benchmark and training files: using
the same one when preparing new training rows keeps training and evaluation prompts identical.
"""

from __future__ import annotations

LUFFY_SYSTEM_PROMPT = (
    "Your task is to follow a systematic, thorough reasoning process before providing the final solution. This "
    "involves analyzing, summarizing, exploring, reassessing, and refining your thought process through multiple "
    "iterations. Structure your response into two sections: Thought and Solution. In the Thought section, present your "
    'reasoning using the format: "<think>\n {thoughts} </think>\n". Each thought should include detailed analysis, '
    'brainstorming, verification, and refinement of ideas. After "</think>\n," in the Solution section, provide the '
    "final, logical, and accurate answer, clearly derived from the exploration in the Thought section. If applicable, "
    "include the answer in \\boxed{} for closed-form results like multiple choices or mathematical solutions."
)
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"

# TRAPO's released training prompt (`rl_dataset_with_target.py`): the dataset's system message is ignored, the
# problem is the last user message, and an instruction is appended. Rendered with
# configs/chat_templates/qwen_plain.jinja it is, byte for byte, the released code's string.
TRAPO_SYSTEM_PROMPT = "You are a helpful assistant."
TRAPO_INSTRUCTION = "\nPlease reason step by step, and put your final answer within \\boxed{}."
# The released evaluation's `simplerl` template (TRAPO eval_scripts/generate_vllm.py:76-81, a plain string, not an
# f-string): the same as TRAPO's training prompt but for two bytes, no space before \boxed and doubled braces.
SIMPLERL_INSTRUCTION = "\nPlease reason step by step, and put your final answer within\\boxed{{}}."
PROMPT_STYLES = ("dataset", "trapo", "simplerl")


def think_content(text: str) -> str | None:
    """The reasoning inside ``<think>…</think>`` (stripped), or None when the block is missing or never closed.

    A text without the opening tag but with a closing one counts as starting inside the block (chat templates that
    put ``<think>`` in the generation prompt produce such completions).
    """
    end = text.find(THINK_CLOSE)
    if end < 0:
        return None
    start = text.find(THINK_OPEN, 0, end)
    start = 0 if start < 0 else start + len(THINK_OPEN)
    content = text[start:end].strip()
    return content or None


def without_think_open(text: str) -> str:
    """``text`` stripped, without a leading ``<think>`` tag (the rest, ``</think>`` and the solution, is kept)."""
    text = text.strip()
    return text[len(THINK_OPEN) :].lstrip("\n") if text.startswith(THINK_OPEN) else text


def after_think(text: str) -> str:
    """What follows the last ``</think>`` (the solution part), or the whole text when there is no closing tag."""
    end = text.rfind(THINK_CLOSE)
    return text if end < 0 else text[end + len(THINK_CLOSE) :]


def user_message(prompt) -> str:
    """The last user message of a chat prompt, or the prompt itself when it is a string."""
    if isinstance(prompt, str):
        return prompt
    for message in reversed(list(prompt)):
        if message.get("role") == "user":
            return message.get("content") or ""
    return ""


def chat_prompt(problem: str, system_prompt: str | None = LUFFY_SYSTEM_PROMPT) -> list[dict]:
    """A chat prompt for ``problem``: the system message (when one is given) and the problem as the user turn."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return [*messages, {"role": "user", "content": problem}]


def trapo_prompt(problem: str) -> list[dict]:
    """TRAPO's released prompt for ``problem``: "You are a helpful assistant." and the problem + the boxed-answer
    instruction (docs/method.md, "Prompt")."""
    return [
        {"role": "system", "content": TRAPO_SYSTEM_PROMPT},
        {"role": "user", "content": problem + TRAPO_INSTRUCTION},
    ]


def simplerl_prompt(problem: str) -> list[dict]:
    """The released evaluation's ``simplerl`` prompt for ``problem`` (SFT-style and base models are evaluated with it):
    TRAPO's, with `SIMPLERL_INSTRUCTION`."""
    return [
        {"role": "system", "content": TRAPO_SYSTEM_PROMPT},
        {"role": "user", "content": problem + SIMPLERL_INSTRUCTION},
    ]


def restyle_prompt(prompt, style: str):
    """``prompt`` as the dataset has it (``"dataset"``), or rebuilt from its last user message (``"trapo"``, or the
    released evaluation's ``"simplerl"``)."""
    if style == "dataset":
        return prompt
    if style == "trapo":
        return trapo_prompt(user_message(prompt))
    if style == "simplerl":
        return simplerl_prompt(user_message(prompt))
    raise ValueError(f"prompt_style must be one of {PROMPT_STYLES}, got {style!r}")
