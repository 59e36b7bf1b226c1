"""Checks the CLI runs before anything heavy loads, so a user's mistake is one line naming what and how to fix it
(docs/errors.md), not a traceback minutes into loading a model."""

from __future__ import annotations

import importlib
import os
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from types import UnionType


class RewardError(RuntimeError):
    """A reward function that cannot be used: not importable, or failing or unscorable run after run."""


def import_reward(spec: str, search: Iterable[str | os.PathLike] = ()):
    """The callable ``module:function`` names, looked up in ``search`` folders (e.g. the config's), the working
    directory and the installed packages."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"reward {spec!r}: expected module:function, e.g. my_rewards:exact_match")
    paths = [str(Path(p).resolve()) for p in (*search, os.getcwd())]
    for path in reversed(paths):
        if path not in sys.path:
            sys.path.insert(0, path)
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise RewardError(
            f"reward {spec!r}: cannot import module {module_name!r} ({error}); looked in {', '.join(paths)} and the "
            "installed packages. Put the file next to the config or in the working directory"
        ) from error
    func = getattr(module, attr, None)
    if not callable(func):
        raise RewardError(f"reward {spec!r}: module {module_name!r} has no function {attr!r}")
    return func


def check_model_path(name_or_path: str) -> None:
    """A local folder must exist and hold a config; a Hub id (``org/name``) is left to the Hub."""
    path = Path(name_or_path).expanduser()
    local = path.exists() or name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") != 1
    if not local:
        return
    if not path.is_dir():
        raise FileNotFoundError(f"model {name_or_path!r}: no such folder (a Hub model is named org/name)")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"model {name_or_path!r}: the folder has no config.json, so it is not a saved model")


def check_writable(folder: str | os.PathLike) -> None:
    """``folder`` can be created and written to (checked before training, not at the first checkpoint)."""
    path = Path(folder)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path):
            pass
    except OSError as error:
        raise ValueError(
            f"output_dir {str(path)!r} is not writable ({error.strerror or error}); choose another"
        ) from error


def check_hub_access(what: str) -> None:
    """``what`` needs to write to the Hugging Face Hub: refuse now, not after the model has loaded, when the Hub is
    switched off or no token is set."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        raise ValueError(f"{what} needs the Hugging Face Hub, but HF_HUB_OFFLINE is set; unset it or drop {what}")
    from huggingface_hub import get_token

    if get_token() is None:
        raise ValueError(f"{what} needs a Hugging Face token: run `hf auth login` or set HF_TOKEN, or drop {what}")


def check_chat_template(tokenizer, prompt) -> None:
    """Chat-message prompts need a chat template to become text."""
    from trl.data_utils import is_conversational

    if is_conversational({"prompt": prompt}) and not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            "the prompts are chat messages but the tokenizer has no chat template: set chat_template_file in the "
            "config (e.g. configs/chat_templates/qwen_plain.jinja), or give plain-text prompts"
        )


def check_types(config: dict, classes, prefix: str = "") -> None:
    """Refuse a YAML value of the wrong type with one line naming the key and the expected type (argparse would
    print its whole usage instead). Strings that argparse would convert (``"1e-6"`` for a float) pass; types this
    cannot check (lists, dicts, enums) are left to the configs."""
    import typing

    hints: dict = {}
    for cls in reversed(classes):
        hints.update(typing.get_type_hints(cls))
    for key, value in config.items():
        expected = hints.get(key)
        if expected is None or value is None:
            continue
        union = typing.get_origin(expected) in (typing.Union, UnionType)
        allowed = [a for a in (typing.get_args(expected) if union else (expected,)) if a is not type(None)]
        if not allowed or any(a not in _TYPE_CHECKS for a in allowed):
            continue  # a list, dict or enum among the allowed types: not checked here
        if not any(_TYPE_CHECKS[a][0](value) for a in allowed):
            names = " or ".join(_TYPE_CHECKS[a][1] for a in allowed)
            raise ValueError(f"config key {prefix}{key!r}: expected {names}, got {value!r} ({type(value).__name__})")


def _converts(kind, value) -> bool:
    try:
        kind(value)
    except (TypeError, ValueError):
        return False
    return True


def _is_bool(value) -> bool:
    return isinstance(value, bool) or (isinstance(value, str) and value.lower() in {"true", "false", "yes", "no"})


def _is_int(value) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)) or (
        isinstance(value, str) and _converts(int, value)
    )


def _is_float(value) -> bool:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    return number or (isinstance(value, str) and _converts(float, value))


_TYPE_CHECKS = {
    bool: (_is_bool, "true/false"),
    int: (_is_int, "an integer"),
    float: (_is_float, "a number"),
    str: (lambda value: isinstance(value, str), "a string"),
}
