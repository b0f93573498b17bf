"""The federated learning task both ends rebuild from the run config alone: the initial
model and every client's data (and the server's test set)."""
