"""A tiny character-level tokenizer and a randomly initialised Llama model, built locally (no downloads).

Used by the tests and the demo. Characters are single tokens, except the paragraph break "\\n\\n", which is one
token so that prefix cutting at paragraph boundaries is exercised exactly as with a real BPE tokenizer.

Why Llama and not Qwen2 (the paper's family): transformers 5 loads the tokenizer of a saved ``qwen2`` checkpoint
as ``Qwen2Tokenizer`` whatever ``tokenizer_config.json`` says, which rebuilds a byte-level BPE pipeline and
silently drops this tokenizer's whitespace tokens. A ``llama`` checkpoint honours the saved ``TokenizersBackend``,
so ``AutoTokenizer.from_pretrained`` round-trips (``tests/test_tasks_chains.py`` checks it).
"""

from __future__ import annotations

import string

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<pad>", "<eos>", "<unk>"]
PARAGRAPH = "\n\n"
CHARS = string.digits + string.ascii_letters + " +-*/=()[]{}<>.,:;?!'\"_^\\|%$#&@~\n"


def build_tokenizer(extra_chars: str = "", vocab_size: int | None = None) -> PreTrainedTokenizerFast:
    """Character tokenizer: one id per character of `CHARS` (+ ``extra_chars``), plus "\\n\\n" and specials;
    ``vocab_size`` pads it with unused tokens ``<unused_N>`` (to shape a random model like a real one)."""
    chars = list(dict.fromkeys(CHARS + extra_chars))
    tokens = [*SPECIAL_TOKENS, PARAGRAPH, *chars]
    tokens += [f"<unused_{i}>" for i in range(max(0, (vocab_size or 0) - len(tokens)))]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"\n\n|[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>", padding_side="left"
    )


def build_model(
    tokenizer: PreTrainedTokenizerFast,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    max_positions: int = 512,
    seed: int = 0,
) -> LlamaForCausalLM:
    """A randomly initialised Llama decoder sized for CPU, seeded."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 4,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = None
    return model
