"""The federated core below every feature: the shared/local parameter split and its records,
checks of client replies, FedProx's proximal term, per-round metric helpers."""
