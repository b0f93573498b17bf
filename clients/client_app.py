"""fedmirasol's ClientApp (`flwr run .` loads `clients.client_app:app`); the work is in
fedmirasol.client and fedmirasol.engines."""

from fedmirasol.engines.apps import build_client_app

app = build_client_app()
