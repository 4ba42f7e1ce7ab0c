"""The plugin contract. A plugin is a distribution with an entry point in group ``llmkit`` whose module
implements some of these hooks with ``@llmkit.hookimpl``. Hooks are called with keyword arguments;
an implementation may accept any subset of them, so specs can grow without breaking plugins.

Only pluggy is imported here: registering a backend must never import its engine library.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import pluggy

if TYPE_CHECKING:
    import typer

    from llmkit.plugins import BackendSpec

hookspec = pluggy.HookspecMarker("llmkit")
hookimpl = pluggy.HookimplMarker("llmkit")


@hookspec
def register_engines(register: "Callable[[BackendSpec], None]") -> None:
    """Register inference engines.

    :param register: call it with a :class:`llmkit.plugins.BackendSpec` per engine. The spec names
        the engine class by import path (``"llmkit_vllm.engine:VLLMEngine"``); it is imported on
        first use only.
    """


@hookspec
def register_tuners(register: "Callable[[BackendSpec], None]") -> None:
    """Register fine-tuning backends, with :class:`llmkit.plugins.BackendSpec` of kind ``"tuner"``."""


@hookspec
def register_quantizers(register: "Callable[[BackendSpec], None]") -> None:
    """Register offline quantizers (:class:`llmkit.quantizer.Quantizer` subclasses), with
    :class:`llmkit.plugins.BackendSpec` of kind ``"quantizer"``."""


@hookspec
def register_commands(app: "typer.Typer") -> None:
    """Add sub-commands to the ``llmkit`` command line."""
