import json

from typer.testing import CliRunner

from llmkit.cli import app

runner = CliRunner()


def test_backends_lists_reference_engine():
    result = runner.invoke(app, ["backends"])
    assert result.exit_code == 0, result.output
    assert "transformers" in result.output and "yes" in result.output


def test_generate_with_choice_and_json_output(tiny_model_dir):
    result = runner.invoke(app, ["generate", "Pick", "-m", tiny_model_dir, "-t", "0", "--choice", "alpha", "--choice", "beta", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output[result.output.index("{"):])
    assert out["text"] in ("alpha", "beta") and out["finish_reason"] == "stop"


def test_stream_prints_json_chunks(tiny_model_dir):
    result = runner.invoke(app, ["stream", "Hello", "-m", tiny_model_dir, "-t", "0", "-n", "5", "--json"])
    assert result.exit_code == 0, result.output
    chunks = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert chunks[-1]["finish_reason"] in ("stop", "length")


def test_bad_parameter_exits_2_with_message(tiny_model_dir):
    result = runner.invoke(app, ["generate", "x", "-m", tiny_model_dir, "--top-p", "1.5"])
    assert result.exit_code == 2
    assert "top_p" in result.output


def test_unknown_backend_message():
    result = runner.invoke(app, ["generate", "x", "-b", "nope"])
    assert result.exit_code == 2 and "Installed backends" in result.output


def test_chat_one_shot(tiny_model_dir):
    result = runner.invoke(app, ["chat", "hello", "-m", tiny_model_dir, "-t", "0", "-n", "4"])
    assert result.exit_code == 0, result.output


def test_errors_print_whole_and_literal(tmp_path):
    """An error message is printed on one line per line it has (paths are copied from it) and brackets in it
    are text, not console markup."""
    job = tmp_path / "a-rather-long-folder-name-so-that-the-message-is-wider-than-eighty-columns" / "job.yaml"
    job.parent.mkdir()
    data = job.parent / "data.json"
    data.write_text('[{"messages": [{"role": "robot", "content": "hi"}]}]')
    job.write_text(f"model: m\ndata: {data}\noutput_dir: {tmp_path / 'out'}\n")
    result = runner.invoke(app, ["tune", str(job)])
    assert result.exit_code == 2
    assert f"{data}, record 0, field 'messages[0]': role must be one of" in result.output
