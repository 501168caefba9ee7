"""The app SDK: write an app against `AppContext` (llm, embed, memory, storage, tools, log); the OS checks,
schedules and audits every call it makes."""

from llmasos.sdk.app import App, FunctionApp, app, handler
from llmasos.sdk.context import AppContext
from llmasos.sdk.embedding import local_embed, local_embedder
from llmasos.sdk.http_transport import HttpTransport, remote_context
from llmasos.sdk.standalone import Standalone, shared_runtime
from llmasos.sdk.transport import LocalTransport, Transport
from llmasos.system.manifest import Manifest, Quotas
from llmasos.system.tools.registry import Tool, ToolContext

__all__ = ["App", "AppContext", "FunctionApp", "HttpTransport", "LocalTransport", "Manifest", "Quotas", "Standalone",
           "Tool", "ToolContext", "Transport", "app", "handler", "local_embed", "local_embedder", "remote_context",
           "shared_runtime"]
