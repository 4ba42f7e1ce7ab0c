"""llmkit tuner backend over Axolotl: a generated YAML config, run by axolotl's CLI in its own virtual
environment (axolotl's pins conflict with the main environment's engines)."""

import llmkit
from llmkit.plugins import BackendSpec


@llmkit.hookimpl
def register_tuners(register):
    register(
        BackendSpec(
            name="axolotl",
            kind="tuner",
            target="llmkit_axolotl.tuner:AxolotlTuner",
            requires=("yaml",),  # axolotl itself runs in its own environment (llmkit_axolotl.env), made on first use
            distributions=("axolotl",),
            install_hint="pip install llmkit-axolotl; axolotl's environment is created on first use "
                         "(python -m llmkit_axolotl.env)",
            description="Axolotl 0.19 (LoRA, full SFT, DPO) through its CLI, in its own virtual environment",
        )
    )
