"""Secure aggregation (SecAgg / SecAgg+, active security) on Flower's Message API.

The server learns only sums over the surviving clients: of their (weighted, quantized) updates
and of their figures (weights, counts, losses, accuracies). Built from Flower's cryptographic
building blocks: ECDH key agreement, Shamir secret sharing, Fernet encryption and ECDSA
signatures (`flwr.common.secure_aggregation`, `flwr.supercore.primitives`); masks are expanded
with AES-CTR from the `cryptography` package.

- `protocol`: the stages and the records they carry;
- `identity`: long-term node keys, signed transcripts, the registry a site trusts;
- `keys`: round key pairs, pairwise secrets, encrypted Shamir shares, share groups;
- `quantization`: float updates <-> integers in a 32- or 64-bit field, out-of-range values
  reported, the L2 bound kept under client-level DP;
- `sums`: the figures summed beside the update;
- `masking`: pseudo-random masks (AES-CTR streams) added in place;
- `vector`: a state of arrays <-> one flat vector;
- `client`: the ClientApp's stage handlers; `server`: the driver that runs the stages.

The run config's ``[secagg]`` section is `fedmirasol.config.secagg`.
"""
