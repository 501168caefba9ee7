"""The `llmasos` shell: chat, one-shot generation, and the toolchain's train / adapt / compress / eval groups."""

from __future__ import annotations

import contextlib
import io
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from llmasos.adapters.cli import adapt_app
from llmasos.compress.cli import compress_app
from llmasos.eval.cli import eval_app, plan
from llmasos.kernel.config import EngineConfig
from llmasos.kernel.engine import LLMEngine
from llmasos.kernel.llm import apply_chat_template, build_engine
from llmasos.kernel.sampling_params import SamplingParams, StructuredOutput
from llmasos.models.default_model import BUILTIN_NAME, default_model, default_model_label
from llmasos.shell.commands import register as register_os_commands
from llmasos.train.cli import train_app

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="LLMasOS: an operating system for LLM applications. The LLM is the CPU.")
err = Console(stderr=True)
ADAPTER_NAME = "cli"  # the one adapter a --adapter run serves
app.add_typer(train_app, name="train")
app.add_typer(adapt_app, name="adapt")
app.add_typer(compress_app, name="compress")
app.add_typer(eval_app, name="eval")
app.command("plan")(plan)
register_os_commands(app)

ModelOpt = Annotated[str | None, typer.Option(
    "--model", "-m", help="HF model directory or hub name, a GGUF file, or 'builtin' (default: SmolLM2-135M-Instruct)")]
DtypeOpt = Annotated[str, typer.Option(help="auto | float32 | bfloat16 | float16")]
ThreadsOpt = Annotated[int | None, typer.Option("--threads", help="CPU threads for the model (default: all cores)")]
MaxTokOpt = Annotated[int, typer.Option("--max-tokens", help="Most tokens to generate")]
TempOpt = Annotated[float, typer.Option(help="0 = greedy")]
TopKOpt = Annotated[int, typer.Option("--top-k", help="0 = off")]
TopPOpt = Annotated[float, typer.Option("--top-p")]
MinPOpt = Annotated[float, typer.Option("--min-p")]
RepOpt = Annotated[float, typer.Option("--repetition-penalty")]
FreqOpt = Annotated[float, typer.Option("--frequency-penalty")]
PresOpt = Annotated[float, typer.Option("--presence-penalty")]
NgramOpt = Annotated[int, typer.Option("--no-repeat-ngram-size")]
StopOpt = Annotated[list[str] | None, typer.Option("--stop", help="Stop string (repeatable)")]
SeedOpt = Annotated[int | None, typer.Option(help="Per-request seed for reproducible sampling")]
AdapterOpt = Annotated[Path | None, typer.Option("--adapter", help="Adapter directory (llmasos adapt) served on the base")]


def _params(max_tokens: int, temperature: float, top_k: int, top_p: float, min_p: float, repetition_penalty: float,
            frequency_penalty: float, presence_penalty: float, no_repeat_ngram_size: int, stop: list[str] | None,
            seed: int | None, **extra) -> SamplingParams:  # noqa: ANN003
    try:
        return SamplingParams(max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                              repetition_penalty=repetition_penalty, frequency_penalty=frequency_penalty,
                              presence_penalty=presence_penalty, no_repeat_ngram_size=no_repeat_ngram_size,
                              stop=stop, seed=seed, **extra)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc


