"""Homomorphic encryption's pieces (fedmirasol.he) on real CKKS ciphertexts: the decrypted sum
of encrypted updates equals the plain weighted mean within the stated bound; the server's
context and file hold no secret key; a wrong key or a too-small sum fails by name; the sum is
made batch by batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

from fedmirasol.errors import ConfigError
from fedmirasol.he import codec, summing
from fedmirasol.he.ckks import ServerContext, SiteContext, new_site_context
from fedmirasol.he.keyfiles import load_server, load_site, write_key_pair
from fedmirasol.he.params import CkksParameters
from fedmirasol.he.errors import (
    CapacityExceeded, DecryptionFailed, SecretKeyOnServer, TooFewContributors, WrongContext,
)
from fedmirasol.he.packing import Layout, segment
from fedmirasol.he.wire import HEADER_KEY, Header, pack, read_header

SHAPES = {"encoder.weight": (40, 300), "encoder.bias": (40,), "head.weight": (3, 7)}
PARAMS = CkksParameters(poly_modulus_degree=4096)  # small and fast, 128-bit secure


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_key_pair(tmp_path_factory.mktemp("keys"), PARAMS)


def updates(count: int, seed: int = 0, scale: float = 0.05) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{name: (rng.normal(size=shape) * scale).astype(np.float32)
             for name, shape in SHAPES.items()} for _ in range(count)]


def encrypted_sum(site: SiteContext, server: ServerContext, values: list[dict], weights: list[int],
                  batch: int = 2) -> dict[str, np.ndarray]:
    layout = Layout((segment("proposal", "weight", values[0]),))
    replies = [codec.encrypt(site, layout, {"proposal": v}, w, batch, len(values))
               for v, w in zip(values, weights)]
    header = read_header(replies[0])
    batches, members, left_out = summing.sum_replies(server, header, replies)
    assert members == list(range(len(values))) and not left_out
    return pack(header.summed(1, len(members), len(values), "s1"), batches)


def test_decrypted_sum_equals_the_plain_weighted_mean_within_the_bound(keys) -> None:
    site, server = load_site(keys[0]), load_server(keys[1])
    values, weights = updates(4), [30, 5, 12, 1]
    state = encrypted_sum(site, server, values, weights)
    header, sums = codec.decrypt(site, state, min_contributors=2)
    assert (sums.weight, sums.count, header.contributors) == (48.0, 4.0, 4)
    bound = 4 * PARAMS.noise_bound / 48
    worst = 0.0
    for name in SHAPES:
        plain = sum(w * v[name].astype(np.float64) for v, w in zip(values, weights)) / 48
        # the means come back as float32: the bound holds up to float32 rounding
        err = np.abs(sums.segments["proposal"][name] - plain) - np.spacing(
            np.abs(plain).astype(np.float32))
        worst = max(worst, float(err.max()))
        assert sums.segments["proposal"][name].shape == SHAPES[name]
    assert worst <= bound
    assert bound < 1e-7  # N = 4096, scale 2^40


def test_float64_error_of_the_sum_is_real_and_within_the_bound(keys) -> None:
    """The CKKS error itself (float64, before the float32 means): nonzero, below the bound."""
    site, server = load_site(keys[0]), load_server(keys[1])
    values = updates(3, seed=1)
    state = encrypted_sum(site, server, values, [1, 1, 1])
    header = read_header(state)
    got = np.concatenate([site.decrypt(state[f"he.batch.{i:05d}"].tobytes())
                          for i in range(header.batches)])[:header.layout.size]
    plain = np.concatenate([[3.0, 3.0]] + [sum(v[name].astype(np.float64) for v in values)
                                           .reshape(-1) for name in SHAPES])
    error = np.abs(got - plain).max()
    assert 0 < error <= 3 * PARAMS.noise_bound


def test_the_server_holds_no_secret_key(keys) -> None:
    site_file, server_file = keys
    with safe_open(str(server_file), "np") as handle:
        assert list(handle.keys()) == []  # parameters and key id only, in the metadata
        assert set(handle.metadata()) == {"format", "kind", "key-id", "poly-modulus-degree",
                                          "coeff-bits", "scale-bits"}
    with safe_open(str(site_file), "np") as handle:
        assert list(handle.keys()) == ["secret-key"]
    assert site_file.stat().st_mode & 0o777 == 0o600
    server = load_server(server_file)
    assert type(server) is ServerContext
    assert not hasattr(server, "_secret") and not hasattr(server, "decrypt") \
        and not hasattr(server, "encrypt")
    with pytest.raises(SecretKeyOnServer, match="holds a site's secret key"):
        load_server(site_file)
    assert isinstance(SecretKeyOnServer("x"), ConfigError)  # one line from the CLI
    with pytest.raises(WrongContext, match="holds no secret key"):
        load_site(server_file)


def test_a_wrong_key_fails_by_name(keys, tmp_path: Path) -> None:
    site, server = load_site(keys[0]), load_server(keys[1])
    state = encrypted_sum(site, server, updates(2), [1, 2])
    other = load_site(write_key_pair(tmp_path / "other", PARAMS)[0])
    with pytest.raises(WrongContext, match="encrypted under key id"):
        codec.decrypt(other, state, 2)
    # a key whose file claims the federation's key id decrypts to garbage, caught by name
    forged = SiteContext(PARAMS, site.key_id, other._secret)
    with pytest.raises(DecryptionFailed, match="not a positive whole number"):
        codec.decrypt(forged, state, 2)
    # other CKKS parameters
    wide = SiteContext(CkksParameters(), site.key_id, new_site_context(CkksParameters())._secret)
    with pytest.raises(WrongContext, match="do not load under this site's CKKS parameters"):
        codec.decrypt(wide, state, 2)


def test_a_sum_of_too_few_clients_is_refused(keys) -> None:
    site, server = load_site(keys[0]), load_server(keys[1])
    state = encrypted_sum(site, server, updates(2), [1, 1])
    with pytest.raises(TooFewContributors, match="fewer than this site's he.min-contributors"):
        codec.decrypt(site, state, 3)
    # the server's count must match the encrypted one
    header = read_header(state)
    lying = dict(state)
    lying[HEADER_KEY] = Header(header.key_id, header.layout, header.ciphertexts, header.batch,
                               1, 3, 3, "s").to_array()
    with pytest.raises(DecryptionFailed, match="the server says 3"):
        codec.decrypt(site, lying, 2)


def test_values_beyond_the_capacity_are_refused(keys) -> None:
    site = load_site(keys[0])
    layout = Layout((segment("proposal", "weight", {"w": np.zeros(3)}),))
    with pytest.raises(CapacityExceeded, match="lower he.scale-bits") as refused:
        codec.encrypt(site, layout, {"proposal": {"w": np.array([1.0, 2.0, 3.0])}},
                      weight=PARAMS.capacity / 10, batch=1, contributors=10)
    # the message reaches the server: the limit only, not the client's value
    assert f"{PARAMS.capacity * 3 / 10:.4g}" not in str(refused.value)
    with pytest.raises(ValueError, match="NaN or Inf"):
        codec.encrypt(site, layout, {"proposal": {"w": np.array([1.0, np.nan, 3.0])}}, 1, 1, 2)


def test_the_server_sums_batch_by_batch(keys, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every reply's batch b is loaded and added before any reply's batch b + 1: the server
    never deserializes more than one batch per reply; a reply that does not load is left out
    and named."""
    site, server = load_site(keys[0]), load_server(keys[1])
    values = updates(3)
    layout = Layout((segment("proposal", "weight", values[0]),))
    replies = [codec.encrypt(site, layout, {"proposal": v}, 1, 1, 3) for v in values]
    header = read_header(replies[0])
    assert header.batches == header.ciphertexts == 3  # 12061 values + 2 extras, 4096 a ciphertext
    replies[2] = dict(replies[2])
    replies[2]["he.batch.00002"] = np.frombuffer(b"\x00" * 64, np.uint8)
    order = []
    read = summing.batch_bytes

    def spy(arrays, index):  # noqa: ANN001, ANN202
        order.append(index)
        return read(arrays, index)

    monkeypatch.setattr(summing, "batch_bytes", spy)
    batches, members, left_out = summing.sum_replies(server, header, replies)
    assert members == [0, 1] and list(left_out) == [2]
    assert "no SEAL object" in left_out[2]
    # batch-major: the first pass stops at the bad batch, the second sums without its reply
    assert order == [0, 0, 0, 1, 1, 1, 2, 2, 2, 0, 0, 1, 1, 2, 2]
    assert len(batches) == 3
    state = pack(header.summed(1, 2, 3, "s"), batches)
    _, sums = codec.decrypt(site, state, 2)
    plain = (values[0]["head.weight"] + values[1]["head.weight"]) / 2
    np.testing.assert_allclose(sums.segments["proposal"]["head.weight"], plain, atol=1e-6)


def test_parameters_and_security() -> None:
    assert CkksParameters().security_level() == 256  # N 8192, 60 bits <= 118
    assert CkksParameters(8192, (60, 40, 40)).security_level() == 192  # NVFlare's: 140 <= 152
    assert CkksParameters(4096, (60,)).security_level() == 192
    with pytest.raises(ConfigError, match="below 128-bit security"):
        CkksParameters(1024, (60,)).security_level()
    params = CkksParameters()
    assert params.capacity == 2.0 ** 17 and params.values_per_ciphertext == 8192
    assert params.noise_bound == pytest.approx(8192 * 21.5 / 2 ** 40)
