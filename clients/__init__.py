"""The Flower ClientApp of fedmirasol."""
