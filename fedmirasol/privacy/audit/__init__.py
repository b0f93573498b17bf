"""Empirical privacy audits (`fedmirasol privacy-audit`): canaries, their scores, and the
epsilon lower bound (Steinke, Nasr, Jagielski 2023) and estimate (Andrew et al. 2024) they
give, beside the accountant's epsilon.

Modules: canaries (sample-level canary clips and the auditor's secret plan), canary_clients
(client-level canary updates), scores (how much training used each canary), one_run (the
lower bound), gaussians (the two-Gaussian estimate), report (audit.json and the report text).
"""
