"""A site's two operations: encrypt its values for the sum, decrypt a sum into means."""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import numpy as np

from fedmirasol.he.ckks import SiteContext, check_key
from fedmirasol.he.errors import DecryptionFailed, TooFewContributors
from fedmirasol.he.packing import Layout, Reader, Sums, encrypt_batches
from fedmirasol.he.wire import Header, batch_bytes, pack, read_header

INTEGER_SLACK = 1e-3  # decrypted weight and count sums are whole numbers within the CKKS error


def encrypt(site: SiteContext, layout: Layout, values: Mapping[str, Mapping[str, np.ndarray]],
            weight: float, batch: int, contributors: int,
            into: Callable[[np.ndarray], Any] = lambda array: array) -> dict[str, Any]:
    """The arrays of an encrypted reply: `values` by segment of `layout`, weighted by
    `weight` where the segment says so. `contributors`: how many such replies may be summed
    (each value must leave room for that many in the CKKS capacity); `into`: see `pack`."""
    per = site.params.values_per_ciphertext
    batches = encrypt_batches(layout, values, weight, batch * per,
                              site.params.capacity / max(1, contributors), site.encrypt)
    header = Header(site.key_id, layout, layout.ciphertexts(per), batch)
    return pack(header, batches, into)


def _whole(value: float, name: str) -> float:
    rounded = round(value)
    if not math.isfinite(value) or abs(value - rounded) > INTEGER_SLACK or rounded < 1:
        raise DecryptionFailed(
            f"the {name} decrypts to {value:.6g}, not a positive whole number: this site's "
            "secret key is not the one the ciphertexts were made with (a site context whose "
            "key does not match its key id), or the ciphertexts are corrupt")
    return float(rounded)


def decrypt(site: SiteContext, arrays: Mapping[str, Any], min_contributors: int
            ) -> tuple[Header, Sums]:
    """The means a sum holds (`arrays`: the server's encrypted state), batch by batch.
    WrongContext when it is under another key id, TooFewContributors when fewer than
    `min_contributors` clients are in it, DecryptionFailed when it does not decrypt to a
    valid sum."""
    try:
        header = read_header(arrays)
    except ValueError as error:
        raise DecryptionFailed(f"the encrypted state is malformed: {error}") from None
    check_key(site, header.key_id, "the server's encrypted state")
    if header.contributors < min_contributors:
        raise TooFewContributors(f"the sum holds {header.contributors} clients' updates, fewer "
                                 f"than this site's he.min-contributors = {min_contributors}")

    def divisors(weight: float, count: float) -> tuple[float, float]:
        count = _whole(count, "contributor count")
        if count != header.contributors:
            raise DecryptionFailed(f"the sum's contributor count decrypts to {count:g}, but "
                                   f"the server says {header.contributors}")
        return _whole(weight, "weight sum"), count

    reader = Reader(header.layout, header.sampled, divisors)
    for index in range(header.batches):
        try:
            data = batch_bytes(arrays, index)
        except ValueError as error:
            raise DecryptionFailed(f"the encrypted state is malformed: {error}") from None
        values = site.decrypt(data)
        if index == header.batches - 1:
            values = values[:header.layout.size - index * header.batch *
                            site.params.values_per_ciphertext]
        reader.feed(values)
    try:
        return header, reader.result()
    except ValueError as error:
        raise DecryptionFailed(f"the encrypted state is malformed: {error}") from None