def _engine(model: str | None, dtype: str, threads: int | None, adapter: Path | None = None) -> LLMEngine:
    try:
        label = model or default_model_label(default_model())
        with err.status(f"loading {label}..."):
            engine = build_engine(EngineConfig(model=model, dtype=dtype, num_threads=threads))
            if adapter is not None:
                engine.load_adapter(ADAPTER_NAME, adapter)
            return engine
    except (ValueError, FileNotFoundError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc


def _stream(engine: LLMEngine, prompt: str | list[int], params: SamplingParams, out=None,  # noqa: ANN001, ANN202
            templated: bool = False):
    """Run one request, printing text deltas as they arrive; returns the final RequestOutput."""
    out = out or sys.stdout
    adapter = ADAPTER_NAME if engine.adapters is not None and ADAPTER_NAME in engine.adapters else None
    rid = engine.add_request(prompt, params, add_special_tokens=not templated, adapter=adapter)
    final = None
    while final is None:
        for o in engine.step():
            if o.request_id != rid:
                continue
            if params.n == 1:
                out.write(o.outputs[0].delta_text)
                out.flush()
            if o.finished:
                final = o
    return final


@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(help="Prompt text ('-' reads stdin)")],
    model: ModelOpt = None, dtype: DtypeOpt = "auto", threads: ThreadsOpt = None,
    max_tokens: MaxTokOpt = 64, temperature: TempOpt = 0.7, top_k: TopKOpt = 0, top_p: TopPOpt = 1.0,
    min_p: MinPOpt = 0.0, repetition_penalty: RepOpt = 1.0, frequency_penalty: FreqOpt = 0.0,
    presence_penalty: PresOpt = 0.0, no_repeat_ngram_size: NgramOpt = 0, stop: StopOpt = None, seed: SeedOpt = None,
    n: Annotated[int, typer.Option("-n", help="Completions to sample")] = 1,
    logprobs: Annotated[int | None, typer.Option(help="Return top-N logprobs per token")] = None,
    ignore_eos: Annotated[bool, typer.Option("--ignore-eos")] = False,
    json_schema: Annotated[Path | None, typer.Option("--json-schema", help="Constrain output to this JSON Schema file")] = None,
    regex: Annotated[str | None, typer.Option(help="Constrain output to this regular expression")] = None,
    choice: Annotated[list[str] | None, typer.Option(help="Constrain output to one of these (repeatable)")] = None,
    chat: Annotated[bool, typer.Option("--chat", help="Wrap the prompt in the model's chat template")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the full result as JSON")] = False,
    adapter: AdapterOpt = None,
) -> None:
    """Generate a completion for one prompt, streaming it to the terminal."""
    if prompt == "-":
        prompt = sys.stdin.read()
    structured = None
    try:
        if json_schema is not None:
            structured = StructuredOutput(json=json.loads(json_schema.read_text()))
        elif regex is not None or choice:
            structured = StructuredOutput(regex=regex, choice=choice or None)
    except (ValueError, OSError) as exc:
        raise typer.BadParameter(str(exc)) from exc
    params = _params(max_tokens, temperature, top_k, top_p, min_p, repetition_penalty, frequency_penalty,
                     presence_penalty, no_repeat_ngram_size, stop, seed, n=n, logprobs=logprobs,
                     ignore_eos=ignore_eos, structured=structured)
    engine = _engine(model, dtype, threads, adapter)
    try:
        text = apply_chat_template(engine.tokenizer, [{"role": "user", "content": prompt}]) if chat else prompt
        if as_json:
            final = _stream(engine, text, params, out=io.StringIO(), templated=chat)  # JSON: only the result
            print(json.dumps({
                "prompt": prompt, "prompt_tokens": len(final.prompt_token_ids),
                "choices": [{"index": c.index, "text": c.text, "token_ids": c.token_ids,
                             "finish_reason": c.finish_reason,
                             "logprobs": [{str(k): v for k, v in lp.items()} for lp in c.logprobs] if c.logprobs else None}
                            for c in final.outputs],
            }, ensure_ascii=False))
            return
        final = _stream(engine, text, params, templated=chat)
        if n > 1:
            for c in final.outputs:
                print(f"--- completion {c.index} ({c.finish_reason})\n{c.text}")
        else:
            print()
            err.print(f"[dim]{len(final.token_ids)} tokens, finish_reason={final.finish_reason}[/dim]")
    except ValueError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc


