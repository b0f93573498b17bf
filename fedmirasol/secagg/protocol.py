"""The stages of a secure-aggregation round and the records they carry.

The active-security version of SecAgg / SecAgg+ (Bonawitz et al. 2017, section 6; Bell et al.
2020): round keys are signed with each node's long-term key, the survivor set is signed by the
survivors before anything is unmasked, and every honest client refuses a stage whose lists or
counts would let the server isolate its update. Message types are Flower's
``<category>.<action>``, routed by ``@app.train(action)`` / ``@app.query(action)``:

1. KEYS        (query) server -> client: round id and the run config. client -> server: two
               public keys, a commitment to its self-mask seed, its long-term public key and
               its signature over (round, node, keys, commitment); or, for a client with
               nothing to contribute (its DP budget is spent), no keys and the public
               "budget exhausted" bookkeeping: it is left out before key sharing.
2. SHARES      (query) server -> client: every contributor's signed keys, the threshold.
               client -> server: its Shamir shares, each encrypted for its holder.
3. MASK        (train) server -> client: the train message, the shares addressed to this client
               and the quantization (bound, bits, weight bound, clients). client -> server: the
               masked vector (update, weight, contributor count, train loss: all summed
               securely) and only public bookkeeping in the clear (partition id; under DP the
               accountant's figures).
4. CONSISTENCY (query) server -> client: survivors and dropouts. client -> server: its
               signature over (round, survivors, dropouts).
5. UNMASK      (query) server -> client: the same sets and the survivors' signatures.
               client -> server: self-mask seed shares of survivors, mask-key shares of
               dropouts (never both for one client).

Clients that vanish after stage 2 are dropouts; their pairwise masks are removed from the sum.
"""

from __future__ import annotations

KEYS = "query.secagg_keys"
SHARES = "query.secagg_shares"
MASK = "train.secagg_mask"
CONSISTENCY = "query.secagg_consistency"
UNMASK = "query.secagg_unmask"

RECORD = "secagg"  # the ConfigRecord each stage's parameters travel in
MASKED = "masked"  # the ArrayRecord holding the masked vector
VECTOR = "vector"  # its one array: uint32, the quantized update then the `EXTRAS`

# Entries after the update in the masked vector, each summed securely.
WEIGHT, CONTRIBUTORS, LOSS = 0, 1, 2
EXTRAS = 3
LOSS_CAP = 256.0  # a client's train loss enters the sum clipped to [0, LOSS_CAP]

# What a signature signs (`identity.transcript` kinds).
SIGNED_KEYS = "keys"
SIGNED_SURVIVORS = "survivors"


def action(message_type: str) -> str:
    """The action name a ClientApp registers for a stage's message type."""
    return message_type.split(".", 1)[1]


def loss_scale(num_clients: int) -> float:
    """Fixed-point scale of the loss entry: as fine as the 32-bit sum of `num_clients` clipped
    losses allows (at most 2^12 per unit)."""
    return float(min(2 ** 12, 2 ** (int((2 ** 31 - 1) // (num_clients * (LOSS_CAP + 1)))
                                    .bit_length() - 1)))
