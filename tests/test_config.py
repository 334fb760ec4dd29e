"""``--config`` files (streamcore.config): one precedence (flag > environment > file >
default) for every option, errors naming the key and its line, ``config --print`` with the
secrets masked and readable back, and ``--log-format json``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from streamcore.cli import main, parse

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("STREAMCORE_"):
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "streamcore.toml"
    path.write_text(text)
    return str(path)


def test_precedence_flag_env_file_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write(tmp_path, 'port = 8123\ntoken-rate = 7\nhost = "0.0.0.0"\n'
                             "write_stall_timeout_s = 9\n")
    _, args = parse(["serve"])
    assert (args.port, args.token_rate, args.write_stall_timeout_s) == (8000, 50.0, 30.0)
    _, args = parse(["serve", "--config", config])
    assert (args.port, args.token_rate, args.host) == (8123, 7.0, "0.0.0.0")
    assert args.write_stall_timeout_s == 9.0 and isinstance(args.write_stall_timeout_s, float)
    monkeypatch.setenv("STREAMCORE_PORT", "9000")
    _, args = parse(["serve", "--config", config])
    assert (args.port, args.token_rate) == (9000, 7.0)  # the environment over the file
    _, args = parse(["serve", "--config", config, "--port", "9100", "--token-rate", "1"])
    assert (args.port, args.token_rate) == (9100, 1.0)  # a flag over both
    monkeypatch.setenv("STREAMCORE_CONFIG", config)
    monkeypatch.delenv("STREAMCORE_PORT")
    _, args = parse(["serve"])
    assert args.port == 8123  # the file named by the environment


def test_lists_flag_env_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write(tmp_path, 'upstream = ["http://f:1/v1"]\napi_key = "k-file"\n')
    _, args = parse(["serve", "--config", config])
    assert (args.upstream, args.api_key) == (["http://f:1/v1"], ["k-file"])
    monkeypatch.setenv("STREAMCORE_UPSTREAM", "http://e:1/v1;http://e:2/v1")
    monkeypatch.setenv("STREAMCORE_API_KEY", "k-env1,k-env2")
    _, args = parse(["serve", "--config", config])
    assert args.upstream == ["http://e:1/v1", "http://e:2/v1"]
    assert args.api_key == ["k-env1", "k-env2"]
    _, args = parse(["serve", "--config", config, "--upstream", "http://a:1/v1",
                     "--api-key", "k-flag"])
    assert (args.upstream, args.api_key) == (["http://a:1/v1"], ["k-flag"])


@pytest.mark.parametrize(("text", "message"), [
    ("port = 1\nportt = 3\n", "streamcore.toml:2: unknown key 'portt'"),
    ('\n\nport = "x"\n', "streamcore.toml:3: port must be an integer, got 'x'"),
    ("token_rate = true\n", "streamcore.toml:1: token_rate must be a number"),
    ("host = 5\n", "streamcore.toml:1: host must be a string"),
    ("upstream = [1]\n", "streamcore.toml:1: upstream must be a string or an array"),
    ("port = \n", "not valid TOML"),
    ("config = 'x'\n", "unknown key 'config'"),
])
def test_errors_name_the_key_and_the_line(tmp_path: Path, text: str, message: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    config = write(tmp_path, text)
    with pytest.raises(SystemExit) as exit_:
        parse(["serve", "--config", config])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_a_missing_file_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse(["serve", "--config", str(tmp_path / "nope.toml")])
    assert "nope.toml" in capsys.readouterr().err


def test_print_masks_secrets_and_reads_back(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# ours\nk-from-file\n")
    config = write(tmp_path, 'port = 8123\napi_key = ["k-one"]\n'
                             'upstream = ["http://u:1/v1 key=up-secret models=m"]\n')
    assert main(["config", "--print", "--config", config, "--api-key-file", str(keys)]) == 0
    printed = capsys.readouterr().out
    for secret in ("k-one", "k-from-file", "up-secret"):
        assert secret not in printed
    assert 'api_key = ["***", "***"]' in printed
    assert 'upstream = ["http://u:1/v1 key=*** models=m"]' in printed
    assert "port = 8123" in printed and "write_stall_timeout_s = 30.0" in printed
    # What it prints is a configuration file: read back, the same effective values.
    again = write(tmp_path, printed.replace('"***"', '"x"').replace("key=***", "key=x"))
    _, first = parse(["serve", "--config", config])
    _, second = parse(["serve", "--config", again])
    assert {k: v for k, v in vars(first).items() if k not in ("config", "api_key", "upstream",
                                                             "api_key_file")} == \
        {k: v for k, v in vars(second).items() if k not in ("config", "api_key", "upstream",
                                                            "api_key_file")}


def test_config_without_print_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["config"])
    assert "--print" in capsys.readouterr().err


def test_log_format_json(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "streamcore", "serve", "--port", "0",
                             "--log-format", "json"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline().decode()
        entry = json.loads(line)
        assert entry["level"] == "info" and entry["logger"] == "streamcore"
        assert "listening" in entry["message"] and entry["time"].endswith("Z")
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=10)


def test_bad_log_options_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["serve", "--log-format", "xml"], ["serve", "--log-level", "loud"]):
        with pytest.raises(SystemExit):
            main(argv)
        assert "must be" in capsys.readouterr().err
