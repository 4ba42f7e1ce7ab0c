"""Swapping the backend is a one-word change in a config file."""

import json

import pytest

import llmkit
from llmkit.config import read_config


def test_yaml_toml_json_give_the_same_config(tmp_path):
    (tmp_path / "e.yaml").write_text("backend: transformers\nmodel: m\noptions: {max_batch_size: 4}\nsampling: {temperature: 0.2}\n")
    (tmp_path / "e.toml").write_text('backend = "transformers"\nmodel = "m"\n[options]\nmax_batch_size = 4\n[sampling]\ntemperature = 0.2\n')
    (tmp_path / "e.json").write_text(json.dumps({"backend": "transformers", "model": "m", "options": {"max_batch_size": 4}, "sampling": {"temperature": 0.2}}))
    configs = [read_config(tmp_path / f"e.{ext}") for ext in ("yaml", "toml", "json")]
    assert configs[0] == configs[1] == configs[2]
    assert configs[0].sampling.temperature == 0.2


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("a.yaml", "backend: [unclosed", "not valid yaml"),
        ("a.yaml", "- just\n- a list\n", "expected a mapping"),
        ("a.yaml", "model: m\n", "backend"),
        ("a.yaml", "backend: transformers\nsampling: {temperature: -1}\n", "temperature"),
        ("a.yaml", "backend: transformers\nbakend: x\n", "bakend"),
        ("a.ini", "backend=x", "unknown format"),
    ],
)
def test_bad_config_files(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(llmkit.ConfigError, match=message):
        read_config(path)


def test_missing_config_file(tmp_path):
    with pytest.raises(llmkit.ConfigError, match="cannot read"):
        read_config(tmp_path / "nope.yaml")


def test_load_config_swaps_backend_by_one_word(tmp_path, tiny_model_dir):
    path = tmp_path / "engine.yaml"
    path.write_text(f"backend: transformers\nmodel: {tiny_model_dir}\noptions: {{max_batch_size: 2}}\nsampling: {{temperature: 0, max_tokens: 5}}\n")
    with llmkit.load_config(path) as engine:
        assert engine.backend == "transformers" and engine.options.max_batch_size == 2
        out = engine.generate("hello")[0]  # the config's sampling is the default
        assert len(out.token_ids) <= 5
    path.write_text(path.read_text().replace("backend: transformers", "backend: vllm-that-is-not-installed"))
    with pytest.raises(llmkit.BackendNotFoundError):
        llmkit.load_config(path)


def test_bad_engine_option_is_named(tiny_model_dir):
    with pytest.raises(llmkit.InvalidRequestError) as info:
        llmkit.load("transformers", tiny_model_dir, max_batch_sise=3)
    assert info.value.parameter == "max_batch_sise"


def test_shipped_example_config_is_valid():
    from pathlib import Path

    config = read_config(Path(__file__).resolve().parents[1] / "examples" / "engine.yaml")
    assert config.backend == "llamacpp" and config.sampling.max_tokens == 128


def _readme_config() -> str:
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = re.search(r"```yaml\n(backend:.*?)```", readme, re.S)
    assert block, "the README's config example is gone"
    return block[1]


@pytest.mark.smollm2
@pytest.mark.timeout(900)
@pytest.mark.parametrize("backend", ["transformers", "llamacpp", pytest.param("vllm", marks=pytest.mark.engine("vllm"))])
def test_the_readme_config_runs_on_every_installed_backend_with_only_backend_changed(tmp_path, backend):
    """413c71b: llama.cpp refused max_batch_size ('Extra inputs are not permitted'), vLLM too ('unknown engine option')."""
    import re

    pytest.importorskip({"transformers": "transformers", "llamacpp": "llama_cpp", "vllm": "vllm"}[backend])
    text = _readme_config()
    path = tmp_path / "engine.yaml"
    path.write_text(re.sub(r"^backend: \S+", f"backend: {backend}", text, flags=re.M))
    with llmkit.load_config(path) as engine:
        assert engine.backend == backend
        out = engine.generate("The three primary colours are")[0]
        assert out.usage.completion_tokens >= 1 and out.finish_reason in ("stop", "length")


def test_engine_specific_options_live_in_their_backends_section(tmp_path, tiny_model_dir):
    path = tmp_path / "engine.yaml"
    path.write_text(f"backend: transformers\nmodel: {tiny_model_dir}\noptions: {{max_batch_size: 2}}\n"
                    "transformers: {threads: 1}\nvllm: {enforce_eager: true}\nllamacpp: {n_threads: 2}\n")
    with llmkit.load_config(path) as engine:  # the vllm and llamacpp sections are not this backend's
        assert engine.options.threads == 1 and engine.options.max_batch_size == 2
    path.write_text(f"backend: transformers\nmodel: {tiny_model_dir}\noptions: {{enforce_eager: true}}\n")
    with pytest.raises(llmkit.ConfigError, match="not portable"):
        read_config(path)
    path.write_text(f"backend: transformers\nmodel: {tiny_model_dir}\nvlm: {{enforce_eager: true}}\n")
    with pytest.raises(llmkit.ConfigError, match="vlm"):
        read_config(path)


def test_an_option_an_engine_cannot_honour_is_refused_by_name(tiny_model_dir):
    with pytest.raises(llmkit.UnsupportedFeatureError) as info:
        llmkit.load("transformers", tiny_model_dir, prefix_caching=True)
    assert info.value.backend == "transformers" and "prefix_caching" in info.value.feature
