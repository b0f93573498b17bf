"""fedmirasol's ServerApp (`flwr run .` loads `server.server_app:app`); the work is in
fedmirasol.server and fedmirasol.engines."""

from fedmirasol.engines.apps import build_server_app

app = build_server_app()
