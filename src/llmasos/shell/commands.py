"""Typer commands for the OS: `serve`, `run`, `ps`, `kill`, `renice`, `top`, `apps`, `models`, `audit`,
`keys`. Each prints a Rich table, or JSON with `--json`."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from llmasos.shell.client import KEY_ENV, URL_ENV, connect, resolve_url
from llmasos.system.errors import SystemCallError

out = Console()
err = Console(stderr=True)

UrlOpt = Annotated[str | None, typer.Option("--url", help=f"A running server (default: ${URL_ENV}; none: boot an "
                                                          "OS in this process)")]
KeyOpt = Annotated[str | None, typer.Option("--key", help=f"API key (default: ${KEY_ENV})")]
DataOpt = Annotated[Path | None, typer.Option("--data-dir", help="The OS's data directory (default ~/.llmasos)")]
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="An OS config file (TOML or YAML)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON (for scripts)")]

keys_app = typer.Typer(no_args_is_help=True, help="API keys: create, list, revoke (on the data directory).")


def _fail(exc: Exception) -> typer.Exit:
    msg = exc.message if isinstance(exc, SystemCallError) else str(exc)
    err.print(f"[red]error:[/red] {msg}")
    return typer.Exit(2)


def _with_os(url: str | None, key: str | None, data_dir: Path | None, config: Path | None,
             fn: Callable[[Any], Any], *, model: bool = False) -> Any:
    try:
        client = connect(url, key, data_dir, config, model=model)
    except (ValueError, OSError, SystemCallError) as exc:
        raise _fail(exc) from exc
    try:
        return fn(client)
    except (SystemCallError, ConnectionError, ValueError) as exc:
        raise _fail(exc) from exc
    finally:
        client.close()


def _with_keys(data_dir: Path | None, config: Path | None, fn: Callable[[Any], Any]) -> Any:
    from llmasos.shell.client import KeyAdmin

    try:
        ka = KeyAdmin(data_dir, config)
    except (ValueError, OSError) as exc:
        raise _fail(exc) from exc
    try:
        return fn(ka)
    except (SystemCallError, ValueError) as exc:
        raise _fail(exc) from exc
    finally:
        ka.close()


def _table(title: str, rows: list[dict], cols: list[str]) -> Table:
    t = Table(title=title, title_justify="left")
    for c in cols:
        t.add_column(c)
    for r in rows:
        t.add_row(*[_cell(r.get(c)) for c in cols])
    return t


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return time.strftime("%H:%M:%S", time.localtime(v)) if v > 1e9 else f"{v:.3g}"
    if isinstance(v, list | dict):
        return json.dumps(v)[:60]
    return str(v)


def _emit(data: Any, as_json: bool, render: Callable[[Any], Any]) -> None:
    if as_json:
        print(json.dumps(data, ensure_ascii=False, default=str))
    else:
        out.print(render(data))


PS_COLS = ["pid", "app", "kind", "state", "priority", "tokens_in", "tokens_out", "preemptions", "session", "parent"]


def register(app: typer.Typer) -> None:
    app.add_typer(keys_app, name="keys")

    @app.command()
    def serve(
        model: Annotated[str | None, typer.Option("--model", "-m", help="HF dir / hub name, GGUF file, 'builtin' "
                                                                         "(default: SmolLM2-135M-Instruct)")] = None,
        host: Annotated[str | None, typer.Option(help="Bind address (default 127.0.0.1)")] = None,
        port: Annotated[int | None, typer.Option(help="Port (default 8000)")] = None,
        data_dir: DataOpt = None, config: ConfigOpt = None,
        threads: Annotated[int | None, typer.Option("--threads", help="CPU threads for the model")] = None,
    ) -> None:
        """Boot the OS and serve the OpenAI-compatible API, the OS routes, /metrics and the web console."""
        from llmasos.server.run import bind_host
        from llmasos.server.run import serve as run_server
        from llmasos.system.os import OS

        overrides: dict[str, Any] = {}
        model_over = {k: v for k, v in {"name": model, "threads": threads}.items() if v is not None}
        if model_over:
            overrides["model"] = model_over
        if data_dir is not None:
            overrides["data_dir"] = data_dir
        if config is None and "LLMASOS_APPS" not in os.environ:
            from llmasos.sdk.discovery import bundled_names

            overrides["apps"] = bundled_names()  # the server offers every bundled app unless told otherwise
        try:
            with err.status(f"booting LLMasOS on {model or 'the configured model'}..."):
                os_ = OS(config, **overrides)
        except (ValueError, OSError, SystemCallError) as exc:
            raise _fail(exc) from exc
        cfg = os_.config.server
        want_host = host or cfg.host
        bound, note = bind_host(os_, want_host)
        if note:
            err.print(f"[yellow]{note}[/yellow]")

        def ready(handle: Any) -> None:
            from llmasos.server.state import chat_model_id

            mid = chat_model_id(os_)
            err.print(f"[green]LLMasOS is serving {mid}[/green] (data in {os_.config.data_dir})")
            err.print(f"  console   {handle.url}/")
            err.print(f"  API docs  {handle.url}/docs")
            auth = "" if not os_.services.keys.any_keys() else " -H \"Authorization: Bearer $LLMASOS_API_KEY\""
            err.print(f"  try       curl {handle.url}/v1/chat/completions{auth} -H 'Content-Type: application/json' "
                      f"-d '{{\"model\": \"{mid}\", \"messages\": [{{\"role\": \"user\", \"content\": \"Hello!\"}}]}}'",
                      soft_wrap=True)  # one line, ready to paste
            err.print("  terminal chat: llmasos chat    stop: Ctrl-C")

        try:
            run_server(os_, bound, port if port is not None else cfg.port, on_ready=ready, log_level="warning")
        finally:
            os_.shutdown()

    @app.command("run")
    def run_app(
        app_name: Annotated[str, typer.Argument(metavar="APP", help="The app")],
        text: Annotated[str, typer.Argument(help="The input message")],
        session: Annotated[str | None, typer.Option(help="Session id (default: a new one)")] = None,
        url: UrlOpt = None, key: KeyOpt = None, data_dir: DataOpt = None, config: ConfigOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Send one message to an app and print its reply."""
        sid = session or f"cli-{uuid.uuid4().hex[:8]}"
        res = _with_os(url, key, data_dir, config, lambda c: c.run(app_name, text, sid), model=True)
        if as_json:
            print(json.dumps(res, ensure_ascii=False, default=str))
        else:
            print(res["reply"] if isinstance(res["reply"], str) else json.dumps(res["reply"], ensure_ascii=False))

    @app.command()
    def ps(
        app_filter: Annotated[str | None, typer.Option("--app", help="Only this app")] = None,
        state: Annotated[str | None, typer.Option(help="waiting|running|preempted|finished|killed|failed")] = None,
        url: UrlOpt = None, key: KeyOpt = None, data_dir: DataOpt = None, config: ConfigOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """List processes (LLM calls and app handlers), newest last."""
        rows = _with_os(url, key, data_dir, config, lambda c: c.ps(app_filter, state))
        _emit(rows, as_json, lambda r: _table("processes", r, PS_COLS))

    @app.command()
    def kill(pid: Annotated[int, typer.Argument(help="Process id")], url: UrlOpt = None, key: KeyOpt = None,
             data_dir: DataOpt = None, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
        """Kill a process: its generation is aborted and its KV blocks freed at once."""
        p = _with_os(url, key, data_dir, config, lambda c: c.kill(pid))
        _emit(p, as_json, lambda p: f"process {p['pid']} ({p['app']}, {p['kind']}): {p['state']}")

    @app.command()
    def renice(pid: Annotated[int, typer.Argument(help="Process id")],
               priority: Annotated[int, typer.Argument(help="New nice value, -20 (first) to 19")],
               url: UrlOpt = None, key: KeyOpt = None, data_dir: DataOpt = None, config: ConfigOpt = None,
               as_json: JsonOpt = False) -> None:
        """Change a live process's priority; the kernel ranks it anew from its next step."""
        p = _with_os(url, key, data_dir, config, lambda c: c.renice(pid, priority))
        _emit(p, as_json, lambda p: f"process {p['pid']} now has priority {p['priority']}")

    @app.command()
    def apps(url: UrlOpt = None, key: KeyOpt = None, data_dir: DataOpt = None, config: ConfigOpt = None,
             as_json: JsonOpt = False) -> None:
        """Installed apps with their manifests."""
        rows = _with_os(url, key, data_dir, config, lambda c: c.apps())
        _emit(rows, as_json, lambda r: _table("apps", r, ["name", "kind", "version", "permissions", "priority",
                                                          "weight", "description"]))

    @app.command()
    def models(url: UrlOpt = None, key: KeyOpt = None, data_dir: DataOpt = None, config: ConfigOpt = None,
               as_json: JsonOpt = False) -> None:
        """The served chat and embedding models."""
        rows = _with_os(url, key, data_dir, config, lambda c: c.models(), model=resolve_url(url) is None)
        _emit(rows, as_json, lambda r: _table("models", r, ["id", "owned_by", "max_model_len", "dimensions"]))

    @app.command()
    def audit(
        app_filter: Annotated[str | None, typer.Option("--app", help="Only this app")] = None,
        call: Annotated[str | None, typer.Option(help="Only this system call, e.g. llm.chat")] = None,
        decision: Annotated[str | None, typer.Option(help="allowed | denied | failed")] = None,
        limit: Annotated[int, typer.Option(help="Most entries, newest first")] = 50,
        url: UrlOpt = None, key: KeyOpt = None, data_dir: DataOpt = None, config: ConfigOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """The audit log: every system call with its decision."""
        rows = _with_os(url, key, data_dir, config,
                        lambda c: c.audit(app=app_filter, call=call, decision=decision, limit=limit))
        _emit(rows, as_json, lambda r: _table("audit", r, ["id", "time", "app", "principal", "call", "decision",
                                                           "pid", "tokens", "latency_ms", "detail"]))

    @app.command()
    def top(url: UrlOpt = None, key: KeyOpt = None,
            interval: Annotated[float, typer.Option(help="Seconds between refreshes")] = 1.0,
            once: Annotated[bool, typer.Option("--once", help="Print one frame and exit")] = False) -> None:
        """A live view of a running server: processes, KV cache, throughput, per-app share."""
        from llmasos.shell.client import RemoteOS

        target = resolve_url(url) or "http://127.0.0.1:8000"

        client = RemoteOS(target, key or os.environ.get(KEY_ENV))
        prev: dict | None = None
        try:
            with Live(console=out, auto_refresh=False) as live:
                while True:
                    sysinfo, procs = client.system(), client.ps()
                    live.update(_top_frame(target, sysinfo, procs, prev), refresh=True)
                    prev = sysinfo
                    if once:
                        break
                    time.sleep(interval)
        except (SystemCallError, ConnectionError) as exc:
            raise _fail(exc) from exc
        except KeyboardInterrupt:
            pass
        finally:
            client.close()

    @app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
    def bench(ctx: typer.Context,
              which: Annotated[str, typer.Argument(help="serve (load test of a server, like `vllm bench "
                                                        "serve`), engine, system, workloads, ...")] = "serve") -> None:
        """Run a benchmark of benchmarks/ (ours and the baselines side by side); other options go to it,
        e.g. `llmasos bench serve --url http://127.0.0.1:8000 --num-prompts 200`; `llmasos bench serve -- --help`
        lists them."""
        import subprocess
        import sys

        root = Path(__file__).resolve().parents[3] / "benchmarks"
        script = root / f"bench_{which}.py"
        if not script.is_file():
            found = sorted(p.stem.removeprefix("bench_") for p in root.glob("bench_*.py")) if root.is_dir() else []
            raise _fail(ValueError(f"no benchmark {which!r}" + (f"; there are: {', '.join(found)}" if found else
                                   " (the benchmarks ship with the source repository, not the wheel)")))
        raise typer.Exit(subprocess.run([sys.executable, str(script), *ctx.args]).returncode)

    @keys_app.command("create")
    def keys_create(
        app_name: Annotated[str | None, typer.Option("--app", help="The app the key acts for (a new name "
                                                                   "registers an API client app)")] = None,
        user: Annotated[str, typer.Option(help="A user of the app (their own memory)")] = "",
        admin: Annotated[bool, typer.Option("--admin", help="An operator key: every app, ps/kill of all")] = False,
        data_dir: DataOpt = None, config: ConfigOpt = None, as_json: JsonOpt = False,
    ) -> None:
        """Create an API key. A server on this data directory accepts it at once, and from then on refuses
        requests without a valid key."""
        if not admin and not app_name:
            raise _fail(ValueError("give --app NAME (or --admin)"))
        k = _with_keys(data_dir, config, lambda ka: ka.create(app_name, user=user, admin=admin))
        if as_json:
            print(json.dumps({"key": k, "app": app_name, "user": user or None, "admin": admin}))
        else:
            print(k)
            err.print("[dim]shown once: store it now[/dim]")

    @keys_app.command("list")
    def keys_list(app_name: Annotated[str | None, typer.Option("--app", help="Only this app's keys")] = None,
                  data_dir: DataOpt = None, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
        """Keys by id (the secrets are stored hashed and cannot be shown again)."""
        rows = _with_keys(data_dir, config, lambda ka: ka.keys.list(app_name))
        _emit(rows, as_json, lambda r: _table("keys", r, ["key_id", "role", "app", "user", "created_at",
                                                          "revoked_at"]))

    @keys_app.command("revoke")
    def keys_revoke(key_id: Annotated[str, typer.Argument(help="The key id (from keys list)")],
                    data_dir: DataOpt = None, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
        """Revoke a key: the server refuses it from the next request on."""
        _with_keys(data_dir, config, lambda ka: ka.keys.revoke(key_id))
        _emit({"key_id": key_id, "revoked": True}, as_json, lambda d: f"revoked {d['key_id']}")


def _top_frame(url: str, s: dict, procs: list[dict], prev: dict | None) -> Any:
    from rich.console import Group

    k = s.get("kernel") or {}
    rate = ""
    pk = (prev or {}).get("kernel") or {}
    if pk and k.get("time") and k["time"] > pk.get("time", 0):
        dt = k["time"] - pk["time"]
        rate = f"  {(k['generated_tokens'] - pk['generated_tokens']) / dt:.1f} tok/s generated"
    head = (f"[bold]{url}[/bold]  {s.get('chat_model')}  up {s.get('uptime_s', 0):.0f}s\n"
            f"KV {k.get('kv_blocks_used', 0)}/{k.get('kv_blocks_total', 0)} blocks ({100 * k.get('kv_usage', 0):.0f}%)"
            f"  running {k.get('running', 0)}  waiting {k.get('waiting', 0)}  preemptions {k.get('preemptions', 0)}"
            f"  prefix hits {100 * k.get('prefix_hit_rate', 0):.0f}%{rate}")
    share = s.get("apps_share") or {}
    total = sum(share.values()) or 1
    share_line = "share  " + "  ".join(f"{a} {100 * n / total:.0f}%" for a, n in sorted(share.items()))
    live = [p for p in procs if p["state"] in ("waiting", "running", "preempted")]
    recent = [p for p in procs if p not in live][-10:]
    return Group(head, share_line, _table("live processes", live, PS_COLS), _table("recent", recent, PS_COLS))