@app.command()
def chat(
    app_name: Annotated[str, typer.Argument(metavar="APP", help="The app to talk to")] = "assistant",
    model: ModelOpt = None, dtype: DtypeOpt = "auto", threads: ThreadsOpt = None,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="The OS's data directory (default ~/.llmasos)")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="An OS config file (TOML or YAML)")] = None,
    session: Annotated[str | None, typer.Option("--session", help="Resume this session (default: a new one)")] = None,
    raw: Annotated[bool, typer.Option("--raw", help="Talk to the model directly, without the OS and its apps")] = False,
    system: Annotated[str | None, typer.Option(help="System prompt (--raw)")] = None,
    max_tokens: MaxTokOpt = 256, temperature: TempOpt = 0.7, top_k: TopKOpt = 0, top_p: TopPOpt = 0.95,
    min_p: MinPOpt = 0.0, repetition_penalty: RepOpt = 1.1, frequency_penalty: FreqOpt = 0.0,
    presence_penalty: PresOpt = 0.0, no_repeat_ngram_size: NgramOpt = 0, stop: StopOpt = None, seed: SeedOpt = None,
    adapter: AdapterOpt = None,
    url: Annotated[str | None, typer.Option("--url", help="Chat through a running server (default: "
                                                           "$LLMASOS_URL; none: boot the OS here)")] = None,
    key: Annotated[str | None, typer.Option("--key", help="API key (default: $LLMASOS_API_KEY)")] = None,
) -> None:
    """Chat in the terminal with an app on the OS (default: the assistant, with memory and tools), replies
    streamed, with line editing and history. --raw talks to the model alone. /reset starts a new session,
    /exit quits."""
    _line_editing()
    from llmasos.shell.client import resolve_url

    if resolve_url(url) and not raw and adapter is None:
        return _remote_chat(resolve_url(url), key, app_name, session)
    if raw or adapter is not None:
        params = _params(max_tokens, temperature, top_k, top_p, min_p, repetition_penalty, frequency_penalty,
                         presence_penalty, no_repeat_ngram_size, stop, seed)
        return _raw_chat(model, dtype, threads, system, params, adapter)
    _os_chat(app_name, model, dtype, threads, data_dir, config, session)


