"""Secure aggregation (SecAgg+) on Flower's Message API.

The server learns only the sum of the surviving clients' (weighted, quantized) updates. Built
from Flower's cryptographic building blocks: ECDH key agreement, Shamir secret sharing and
Fernet encryption (`flwr.common.secure_aggregation`, `flwr.supercore.primitives`); masks are
expanded with AES-CTR from the `cryptography` package.

- `settings`: the run config's ``secagg`` section;
- `quantization`: float updates <-> integers mod 2^32, out-of-range values reported;
- `masking`: pseudo-random masks (one AES-CTR stream per seed) added in place;
- `keys`: key pairs, pairwise secrets, encrypted Shamir shares;
- `vector`: a state of arrays <-> one flat vector;
- `client`: the ClientApp's stage handlers; `server`: the driver that runs the stages;
- `local_grid`: an in-process Grid for tests and benchmarks.
"""
