"""Plugin discovery through entry points, lazily: nothing heavy is imported to list backends."""

import subprocess
import sys
import textwrap

import pytest

import llmkit
from llmkit.plugins import get_backend, reset_plugin_manager

THIRD_PARTY_ENGINE = '''
from llmkit.engine import Engine
from llmkit.types import Capabilities, StreamChunk, Usage

IMPORTED = True


class ReverseEngine(Engine):
    """A test plugin's engine: answers with the prompt reversed, one character per token."""

    backend = "reverse"
    capabilities_ = Capabilities(backend="reverse", sampling=frozenset({"stop"}))

    def _start(self):
        pass

    @property
    def context_length(self):
        return 64

    def _tokenize(self, request):
        return None  # like Ollama: only the engine knows

    def _submit(self, generation):
        """The simplest adapter: produce everything at once (the channel buffers it)."""
        prompt, params = generation.request.prompt, generation.params
        text = prompt[::-1][: params.max_tokens]
        for j, ch in enumerate(text):
            last = j == len(text) - 1
            generation.push(StreamChunk(text=ch, token_ids=[ord(ch)], finish_reason="length" if last else None,
                                        usage=Usage(prompt_tokens=len(prompt), completion_tokens=len(text)) if last else None))
        generation.end()
'''


@pytest.fixture
def third_party_plugin(tmp_path, monkeypatch):
    """A distribution `llmkit-reverse`, installed into a temporary folder the way pip lays it out."""
    package = tmp_path / "llmkit_reverse"
    package.mkdir()
    (package / "__init__.py").write_text(textwrap.dedent('''
        import llmkit
        from llmkit.plugins import BackendSpec

        @llmkit.hookimpl
        def register_engines(register):
            register(BackendSpec(name="reverse", target="llmkit_reverse.engine:ReverseEngine",
                                 description="test plugin"))
            register(BackendSpec(name="needs-missing-lib", target="llmkit_reverse.engine:ReverseEngine",
                                 requires=("no_such_module_xyz",), install_hint="pip install no-such-module"))
    '''))
    (package / "engine.py").write_text(THIRD_PARTY_ENGINE)
    dist = tmp_path / "llmkit_reverse-0.1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: llmkit-reverse\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text("[llmkit]\nreverse = llmkit_reverse\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reset_plugin_manager()
    yield
    for name in [m for m in sys.modules if m.startswith("llmkit_reverse")]:
        del sys.modules[name]
    reset_plugin_manager()


def test_reference_engine_is_registered():
    spec = llmkit.backends()["transformers"]
    assert spec.target == "llmkit_transformers.engine:TransformersEngine"
    assert spec.availability() == (True, "ok")


def test_unknown_backend_lists_installed_and_suggests():
    with pytest.raises(llmkit.BackendNotFoundError) as info:
        llmkit.load("transformer")
    message = str(info.value)
    assert "Did you mean 'transformers'?" in message
    assert "Installed backends:" in message and "transformers" in message


def test_third_party_plugin_is_discovered_and_loaded_lazily(third_party_plugin):
    assert "reverse" in llmkit.backends()
    assert "llmkit_reverse.engine" not in sys.modules  # listing does not import the engine
    with llmkit.load("reverse", "any-model") as engine:
        assert "llmkit_reverse.engine" in sys.modules
        assert engine.generate("abc", max_tokens=8)[0].text == "cba"
        assert "".join(c.text for c in engine.stream("hello")) == "olleh"
        assert engine.stats().requests == 2
        with pytest.raises(llmkit.UnsupportedFeatureError) as info:
            engine.generate("abc", top_k=3)
        assert (info.value.backend, info.value.feature) == ("reverse", "top_k")
    info = {p["name"]: p for p in llmkit.plugins.plugin_info()}
    assert info["reverse"]["distribution"] == "llmkit-reverse"
    assert info["reverse"]["hooks"] == ["register_engines"]


def test_backend_whose_library_does_not_import(third_party_plugin):
    ok, reason = get_backend("needs-missing-lib").availability()
    assert not ok and "no_such_module_xyz" in reason


def test_blocking_and_disabling_plugins(third_party_plugin, monkeypatch):
    monkeypatch.setenv("LLMKIT_BLOCK_PLUGINS", "reverse")
    reset_plugin_manager()
    assert "reverse" not in llmkit.backends()
    monkeypatch.delenv("LLMKIT_BLOCK_PLUGINS")
    monkeypatch.setenv("LLMKIT_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.setenv("LLMKIT_PLUGINS", "llmkit_reverse")
    reset_plugin_manager()
    assert set(llmkit.backends()) == {"reverse", "needs-missing-lib"}


def test_duplicate_backend_names_are_an_error(third_party_plugin):
    from llmkit.plugins import get_plugin_manager

    class Shadow:
        @llmkit.hookimpl
        def register_engines(self, register):
            register(llmkit.BackendSpec(name="reverse", target="x:Y"))

    get_plugin_manager().register(Shadow(), name="shadow")
    with pytest.raises(llmkit.LLMKitError, match="registered twice"):
        llmkit.backends()


def test_importing_llmkit_and_listing_backends_imports_no_engine_library():
    code = (
        "import sys, llmkit; llmkit.backends(); llmkit.load\n"
        "heavy = [m for m in ('torch', 'transformers', 'vllm', 'llama_cpp', 'xgrammar') if m in sys.modules]\n"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
