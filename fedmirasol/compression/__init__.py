"""Communication efficiency: update codecs (quantization, sparsification, low-rank), error
feedback kept in the client's state, and the compressed downlink (a replica of the global model
on the clients, kept in step by compressed changes)."""