def _os_chat(app_name: str, model: str | None, dtype: str, threads: int | None, data_dir: Path | None,
             config: Path | None, session: str | None) -> None:
    import uuid

    from llmasos.sdk.discovery import bundled
    from llmasos.system.errors import SystemCallError
    from llmasos.system.os import OS

    # Only what was given on the command line overrides the config file's model section.
    given = {"name": model, "dtype": None if dtype == "auto" else dtype, "threads": threads}
    overrides: dict = {"model": {k: v for k, v in given.items() if v is not None}}
    if data_dir is not None:
        overrides["data_dir"] = data_dir
    try:
        with err.status(f"booting LLMasOS on {model or 'the configured model'}..."):
            os_ = OS(config, **overrides)
            if not os_.handlers(app_name) and (found := bundled(app_name)) is not None:
                os_.install(found)  # a bundled app opens even when the config does not list it
            os_.app(app_name)
    except (ValueError, FileNotFoundError, SystemCallError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    try:
        eng = os_.llm.engine
        # What actually booted: the command line, the config file, or the default.
        name = os_.config.model.name
        label = name if name not in (None, BUILTIN_NAME) else default_model_label(Path(eng.model_source or ""))
        err.print(f"[dim]app {app_name} on {label} ({eng.model.config.num_params / 1e6:.0f}M parameters, "
                  f"{os_.services.window}-token window); data in {os_.config.data_dir}[/dim]")
        err.print("[dim]/reset starts a new session, /exit or Ctrl-D quits[/dim]")

        async def reply(sid: str, line: str) -> None:
            async for piece in os_.handle_stream(app_name, sid, line):
                sys.stdout.write(piece)
                sys.stdout.flush()

        def stop_replies() -> None:
            for p in os_.ps(state="running"):
                os_.kill(p["pid"])

        _app_repl(app_name, session or f"cli-{uuid.uuid4().hex[:8]}", lambda sid, line: os_.run(reply(sid, line)),
                  stop_replies)
    finally:
        os_.shutdown()


def _line_editing() -> None:
    """Arrow keys and history for input() in a terminal, where the platform has readline."""
    if sys.stdin.isatty():
        with contextlib.suppress(ImportError):
            import readline  # noqa: F401


def _remote_chat(url: str, key: str | None, app_name: str, session: str | None) -> None:
    import os
    import uuid

    import httpx

    from llmasos.system.errors import from_response

    key = key or os.environ.get("LLMASOS_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    sid = session or f"cli-{uuid.uuid4().hex[:8]}"
    err.print(f"[dim]app {app_name} on {url}; session {sid}. /reset starts a new session, /exit quits[/dim]")
    with httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=httpx.Timeout(600, connect=5)) as c:

        def reply(sid: str, line: str) -> None:
            try:
                with c.stream("POST", f"/v1/apps/{app_name}/chat",
                              json={"session_id": sid, "message": line, "stream": True}) as r:
                    if r.status_code != 200:
                        r.read()
                        raise from_response(r.status_code, r.json())
                    for raw_line in r.iter_lines():
                        if not raw_line.startswith("data: {"):
                            continue
                        item = json.loads(raw_line[6:])
                        if "error" in item:
                            raise from_response(500, item)
                        sys.stdout.write(item.get("delta", ""))
                        sys.stdout.flush()
            except httpx.TransportError as exc:
                err.print(f"\n[red]error:[/red] no server at {url}: {exc}")
                raise typer.Exit(2) from exc

        # Ctrl-C leaves the stream, which closes it: the server aborts the reply.
        _app_repl(app_name, sid, reply, lambda: None)


def _app_repl(app_name: str, sid: str, reply: Callable[[str, str], None], on_interrupt: Callable[[], None]) -> None:
    """The chat loop of `llmasos chat APP`, in process or through a server: `reply(session, line)` streams the
    app's answer; /reset starts a new session, /exit or Ctrl-D quits, Ctrl-C stops a reply (`on_interrupt`)."""
    import uuid

    from llmasos.system.errors import SystemCallError

    interactive = sys.stdin.isatty()
    while True:
        try:
            line = input("you> " if interactive else "").strip()
        except (EOFError, KeyboardInterrupt):
            break
        if not line:
            continue
        if line in ("/exit", "/quit"):
            break
        if line == "/reset":
            sid = f"cli-{uuid.uuid4().hex[:8]}"
            err.print("[dim]new session[/dim]")
            continue
        sys.stdout.write(f"{app_name}> ")
        try:
            reply(sid, line)
        except SystemCallError as exc:
            err.print(f"\n[red]error:[/red] {exc.message}")
        except KeyboardInterrupt:
            on_interrupt()
        print()


def _raw_chat(model: str | None, dtype: str, threads: int | None, system: str | None, params: SamplingParams,
              adapter: Path | None) -> None:
    engine = _engine(model, dtype, threads, adapter)
    if not getattr(engine.tokenizer, "chat_template", None):
        err.print("[red]error:[/red] this model has no chat template; use `llmasos generate`")
        raise typer.Exit(2)
    interactive = sys.stdin.isatty()
    if model is None:
        name = default_model_label(default_model())
        err.print(f"[dim]{name} ({engine.model.config.num_params / 1e6:.0f}M parameters); --model runs any "
                  "Hugging Face directory, hub name or GGUF file, --model builtin the model this project "
                  "trained[/dim]")
    err.print("[dim]/reset clears the conversation, /exit or Ctrl-D quits[/dim]")
    history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    virtual = engine.adapters.num_virtual_tokens(ADAPTER_NAME) if adapter is not None else 0  # prompt/prefix slots
    while True:
        try:
            line = input("you> " if interactive else "")
        except (EOFError, KeyboardInterrupt):
            break
        line = line.strip()
        if not line:
            continue
        if line in ("/exit", "/quit"):
            break
        if line == "/reset":
            history = history[:1] if system else []
            err.print("[dim]conversation cleared[/dim]")
            continue
        history.append({"role": "user", "content": line})
        prompt = apply_chat_template(engine.tokenizer, history)
        # Keep the conversation inside the context window: drop the oldest turns first.
        while len(engine.encode(prompt, add_special_tokens=False)) + 1 + virtual >= engine.max_model_len and len(history) > (2 if system else 1):
            del history[1 if system else 0]
            prompt = apply_chat_template(engine.tokenizer, history)
        sys.stdout.write("assistant> ")
        try:
            final = _stream(engine, prompt, params, templated=True)
        except ValueError as exc:
            err.print(f"\n[red]error:[/red] {exc}")
            history.pop()
            continue
        except KeyboardInterrupt:
            for rid in list(engine.requests):
                engine.abort_request(rid)
            print()
            continue
        print()
        history.append({"role": "assistant", "content": final.text})


def main() -> None:
    app()


if __name__ == "__main__":
    main()
