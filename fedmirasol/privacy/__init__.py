"""Differential privacy for fedmirasol clients: Opacus DP-SGD with cumulative accounting,
budgets, client-level DP and the run's privacy ledger and report.

Modules: settings (the [privacy] run-config table), objective (per-sample loss),
accountant_state (accountant <-> arrays), calibration (sigma for a target epsilon), budget,
dp_training (one round of DP-SGD), client_round (a Flower client's DP round over
context.state), client_level (update clipping, aggregate noise, client-level accountant),
ledger, report, plots.
"""
