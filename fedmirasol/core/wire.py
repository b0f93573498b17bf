"""The keys of the config record the server sends with every message."""

CONFIG_KEY = "fedmirasol-config"  # the resolved run config, as JSON
STATE_DIR_KEY = "client-state-dir"  # where a simulated client mirrors its state
RUN_NAME_KEY = "run-name"  # the run directory's name
