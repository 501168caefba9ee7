"""The `llmasos` command as a user runs it: a real subprocess on a tiny checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def run_cli(*args: str, stdin: str = "", env_home=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if env_home:
        env["LLMASOS_HOME"] = str(env_home)
    return subprocess.run([sys.executable, "-m", "llmasos.cli", *args], input=stdin, capture_output=True, text=True,
                          timeout=300, env=env)


def test_generate_json_matches_the_python_api(llama_dir, llm):
    from llmasos import SamplingParams

    r = run_cli("generate", "Hello, how", "--model", str(llama_dir), "--dtype", "float32", "--max-tokens", "6",
                "--temperature", "0", "--ignore-eos", "--json", "--logprobs", "1")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    expect = llm.generate(["Hello, how"], SamplingParams(max_tokens=6, temperature=0, ignore_eos=True))[0]
    choice = data["choices"][0]
    assert choice["token_ids"] == expect.token_ids and choice["text"] == expect.text
    assert choice["finish_reason"] == "length" and len(choice["logprobs"]) == 6


def test_generate_with_choice_constraint(llama_dir):
    r = run_cli("generate", "Answer:", "--model", str(llama_dir), "--choice", "yes", "--choice", "no", "--json",
                "--seed", "1")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["choices"][0]["text"] in ("yes", "no")


@pytest.mark.parametrize("args", [["--temperature", "-1"], ["--top-p", "0"], ["--model", "/no/such/model"]])
def test_bad_options_fail_cleanly(llama_dir, args):
    base = ["generate", "hi", "--model", str(llama_dir)]
    r = run_cli(*base, *args)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert r.stderr.strip()


def test_chat_streams_replies_and_handles_commands(llama_dir):
    r = run_cli("chat", "--raw", "--model", str(llama_dir), "--dtype", "float32", "--max-tokens", "5", "--seed", "0",
                stdin="hello\n/reset\nsecond question\n/exit\nnever read\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("assistant> ") == 2
    assert "conversation cleared" in r.stderr


def test_chat_opens_the_assistant_app_on_the_default_model(tmp_path):
    """The main job: the OS on SmolLM2 with the assistant app, its memory kept in the data directory."""
    data = tmp_path / "data"
    r = run_cli("chat", "--data-dir", str(data), "--session", "s1",
                stdin="What does the word harbor mean?\nwhat is 12*(3+4)?\n", env_home=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "SmolLM2-135M-Instruct" in r.stderr and "app assistant" in r.stderr
    replies = [line for line in r.stdout.split("assistant> ") if line.strip()]
    assert len(replies) == 2 and len(replies[0].split()) > 5 and "84" in replies[1]
    # The session lives on: the same data directory and session id resume it.
    from llmasos.system.storage.db import Database, sqlite_url
    from llmasos.system.storage.tables import messages

    db = Database(sqlite_url(data))
    with db.engine.connect() as conn:
        rows = conn.execute(messages.select().where(messages.c.session == "s1")).all()
    db.close()
    assert [r.role for r in rows] == ["user", "assistant", "user", "assistant"]


def test_raw_chat_serves_the_builtin_model_by_name(tmp_path):
    r = run_cli("chat", "--raw", "--model", "builtin", "--max-tokens", "16", "--temperature", "0",
                stdin="Who are you?\n", env_home=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "assistant> " in r.stdout and "LLMasOS" in r.stdout


def test_chat_with_an_unknown_app_fails_cleanly(tmp_path):
    r = run_cli("chat", "nosuchapp", "--model", "builtin", "--data-dir", str(tmp_path / "d"), stdin="hi\n")
    assert r.returncode == 2 and "no app 'nosuchapp'" in r.stderr and "Traceback" not in r.stderr


def test_chat_takes_the_model_from_a_config_file(tmp_path):
    """Options not given on the command line leave the config file's model section alone."""
    cfg = tmp_path / "os.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "data"}"\n[model]\nname = "builtin"\ndtype = "float32"\n')
    r = run_cli("chat", "--config", str(cfg), stdin="what is 2+2?\n", env_home=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "the built-in model" in r.stderr and "2+2 = 4" in r.stdout
