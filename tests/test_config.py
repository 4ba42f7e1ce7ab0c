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
