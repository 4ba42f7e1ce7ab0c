"""llmkit tuner over Hugging Face TRL (the reference tuner: SFT, LoRA, QLoRA, DPO, GRPO; CPU or CUDA)."""

import llmkit
from llmkit.plugins import BackendSpec


@llmkit.hookimpl
def register_tuners(register):
    register(
        BackendSpec(
            name="trl",
            kind="tuner",
            target="llmkit_trl.tuner:TRLTuner",
            requires=("trl", "peft"),
            distributions=("trl",),
            install_hint="pip install llmkit-trl",
            description="Hugging Face TRL with PEFT: sft, lora, qlora (CUDA), dpo, grpo",
        )
    )
