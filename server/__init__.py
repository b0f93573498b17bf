"""The Flower ServerApp of fedmirasol."""
