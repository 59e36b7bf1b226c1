"""Loading a model for training or evaluation, with the context extension applied at load time.

Qwen2.5-Math-7B ships a 4k context (rope θ 10000, 4096 positions); the recipe needs 1024 + 8192 tokens, so it
extends it the way LUFFY's "16k-think" model does: rope θ 40000, 16384 positions. Passing the values as
``from_pretrained`` kwargs is not enough: transformers 5 silently ignores a ``rope_theta`` kwarg (it lives in
``rope_parameters`` now), and vLLM builds its own copy of the model from the files on disk. So the override writes a
*view* of the model folder: the original files symlinked, ``config.json`` patched (both the old top-level
``rope_theta`` and the new ``rope_parameters``), and the result is checked by reading it back. Everything that loads
from that folder (the trainer, TRL's vLLM engine, ``trapo eval``) sees the same context; nobody edits a
downloaded ``config.json``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def resolve_model_dir(name_or_path: str, revision: str | None = None) -> Path:
    """A local folder as it is, else the Hub snapshot (downloaded once into the Hugging Face cache)."""
    if os.path.isdir(name_or_path):
        return Path(name_or_path)
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(name_or_path, revision=revision))


def _rope_theta(config) -> float | None:
    params = getattr(config, "rope_parameters", None)
    if isinstance(params, dict) and "rope_theta" in params:
        return float(params["rope_theta"])
    theta = getattr(config, "rope_theta", None)
    return None if theta is None else float(theta)


def with_context_overrides(
    name_or_path: str,
    out_dir: str | os.PathLike,
    rope_theta: float | None = None,
    max_position_embeddings: int | None = None,
    revision: str | None = None,
) -> str:
    """The path to load: ``name_or_path`` itself without overrides, else ``out_dir`` holding the patched view."""
    if rope_theta is None and max_position_embeddings is None:
        return name_or_path
    source = resolve_model_dir(name_or_path, revision).resolve()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = json.loads((source / "config.json").read_text())
    if rope_theta is not None:
        config["rope_theta"] = float(rope_theta)
        if isinstance(config.get("rope_parameters"), dict):
            config["rope_parameters"]["rope_theta"] = float(rope_theta)
    if max_position_embeddings is not None:
        config["max_position_embeddings"] = int(max_position_embeddings)
    for item in source.iterdir():
        if item.name == "config.json":
            continue
        link = out / item.name
        if link.is_symlink() and link.resolve() == item.resolve():
            continue
        if link.is_symlink() or link.exists():
            link.unlink()
        try:
            link.symlink_to(item.resolve())
        except FileExistsError:  # another process of the same run made it meanwhile
            pass
    text = json.dumps(config, indent=2)
    target = out / "config.json"
    if not target.is_file() or target.read_text() != text:  # other processes find it done and only check it
        tmp = out / f"config.json.{os.getpid()}.tmp"
        tmp.write_text(text)
        os.replace(tmp, target)
    _check_overrides(out, rope_theta, max_position_embeddings)
    return str(out)


def _check_overrides(path: Path, rope_theta: float | None, max_position_embeddings: int | None) -> None:
    from transformers import AutoConfig

    loaded = AutoConfig.from_pretrained(path)
    if rope_theta is not None and _rope_theta(loaded) != float(rope_theta):
        raise RuntimeError(f"{path}: rope theta reads back as {_rope_theta(loaded)}, not {rope_theta}")
    if max_position_embeddings is not None and loaded.max_position_embeddings != max_position_embeddings:
        raise RuntimeError(f"{path}: max_position_embeddings reads back as {loaded.max_position_embeddings}")


def load_tokenizer(path: str, trust_remote_code: bool = False, chat_template_file: str | None = None):
    """``AutoTokenizer`` from ``path``; ``chat_template_file`` replaces its chat template.

    The template is set on the tokenizer, which the trainers save with every checkpoint, so the trained model carries
    the template it was trained with and ``trapo eval`` uses it by default.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if chat_template_file:
        tokenizer.chat_template = Path(chat_template_file).read_text()
    return tokenizer


def load_model(path: str, dtype: str = "auto", attn_implementation: str | None = None, trust_remote_code: bool = False):
    """``AutoModelForCausalLM`` from ``path`` in ``dtype`` (``auto``: the checkpoint's)."""
    import torch
    from transformers import AutoModelForCausalLM

    kwargs = {"dtype": dtype if dtype == "auto" else getattr(torch, dtype), "trust_remote_code": trust_remote_code}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    return AutoModelForCausalLM.from_pretrained(path, **kwargs)


def load_model_and_tokenizer(
    path: str,
    dtype: str = "auto",
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
    chat_template_file: str | None = None,
):
    """`load_model` and `load_tokenizer` from one path."""
    tokenizer = load_tokenizer(path, trust_remote_code, chat_template_file)
    return load_model(path, dtype, attn_implementation, trust_remote_code), tokenizer
