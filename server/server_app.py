"""fedmirasol's ServerApp (`flwr run .` loads `server.server_app:app`); the work is in
fedmirasol.server and fedmirasol.engines."""

from fedmirasol.console import show_messages
from fedmirasol.engines.apps import build_server_app

show_messages()

app = build_server_app()
