"""Parameter counts per model component."""

from __future__ import annotations

from torch import nn

from fedmirasol.models.config import MirasolConfig


def parameter_table(model: nn.Module) -> dict[str, int]:
    """Parameters of each top-level component, then 'total' (works on the meta device)."""
    table = {
        name: sum(p.numel() for p in child.parameters())
        for name, child in model.named_children()
    }
    table = {name: count for name, count in table.items() if count}
    table["total"] = sum(p.numel() for p in model.parameters())
    return table


def describe(config: MirasolConfig) -> str:
    """One line naming the model a config builds."""
    if config.architecture == "latefusion":
        alpha = f"learned alpha (from {config.alpha:g})" if config.learn_alpha else f"alpha {config.alpha:g}"
        frozen = ", encoders frozen" if config.freeze_encoders else ""
        return (f"TimeSformer + AST late fusion, {alpha} on {config.alpha_modality}{frozen}, "
                f"width {config.width}")
    if config.architecture.startswith("leaf-"):
        return f"LEAF's reference {config.architecture[5:]} for {config.leaf_task}"
    return f"Mirasol, {config.combiner} combiner, {config.fusion} fusion, width {config.width}"
