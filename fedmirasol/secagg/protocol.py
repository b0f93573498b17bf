"""The stages of a secure-aggregation round and the records they carry.

Message types are Flower's ``<category>.<action>``, routed by ``@app.train(action)`` /
``@app.query(action)``:

1. KEYS   (query) server -> client: round id.  client -> server: two public keys.
2. SHARES (query) server -> client: every participant's public keys and the threshold.
          client -> server: its Shamir shares, each encrypted for its holder.
3. TRAIN  (train; only when the range is measured) server -> client: the train message plus
          the shares addressed to this client. client -> server: train metrics and a coarse
          bound (power of two) of its update's largest |value|.
4. MASK   (train) server -> client: the agreed bound (plus the train message and shares when
          stage 3 did not run). client -> server: the masked update vector and train metrics.
5. UNMASK (query) server -> client: survivors and dropouts. client -> server: self-mask seed
          shares of survivors, mask-key shares of dropouts (never both for one client).

Clients that vanish after stage 2 are dropouts; their pairwise masks are removed from the sum.
"""

from __future__ import annotations

KEYS = "query.secagg_keys"
SHARES = "query.secagg_shares"
TRAIN = "train.secagg_train"
MASK = "train.secagg_mask"
UNMASK = "query.secagg_unmask"

RECORD = "secagg"  # the ConfigRecord each stage's parameters travel in
MASKED = "masked"  # the ArrayRecord holding the masked vector
VECTOR = "vector"  # its one array: uint32, the quantized update then the weight


def action(message_type: str) -> str:
    """The action name a ClientApp registers for a stage's message type."""
    return message_type.split(".", 1)[1]
