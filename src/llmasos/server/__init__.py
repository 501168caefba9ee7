"""The application interface layer: the OpenAI-compatible HTTP API, the OS routes, metrics and the console."""

from llmasos.server.app import create_app
from llmasos.server.run import ServerHandle, serve, start_server

__all__ = ["ServerHandle", "create_app", "serve", "start_server"]
