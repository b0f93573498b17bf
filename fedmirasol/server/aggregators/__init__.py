"""Aggregators, one per run: how a round's updates become the new global model.

A new aggregator (homomorphic encryption, compressed updates, ...) is an `Aggregator` in its
own module, one entry in `AGGREGATORS` and its rule in `choose_aggregator`.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from fedmirasol.config.run import RunConfig
from fedmirasol.secagg.server import build_aggregator as build_secagg_protocol
from fedmirasol.server.aggregators.audited import AuditedMean, Auditor
from fedmirasol.server.aggregators.base import Aggregator, TrainOutcome
from fedmirasol.server.aggregators.client_level_dp import ClientLevelDPMean
from fedmirasol.server.aggregators.he import HEMean
from fedmirasol.server.aggregators.compressed import CompressedMean
from fedmirasol.server.aggregators.fltrust import FLTrustMean
from fedmirasol.server.aggregators.mean import StrategyMean
from fedmirasol.server.aggregators.secure import SecureMean

AGGREGATORS: dict[str, type[Aggregator]] = {
    StrategyMean.name: StrategyMean,
    ClientLevelDPMean.name: ClientLevelDPMean,
    SecureMean.name: SecureMean,
    HEMean.name: HEMean,
    CompressedMean.name: CompressedMean,
    AuditedMean.name: AuditedMean,
    FLTrustMean.name: FLTrustMean,
}


def choose_aggregator(config: RunConfig, global_shared: Mapping[str, np.ndarray],
                      auditor: Auditor | None = None) -> Aggregator:
    """The run's aggregator: the strategy's mean, or client-level DP's noised mean under
    `privacy.client-level`; either of them over a secure sum under `secagg.enabled`; the sum
    of encrypted updates under `he.enabled` (the server holds the `he.public-context`);
    FLTrust's trust-scored mean under `strategy.name = "fltrust"`; the
    mean of decoded updates under `compression.*`; or observed by an audit's `auditor`
    (`fedmirasol privacy-audit`, never with secure, encrypted or compressed updates)."""
    if config.he.enabled:
        if auditor is not None:
            raise ValueError("an audit needs the updates in the clear: he.enabled = false")
        from fedmirasol.he.keyfiles import load_server  # SEAL: only under HE

        context = load_server(config.he.public_context)
        return AGGREGATORS[HEMean.name](context, config)  # type: ignore[call-arg]
    if config.strategy.name == "fltrust":  # scores every update against its own reference
        mean = AGGREGATORS[FLTrustMean.name](config)  # type: ignore[call-arg]
    else:
        mean = AGGREGATORS[ClientLevelDPMean.name if config.privacy.client_level
                           else StrategyMean.name]()
    if auditor is not None:
        if config.secagg.enabled or config.compression.enabled:
            raise ValueError("an audit needs the updates in the clear and uncompressed: "
                             "no secagg.enabled, no compression")
        return AGGREGATORS[AuditedMean.name](mean, auditor)  # type: ignore[call-arg]
    if config.secagg.enabled:
        protocol = build_secagg_protocol(config, global_shared)
        return AGGREGATORS[SecureMean.name](protocol, mean)  # type: ignore[call-arg]
    if config.compression.enabled:
        return AGGREGATORS[CompressedMean.name](  # type: ignore[call-arg]
            mean, config.compression, config.seed)
    return mean


__all__ = ["AGGREGATORS", "Aggregator", "Auditor", "TrainOutcome", "choose_aggregator"]
