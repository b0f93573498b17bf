"""A malicious server against honest clients running the real protocol code (five stand-in
clients whose training returns a fixed update; threshold 3 of 5, min-contributors 3).

Each attack is one the security review found or the papers name: forwarding the victim only
its own share; telling it it is alone; substituting its peers' keys; telling survivors
different survivor sets; declaring the victim's mask peers dropped; padding a round of
exhausted clients with keys the server made. Each must be refused by the honest clients by
name, and the attacker, rebuilding every secret it can from what they revealed, must not be
able to strip the victim's masks.
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Message

from fedmirasol.secagg import keys, protocol
from malicious import MaliciousServer, leaked, record
from secagg_standins import NODES, Clients, aggregator, train_messages

VICTIM = NODES[0]  # partition 0


def attack(clients: Clients) -> MaliciousServer:
    return MaliciousServer(clients.grid)


def refused(server: MaliciousServer, node: int, reason: str) -> bool:
    return reason in server.refusals().get(node, "")


def test_forwarding_the_victim_only_its_own_share_is_refused() -> None:
    clients = Clients()
    server = attack(clients)

    def only_own(message: Message) -> None:
        shares = record(message)
        own = [i for i, src in enumerate(shares["src"]) if src == VICTIM]
        shares["src"] = [VICTIM]
        shares["ciphertexts"] = [shares["ciphertexts"][i] for i in own]

    server.on(protocol.MASK, only_own, [VICTIM])
    server.run(aggregator(), train_messages())
    assert refused(server, VICTIM, "shares from 1 group members arrived, fewer than the "
                                   "threshold 3")
    assert not leaked(server.recover(VICTIM, clients.counts[0]), clients.updates[0])


@pytest.mark.parametrize("alone", ["group-of-one", "threshold-one"])
def test_telling_a_client_it_is_alone_is_refused(alone: str) -> None:
    clients = Clients()
    server = attack(clients)

    def isolate(message: Message) -> None:
        shares = record(message)
        if alone == "group-of-one":
            i = list(shares["nodes"]).index(VICTIM)
            for key in ("nodes", "pk-mask", "pk-enc", "seed-commitments", "identities",
                        "signatures"):
                if key in shares:
                    shares[key] = [shares[key][i]]
        shares["threshold"] = 1

    def own_share_only(message: Message) -> None:
        shares = record(message)
        own = [i for i, src in enumerate(shares["src"]) if src == VICTIM]
        shares["src"], shares["ciphertexts"] = [VICTIM], [shares["ciphertexts"][i] for i in own]

    server.on(protocol.SHARES, isolate, [VICTIM])
    server.on(protocol.MASK, own_share_only, [VICTIM])
    server.run(aggregator(), train_messages())
    reason = ("a share group of 1 is below secagg.min-contributors = 3"
              if alone == "group-of-one" else "threshold 1 for a group of 5 is below")
    assert refused(server, VICTIM, reason)
    assert not leaked(server.recover(VICTIM, clients.counts[0]), clients.updates[0])


def test_substituting_the_peers_keys_is_refused() -> None:
    """The server puts keys it holds in place of every peer's, so it could open the victim's
    shares and compute its pairwise masks."""
    clients = Clients()
    server = attack(clients)
    fake = {node: (keys.new_key_pair(), keys.new_key_pair()) for node in NODES[1:]}
    opened: list[tuple[bytes, bytes]] = []

    def substitute(message: Message) -> None:
        shares = record(message)
        nodes = [int(n) for n in shares["nodes"]]
        for node, ((_, mask_public), (_, enc_public)) in fake.items():
            i = nodes.index(node)
            shares["pk-mask"][i], shares["pk-enc"][i] = mask_public, enc_public

    def forge_forwarded(message: Message) -> None:  # shares "from" the fake peers
        shares, keys_reply = record(message), record(server.reply_from(VICTIM, protocol.KEYS))
        own = shares["ciphertexts"][list(shares["src"]).index(VICTIM)]
        shares["src"] = [VICTIM] + list(fake)
        shares["ciphertexts"] = [own] + [
            keys.seal_shares(enc[0], keys_reply["pk-enc"], node, VICTIM, b"\x00" * 36,
                             b"\x00" * 36) for node, (_, enc) in fake.items()]

    server.on(protocol.SHARES, substitute, [VICTIM])
    server.on(protocol.MASK, forge_forwarded, [VICTIM])
    server.run(aggregator(), train_messages())
    sealed = server.reply_from(VICTIM, protocol.SHARES)
    if sealed is not None:  # the victim shared its secrets with the server's keys: open them
        victim_enc = record(server.reply_from(VICTIM, protocol.KEYS))["pk-enc"]
        for dst, ciphertext in zip(record(sealed)["dst"], record(sealed)["ciphertexts"]):
            if int(dst) in fake:
                opened.append(keys.open_shares(fake[int(dst)][1][0], victim_enc, VICTIM,
                                               int(dst), ciphertext))
        seeds, mask_keys = [o[0] for o in opened], [o[1] for o in opened]
        server.seeds[VICTIM] = keys.rebuild_secret(seeds[:3])
        server.mask_keys[VICTIM] = keys.rebuild_secret(mask_keys[:3])
    assert refused(server, VICTIM, f"participant {NODES[1]}'s keys are not signed by its "
                                   "long-term key")
    assert not opened  # no share of the victim's secrets reached the server's keys
    assert not leaked(server.recover(VICTIM, clients.counts[0]), clients.updates[0])


def test_telling_survivors_different_survivor_sets_is_refused() -> None:
    """The victim and one peer are told the victim survived (they would reveal its seed
    shares), the others that it dropped (they reveal its mask-key shares, as for any dropout:
    that key alone strips only the pairwise masks). The two told the minority's set lack a
    majority's signatures on it and refuse: the seed stays secret."""
    clients = Clients()
    server = attack(clients)
    told_alive = {VICTIM, NODES[1]}

    def split_view(message: Message) -> None:
        sets = record(message)
        if message.metadata.dst_node_id not in told_alive:
            sets["active"] = [n for n in sets["active"] if n != VICTIM]
            sets["dropped"] = sorted(list(sets["dropped"]) + [VICTIM])

    server.on(protocol.CONSISTENCY, split_view)
    server.on(protocol.UNMASK, split_view)
    server.run(aggregator(), train_messages())
    for node in told_alive:
        assert refused(server, node, "valid signatures on this survivor set from client")
    server.learn_from_unmask()
    assert VICTIM not in server.seeds
    assert not leaked(server.recover(VICTIM, clients.counts[0]), clients.updates[0])


