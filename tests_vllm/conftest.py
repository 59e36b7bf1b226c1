"""The vLLM lane (``make test-vllm``): TRAPO on the real vLLM engine, CPU build, in its own environment.

Every test here runs the real engine: the lane fails, rather than skips, when vLLM is missing or is not the real
package (a fake or a stub would make every claim below empty).
"""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB: the tiny model needs a sliver of the default

import vllm  # noqa: E402  (an ImportError here fails the lane, as it should)

ROOT = Path(__file__).resolve().parent.parent
VLLM_VERSION = "0.31.0"


def pytest_configure(config):
    version = importlib.metadata.version("vllm-cpu")
    if vllm.__version__ != VLLM_VERSION or version != VLLM_VERSION or "site-packages" not in vllm.__file__:
        raise pytest.UsageError(
            f"the vLLM lane needs the real vllm-cpu=={VLLM_VERSION} (found vllm {vllm.__version__} from "
            f"{vllm.__file__}, vllm-cpu {version}): run it with `make test-vllm`"
        )


@pytest.fixture(scope="session")
def base_model(tmp_path_factory) -> str:
    """The demo's tiny base (built once, cached under $TRAPO_CACHE): a model that solves part of the task, so
    guidance fires on some prompts and not on others."""
    from trapo.tasks.base import base_model_path

    return str(base_model_path(log=lambda message: None))
