"""The adapter kit: what every backend adapter shares, so each writes only its engine calls.

    generation   the per-request channel between an engine and its caller (threads or asyncio)
    worker       one thread that owns an in-process model (transformers, llama.cpp)
    aio          an event loop of its own for engines that are async at heart (vLLM, SGLang, TensorRT-LLM)
    decoding     incremental detokenization, stop strings, finish reasons and delta chunks
    chat         prompt and chat-template encoding with a Hugging Face tokenizer
    constraints  one dispatch over the four constraint kinds, and shared translations
    grammars     choice and regex (Python's re.fullmatch, exactly) to GBNF
    jsonschema   JSON schemas every converter reads the same way; valid JSON strings
    mapping      declared field tables with pure to_native functions
    processes    an engine's own processes: recorded at start, ended at close
    files        content digests for cache keys
"""
