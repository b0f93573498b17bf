"""Homomorphic encryption of the updates (CKKS, Microsoft SEAL through TenSEAL).

Every site holds the one secret key of the federation (`ckks.SiteContext`); the server holds
only the parameters and a key id (`ckks.ServerContext`): it can add ciphertexts, not encrypt
or decrypt them. A client encrypts its weighted update (`packing`: many values per ciphertext,
in batches, streamed), the server adds the replies' ciphertexts batch by batch (`summing`),
and the clients decrypt the sum at the start of the next round or evaluation (`wire`: what
travels). Names are in `errors`.
"""
