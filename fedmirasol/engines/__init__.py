"""Where a run executes: the Flower apps, Flower's simulation engine, the centralized baseline."""
