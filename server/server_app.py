"""fedmirasol's ServerApp (`flwr run .` loads `server.server_app:app`); the work is in
fedmirasol.federated."""

from fedmirasol.federated.apps import build_server_app

app = build_server_app()