def test_declaring_the_victims_mask_peers_dropped_is_refused() -> None:
    """The victim gets the shares of two peers only (its threshold), then those peers are
    declared dropped while the rest survive: their mask keys would strip the victim bare."""
    clients = Clients()
    server = attack(clients)
    peers, others = NODES[1:3], NODES[3:]

    def few_peers(message: Message) -> None:
        shares = record(message)
        keep = [i for i, src in enumerate(shares["src"]) if src in [VICTIM, *peers]]
        shares["src"] = [shares["src"][i] for i in keep]
        shares["ciphertexts"] = [shares["ciphertexts"][i] for i in keep]

    def drop_peers(message: Message) -> None:
        sets = record(message)
        sets["active"] = sorted([VICTIM, *others])
        sets["dropped"] = sorted(peers)

    server.on(protocol.MASK, few_peers, [VICTIM])
    server.on(protocol.CONSISTENCY, drop_peers)
    server.on(protocol.UNMASK, drop_peers)
    server.run(aggregator(), train_messages())
    assert refused(server, VICTIM, "only 1 of the 3 clients this node masked with (itself "
                                   "included) are named survivors, fewer than the threshold 3")
    assert not leaked(server.recover(VICTIM, clients.counts[0]), clients.updates[0])


def test_exhausted_clients_cannot_be_counted_as_survivors() -> None:
    """Four of five clients are out of DP budget. The honest round fails by name; a server
    that pads the round with keys it made for the exhausted clients is refused, so the
    'mean' can never be the one contributor's update."""
    exhausted = {1, 2, 3, 4}
    honest = Clients(exhausted=exhausted).grid
    result = aggregator().run(honest, train_messages(), 10, 1)
    assert result.mean is None
    assert result.failure == ("secure aggregation failed: only 1 of 5 sampled clients can "
                              "contribute, fewer than secagg.min-contributors = 3")

    clients = Clients(exhausted=exhausted)
    server = attack(clients)
    victim_keys = {}

    def pad(message: Message) -> None:
        shares = record(message)
        nodes = [int(n) for n in shares["nodes"]]
        if len(nodes) == len(NODES):
            return
        victim_keys.update(record(server.reply_from(VICTIM, protocol.KEYS)))
        for node in NODES[1:]:
            (_, mask_public), (_, enc_public) = keys.new_key_pair(), keys.new_key_pair()
            nodes.append(node)
            shares["pk-mask"] = list(shares["pk-mask"]) + [mask_public]
            shares["pk-enc"] = list(shares["pk-enc"]) + [enc_public]
            shares["seed-commitments"] = list(shares["seed-commitments"]) + [b"\x00" * 32]
            shares["identities"] = list(shares["identities"]) + [victim_keys["identity"]
                                                                  + bytes([node % 256])]
            shares["signatures"] = list(shares["signatures"]) + [b"forged"]
        shares["nodes"] = nodes

    server.on(protocol.SHARES, pad, [VICTIM])
    outcome = server.run(aggregator(), train_messages())
    assert refused(server, VICTIM, f"participant {NODES[1]}'s long-term key is not in this "
                                   "site's registry")
    assert outcome is None or outcome.mean is None or not leaked(
        np.concatenate([v.ravel() for v in outcome.mean.values()]).astype(np.float64),
        clients.updates[0])
    assert not leaked(server.recover(VICTIM, clients.counts[0]), clients.updates[0])
