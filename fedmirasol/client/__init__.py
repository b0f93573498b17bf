"""The client side of a round: its data, its task (train, evaluate), its state across rounds,
the per-site settings of a deployed node, and the Flower message handlers."""
