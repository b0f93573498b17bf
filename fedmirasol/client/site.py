"""A site's own settings, read from its SuperNode's node config.

    flower-supernode ... --node-config 'partition-id=0 num-partitions=3
        state-dir="/var/lib/fedmirasol" data.manifest="/data/clips.csv" client.device="cuda"
        model.num-frames=32 privacy.required=true privacy.lifetime-epsilon=8.0
        privacy.dataset-id="clinic-videos"'

(or ``--node-config site.toml`` with the same keys). Keys:

- ``partition-id``, ``num-partitions``: which client of the federation this site is.
- ``state-dir``: the site's disk for what must survive a SuperNode restart (local and
  normalization layers, the DP accountant, personal models), one folder per run; it takes
  precedence over the ``client-state-dir`` a simulation's server sends.
- ``data.manifest``: the site's own media manifest, used whole (split into train/validation by
  ``data.val-fraction``); the run's ``data.source`` becomes ``"site"`` on this node.
- ``client.*`` keys in `SITE_KEYS` (device, threads, batch sizes, local epochs) and
  ``privacy.max-physical-batch-size``: the site's hardware.
- ``privacy.<key>`` for the keys of `SitePrivacyConfig` (`POLICY_KEYS`: required,
  min-noise-multiplier, max-epsilon, max-delta, accountant, unit, lifetime-epsilon,
  dataset-id, eval-split): what the site demands of any run on its data
  (`fedmirasol.privacy.site_policy`). They replace whatever the server's run config says
  under ``[site-privacy]``: a client never takes its site's policy from the server.
- ``secagg-key``, ``secagg-registry``: the site's long-term key (its SuperNode key) and the
  registry of public keys it accepts secure-aggregation peers from; ``secagg.min-contributors``
  and ``secagg.reconstruction-fraction``: the least this site accepts (`fedmirasol.secagg`).
- ``he-secret-context``: the site file of `fedmirasol he-keys` (the federation's secret CKKS
  key); ``he.min-contributors``: the fewest clients' updates in a sum this site decrypts
  (`fedmirasol.he`).
- ``audit.canary-dir``: the folder where an auditor put this site's canary clips
  (`fedmirasol privacy-audit`); taken from the node config only, never from the server.
- ``pretrained.checkpoint``: where this site keeps its copy of the run's pre-trained checkpoint
  (it must be the server's file: its SHA-256 is checked against ``pretrained.sha256``).
- ``model.<field>``: model settings suited to the site that keep every parameter's shape (for
  example ``model.num-frames``: longer clips on a silo's GPU, shorter on an edge device); a
  field that would change a shape is refused, since the federation averages one architecture.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Mapping

from fedmirasol.config import RunConfig, with_values
from fedmirasol.config.base import dashed
from fedmirasol.config.privacy import SAFE_NAME, SitePrivacyConfig
from fedmirasol.errors import ConfigError

NODE_KEYS = ("partition-id", "num-partitions", "state-dir", "secagg-key", "secagg-registry",
             "he-secret-context")
SITE_KEYS = ("data.manifest", "client.device", "client.threads", "client.batch-size",
             "client.eval-batch-size", "client.local-epochs",
             "privacy.max-physical-batch-size", "pretrained.checkpoint",
             "secagg.min-contributors", "secagg.reconstruction-fraction", "he.min-contributors",
             "audit.canary-dir")
# The site's privacy policy: node key privacy.<field> -> run config key site-privacy.<field>
POLICY_KEYS = {f"privacy.{dashed(name)}": f"site-privacy.{dashed(name)}"
               for name in SitePrivacyConfig.model_fields}
RETIRED_KEYS = {"privacy.budget-epsilon": "privacy.max-epsilon (per run) or "
                                          "privacy.lifetime-epsilon (over all runs on "
                                          "privacy.dataset-id)"}


def site_overrides(node_config: Mapping[str, Any]) -> dict[str, Any]:
    """The run-config keys this node overrides; unknown node-config keys raise, naming them."""
    overrides: dict[str, Any] = {}
    for key, value in node_config.items():
        if key in NODE_KEYS:
            continue
        if key in RETIRED_KEYS:
            raise KeyError(f"node config key {key!r} is ambiguous; use {RETIRED_KEYS[key]}")
        if key in POLICY_KEYS:
            overrides[POLICY_KEYS[key]] = value
            continue
        if key not in SITE_KEYS and not key.startswith("model."):
            raise KeyError(f"node config key {key!r} is not a site setting; use one of "
                           f"{NODE_KEYS + SITE_KEYS + tuple(POLICY_KEYS)} or model.<field>")
        overrides[key] = value
    if "data.manifest" in overrides:
        overrides["data.source"] = "site"
    return overrides


def apply_site(config: Mapping[str, Any], node_config: Mapping[str, Any]) -> RunConfig:
    """`config` with this node's site settings applied (validated); unchanged without any.
    The site's privacy policy comes from the node config alone (defaults where it sets none),
    never from the server's run config."""
    overrides = site_overrides(node_config)
    if config.site_privacy != SitePrivacyConfig():
        config = config.model_copy(update={"site_privacy": SitePrivacyConfig()})
    if config.audit.canary_dir:  # the site's own data: never the server's to name
        config = config.model_copy(update={"audit": config.audit.model_copy(
            update={"canary_dir": ""})})
    if not overrides:
        return config
    return _apply_cached(config, tuple(sorted(overrides.items())))


@functools.lru_cache(maxsize=8)
def _apply_cached(config: RunConfig, overrides: tuple[tuple[str, Any], ...]) -> RunConfig:
    site = with_values(config, dict(overrides))
    model_keys = [key for key, _ in overrides if key.startswith("model.")]
    if model_keys:
        _check_same_shapes(config, site, model_keys)
    return site


def _shapes(config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    from fedmirasol.models import build_model

    model = build_model(config.model.mirasol, device="meta")
    return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}


def _check_same_shapes(config: Mapping[str, Any], site: Mapping[str, Any],
                       keys: list[str]) -> None:
    federation, local = _shapes(config), _shapes(site)
    if federation != local:
        changed = sorted(set(federation) ^ set(local)
                         | {n for n in set(federation) & set(local) if federation[n] != local[n]})
        raise ValueError(f"node config {keys} changes the model's parameters "
                         f"({changed[0]!r}, ...); a site may only change settings that keep "
                         "the federation's architecture (e.g. model.num-frames)")


def state_dir(node_config: Mapping[str, Any], run_name: str) -> str:
    """This run's folder under the node's ``state-dir`` ('' when the node sets none). The run
    name comes from the server: one that could leave the folder is refused."""
    root = site_root(node_config)
    if not root:
        return ""
    name = run_name or "run"
    if not SAFE_NAME.fullmatch(name) or name == "privacy":
        raise ConfigError(f"the server's run name {name!r} is not a plain folder name (letters, "
                          "digits, '.', '_', '-'); this site keeps its state only under its "
                          "own state-dir")
    return str(Path(root) / name)


def site_root(node_config: Mapping[str, Any]) -> str:
    """The node's own ``state-dir`` ('' when it sets none)."""
    root = str(node_config.get("state-dir", ""))
    return str(Path(root).expanduser()) if root else ""
