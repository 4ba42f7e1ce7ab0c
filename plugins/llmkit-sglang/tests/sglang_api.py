"""The parts of SGLang 0.5.17's API the adapter uses, written down from its source (the sglang 0.5.17 wheel
on PyPI, = python/sglang/... at v0.5.17), so the mapping is tested against them on machines without SGLang.
`test_sglang.py::test_api_snapshot_matches_the_installed_sglang` compares them with the installed SGLang
on the GPU: a rename or a changed default upstream fails there.
"""

VERSION = "0.5.17"

# srt/sampling/sampling_params.py, class SamplingParams (msgspec.Struct), "API parameters", lines 53-82.
SAMPLING_PARAMS = {
    "max_new_tokens": 128,
    "stop": None,
    "stop_token_ids": None,
    "stop_regex": None,
    "temperature": 1.0,
    "top_p": 1.0,
    "top_k": 1 << 30,  # TOP_K_ALL
    "min_p": 0.0,
    "frequency_penalty": 0.0,
    "presence_penalty": 0.0,
    "repetition_penalty": 1.0,
    "min_new_tokens": 0,
    "n": 1,
    "json_schema": None,
    "regex": None,
    "ebnf": None,
    "structural_tag": None,
    "ignore_eos": False,
    "skip_special_tokens": True,
    "spaces_between_special_tokens": True,
    "no_stop_trim": False,
    "stream_interval": None,
    "logit_bias": None,
    "sampling_seed": None,
    "custom_params": None,
}
TOP_K_ALL = 1 << 30
SAMPLING_EPS = 1e-6  # temperatures in [0, 1e-6) become greedy (top_k=1), __post_init__

# srt/entrypoints/engine.py, Engine.async_generate: the keyword arguments the adapter passes.
ASYNC_GENERATE_ARGS = ("input_ids", "sampling_params", "return_logprob", "logprob_start_len", "top_logprobs_num",
                       "lora_path", "stream", "rid")

# srt/server_args.py, ServerArgs fields the adapter sets, with their defaults.
SERVER_ARGS = {
    "model_path": None,  # required
    "tp_size": 1,
    "pp_size": 1,
    "dp_size": 1,
    "nnodes": 1,
    "enable_dp_attention": False,
    "base_gpu_id": 0,
    "gpu_id_step": 1,
    "quantization": None,
    "enable_lora": None,
    "max_lora_rank": None,
    "lora_target_modules": None,
    "load_format": "auto",
    "skip_tokenizer_init": False,
    "enable_deterministic_inference": False,
    "incremental_streaming_output": False,
    "log_level": "info",  # Engine.__init__ passes "error" when not given
    "max_running_requests": None,
    "context_length": None,
    "dtype": "auto",
    "random_seed": None,
    "disable_radix_cache": False,
    "mem_fraction_static": None,
    "grammar_backend": None,  # resolved to "xgrammar" (_handle_grammar_backend)
    "kv_cache_dtype": "auto",
    "attention_backend": None,
}
