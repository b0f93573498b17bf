"""Parameter counts per model component."""

from __future__ import annotations

from torch import nn


def parameter_table(model: nn.Module) -> dict[str, int]:
    """Parameters of each top-level component, then 'total' (works on the meta device)."""
    table = {
        name: sum(p.numel() for p in child.parameters())
        for name, child in model.named_children()
    }
    table = {name: count for name, count in table.items() if count}
    table["total"] = sum(p.numel() for p in model.parameters())
    return table
