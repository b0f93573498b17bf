"""The stages of a secure-aggregation round and the records they carry.

The active-security version of SecAgg / SecAgg+ (Bonawitz et al. 2017, section 6; Bell et al.
2020): round keys are signed with each node's long-term key, the survivor set is signed by the
survivors before anything is unmasked, and every honest client refuses a stage whose lists or
counts would let the server isolate its update. Message types are Flower's
``<category>.<action>``, routed by ``@app.train(action)`` / ``@app.query(action)``:

1. KEYS        (query) server -> client: round id, purpose ("train" or "evaluate") and the
               run config. client -> server: two public keys, a commitment to its self-mask
               seed, its long-term public key and its signature over (round, node, keys,
               commitment); or, at a train round, for a client with nothing to contribute (its
               DP budget is spent), no keys and the public "budget exhausted" bookkeeping: it
               is left out before key sharing.
2. SHARES      (query) server -> client: every contributor's signed keys, the threshold and
               the SecAgg+ neighbour count. client -> server: its Shamir shares, each encrypted
               for its holder (its share group: itself and its neighbours).
3. MASK        (train) server -> client: the train message, the shares addressed to this client
               and the encoding (quantization bound and bits, sum field width, the weight bound,
               under client-level DP the norm bound, the metrics to sum). client -> server:
               the masked update and the masked sums (`sums`: weight, contributor count, train
               loss) and only public bookkeeping in the clear (partition id; under DP the
               accountant's figures).
   EVAL_MASK   (evaluate) the same for federated evaluation: the evaluate message; the client
               evaluates and masks only the sums (example count, losses, accuracies).
4. CONSISTENCY (query) server -> client: survivors and dropouts. client -> server: its
               signature over (round, survivors, dropouts).
5. UNMASK      (query) server -> client: the same sets and the survivors' signatures.
               client -> server: self-mask seed shares of survivors, mask-key shares of
               dropouts (never both for one client).

Clients that vanish after stage 2 are dropouts; their pairwise masks are removed from the sum.
"""

from __future__ import annotations

from typing import Collection

KEYS = "query.secagg_keys"
SHARES = "query.secagg_shares"
MASK = "train.secagg_mask"
EVAL_MASK = "evaluate.secagg_mask"
CONSISTENCY = "query.secagg_consistency"
UNMASK = "query.secagg_unmask"

RECORD = "secagg"  # the ConfigRecord each stage's parameters travel in
MASKED = "masked"  # the ArrayRecord holding the masked arrays:
VECTOR = "vector"  # the quantized update (uint32 or uint64: the sum field; empty at evaluation)
SUMS = "sums"  # the secure sums (`sums.SumSpec`, uint64)
VECTOR_STREAM, SUMS_STREAM = 0, 1  # the two mask streams of every mask seed

TRAIN, EVALUATE = "train", "evaluate"  # a round's purpose, and its masking stage
MASK_STAGES = {TRAIN: MASK, EVALUATE: EVAL_MASK}
LOSS_CAP = 256.0  # a loss enters the sums clipped to [0, LOSS_CAP]

# What a signature signs (`identity.transcript` kinds).
SIGNED_KEYS = "keys"
SIGNED_SURVIVORS = "survivors"


def action(message_type: str) -> str:
    """The action name a ClientApp registers for a stage's message type."""
    return message_type.split(".", 1)[1]


def signatures_needed(threshold: int, group: Collection[int]) -> int:
    """Signatures on one survivor set that a holder of a share group's secrets requires: a
    majority of the group (two different sets cannot both have one) and the threshold."""
    return max(threshold, len(group) // 2 + 1)
