"""Does the server's privacy request give this site at least what it demands? Decided before
anything reads the site's data; a weaker request is refused, naming the run-config key."""

from __future__ import annotations

import math

from fedmirasol.config.privacy import PrivacyConfig, SitePrivacyConfig
from fedmirasol.errors import ConfigError


def _refuse(reason: str) -> ConfigError:
    return ConfigError(f"this site refuses the run's privacy settings: {reason}")


def check_request(request: PrivacyConfig, site: SitePrivacyConfig) -> None:
    """Raise ConfigError naming the first key of `request` that asks for less than `site`."""
    if not request.enabled:
        if site.demands_dp:
            why = ("node config privacy.required = true" if site.required
                   else "the site sets a privacy budget or a minimum noise")
            raise _refuse(f"privacy.enabled is false, but this site trains only under DP-SGD "
                          f"({why})")
        return
    if request.delta > site.max_delta:
        raise _refuse(f"privacy.delta = {request.delta:g} is above the site's privacy.max-delta "
                      f"= {site.max_delta:g}")
    if site.accountant and request.accountant != site.accountant:
        raise _refuse(f"privacy.accountant = {request.accountant!r}, the site pins "
                      f"{site.accountant!r}")
    if site.unit and request.unit != site.unit:
        raise _refuse(f"privacy.unit = {request.unit!r}, the site demands {site.unit!r}")
    if not request.calibrated and request.noise_multiplier < site.min_noise_multiplier:
        raise _refuse(f"privacy.noise-multiplier = {request.noise_multiplier:g} is below the "
                      f"site's privacy.min-noise-multiplier = {site.min_noise_multiplier:g}")
    if 0 < request.eval_noise_multiplier < site.min_noise_multiplier:
        raise _refuse(f"privacy.eval-noise-multiplier = {request.eval_noise_multiplier:g} is "
                      f"below the site's privacy.min-noise-multiplier = "
                      f"{site.min_noise_multiplier:g}")
    if site.max_epsilon > 0 and request.target_epsilon > site.max_epsilon:
        raise _refuse(f"privacy.target-epsilon = {request.target_epsilon:g} is above the site's "
                      f"privacy.max-epsilon = {site.max_epsilon:g} per run")


def check_calibrated(noise_multiplier: float, request: PrivacyConfig,
                     site: SitePrivacyConfig) -> None:
    """In target mode: the sigma the target calibrates to must meet the site's minimum."""
    if noise_multiplier < site.min_noise_multiplier:
        raise _refuse(f"privacy.target-epsilon = {request.target_epsilon:g} calibrates the noise "
                      f"multiplier to {noise_multiplier:.4g}, below the site's "
                      f"privacy.min-noise-multiplier = {site.min_noise_multiplier:g}")


def run_budget(request: PrivacyConfig, site: SitePrivacyConfig) -> float:
    """The epsilon this run may spend on the site: the server's budget, capped by the site's."""
    cap = site.max_epsilon if site.max_epsilon > 0 else math.inf
    return min(request.budget, cap)


def lifetime_budget(site: SitePrivacyConfig) -> float:
    return site.lifetime_epsilon if site.lifetime_epsilon > 0 else math.inf
