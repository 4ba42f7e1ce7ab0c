"""llmkit tuner backend for torchtune: LoRA and full fine-tuning through torchtune's own recipes, run with
`tune run` in torchtune's own virtual environment (see `llmkit_torchtune.env`)."""

import llmkit
from llmkit.plugins import BackendSpec


@llmkit.hookimpl
def register_tuners(register):
    register(
        BackendSpec(
            name="torchtune",
            kind="tuner",
            target="llmkit_torchtune.tuner:TorchtuneTuner",
            requires=("yaml",),  # torchtune itself lives in its own venv, made on first use
            distributions=("torchtune",),
            install_hint="pip install llmkit-torchtune; torchtune 0.6.1 is installed into its own venv on first use "
                         "(python -m llmkit_torchtune.env)",
            description="torchtune 0.6.1 single-device recipes (LoRA, full) in a venv of their own; "
                        "upstream stopped active development in 2025",
        )
    )
