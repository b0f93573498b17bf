"""The server side of a run: the round loop, Flower's strategies, node discovery and the
centralized evaluation of the global model."""
