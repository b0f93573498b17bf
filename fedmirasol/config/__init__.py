"""The typed run config: one `RunConfig` of frozen sections, read once at the edges."""

from fedmirasol.config.load import (
    from_flower_run_config, from_json, from_table, load_config, to_flat, to_json, to_table,
    with_values,
)
from fedmirasol.config.run import RunConfig

__all__ = ["RunConfig", "from_flower_run_config", "from_json", "from_table", "load_config",
           "to_flat", "to_json", "to_table", "with_values"]
