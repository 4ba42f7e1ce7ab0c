"""llmkit tuner over Unsloth: LoRA and QLoRA on NVIDIA GPUs (Unsloth's patched model + TRL's SFTTrainer)."""

import llmkit
from llmkit.plugins import BackendSpec


@llmkit.hookimpl
def register_tuners(register):
    register(
        BackendSpec(
            name="unsloth",
            kind="tuner",
            target="llmkit_unsloth.tuner:UnslothTuner",
            requires=("unsloth",),
            distributions=("unsloth",),
            install_hint="pip install 'llmkit-unsloth[gpu]' (an NVIDIA GPU; its own environment: Unsloth pins trl <= 1.15)",
            description="Unsloth (FastLanguageModel) with TRL's SFTTrainer: lora, qlora; NVIDIA GPUs only",
        )
    )
