"""Federated training on Flower: run configs, partitioning, the shared/local parameter split,
client tasks, the server round loop, run directories and simulation."""
