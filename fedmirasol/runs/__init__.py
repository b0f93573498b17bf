"""Run directories: config, metrics, checkpoints, resume, report.json and plots."""
