"""Differential privacy for fedmirasol clients: Opacus DP-SGD (per clip or per user) with
accounting that only grows, the site's own policy and budgets, client-level DP, and the run's
privacy ledger and report.

Modules: secure_noise (CSPRNG noise and sampling), objective (per-sample loss),
expanded_weights (fast per-sample gradients), dp_training (DP-SGD passes), dp_metrics (noised
sums that may leave a client), accountant_state / calibration / budget (epsilon, sigma for a
target, budget checks), release_log (a site's append-only record of every charge),
site_policy (what a site demands), client_round (a client's DP round over its log),
client_level (update clipping, aggregate noise, client-level accountant), server_side and
round_figures (the server's bookkeeping and what metrics.jsonl holds), ledger, report.
"""
