"""The format of an age X25519 recipient (``age1...``), checked with the standard library alone.

The config is validated at load, before any work, and ``core`` is the lowest layer: it cannot ask
``repo.crypto`` (pyrage) whether a recipient parses. A recipient is Bech32 (BIP 173, not Bech32m) with the
human-readable part ``age`` and a 32-byte X25519 public key, so its format can be checked here exactly;
``repo.crypto`` still parses it into a key where it encrypts.
"""

from __future__ import annotations

_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_GENERATOR = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)
_BECH32_CONSTANT = 1
_KEY_BYTES = 32
_CHECKSUM_CHARS = 6


def _polymod(values: list[int]) -> int:
    checksum = 1
    for value in values:
        top = checksum >> 25
        checksum = (checksum & 0x1FFFFFF) << 5 ^ value
        for i, generator in enumerate(_GENERATOR):
            if (top >> i) & 1:
                checksum ^= generator
    return checksum


def is_age_recipient(text: str) -> bool:
    """Whether ``text`` (surrounding blanks aside) is an age X25519 recipient, as age and rage read one."""
    text = text.strip()
    if text != text.lower() and text != text.upper():
        return False
    hrp, separator, data = text.lower().rpartition("1")
    if hrp != "age" or not separator or any(char not in _CHARSET for char in data):
        return False
    values = [_CHARSET.index(char) for char in data]
    expanded = [ord(char) >> 5 for char in hrp] + [0] + [ord(char) & 31 for char in hrp]
    if _polymod(expanded + values) != _BECH32_CONSTANT:
        return False
    payload = values[:-_CHECKSUM_CHARS]
    bits = len(payload) * 5
    if bits // 8 != _KEY_BYTES or bits % 8 >= 5:
        return False
    number = 0
    for value in payload:
        number = number << 5 | value
    return number & ((1 << bits % 8) - 1) == 0  # the padding bits are zero
