"""fedmirasol's ClientApp (`flwr run .` loads `clients.client_app:app`); the work is in
fedmirasol.client and fedmirasol.engines."""

from fedmirasol.console import show_messages
from fedmirasol.engines.apps import build_client_app

show_messages()

app = build_client_app()
