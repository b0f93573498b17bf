"""Deployment on Flower's deployment engine: test certificates and node keys, per-site node
config, and resuming a deployed run (see README, "Deploy on your sites")."""
