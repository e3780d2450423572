"""Amounts of the chain's native coin: parsing ``1.5ether`` / ``20 gwei`` and printing wei.

Everything is integer wei inside the toolkit.  Parsing goes through :class:`~decimal.Decimal`
arithmetic on the digits as written (never a float), so ``0.1ether`` is exactly 10**17 wei,
and an amount that would need a fraction of a wei is refused rather than rounded.  Printing
picks a unit that keeps the number short and writes it exactly, so ``parse_amount`` of what
``format_amount`` printed is the same integer.
"""

from __future__ import annotations

import re
from decimal import Decimal, localcontext

from thetadist.errors import UsageError

#: Decimal exponents of the denominations people write (names from the Ethereum unit table).
UNITS: dict[str, int] = {
    "wei": 0,
    "kwei": 3,
    "mwei": 6,
    "gwei": 9,
    "szabo": 12,
    "finney": 15,
    "eth": 18,
    "ether": 18,
}
MAX_WEI = (1 << 256) - 1
#: A uint256 has 78 digits; anything much longer is not an amount, and a bound keeps Decimal
#: arithmetic cheap on hostile input.
MAX_AMOUNT_TEXT = 100
_PATTERN = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*", re.ASCII)


def parse_amount(text: str) -> int:
    """``"1.5ether"`` → 1500000000000000000; a bare number is wei.  Raises :class:`UsageError`."""
    if len(text) > MAX_AMOUNT_TEXT:
        raise UsageError(f"not an amount (too long): {text[:40]!r}…")
    if text.strip().startswith("-"):
        raise UsageError(f"amounts cannot be negative: {text.strip()!r}")
    match = _PATTERN.fullmatch(text)
    unit = match.group(2).lower() if match else ""
    if not match or (unit and unit not in UNITS):
        raise UsageError(f"not an amount: {text[:40]!r} (examples: 1.5ether, 20gwei, 1000wei)")
    with localcontext() as context:
        context.prec = MAX_AMOUNT_TEXT + 20  # exact for every input the length check lets in
        wei = Decimal(match.group(1)).scaleb(UNITS[unit or "wei"])
    if wei != wei.to_integral_value():
        raise UsageError(f"{text.strip()!r} is not a whole number of wei")
    value = int(wei)
    if value > MAX_WEI:
        raise UsageError(f"{text.strip()!r} does not fit in 256 bits")
    return value


def format_amount(wei: int) -> str:
    """``12500000000000000`` → ``"0.0125 ether"``, ``20000000000`` → ``"20 gwei"``; exact."""
    if wei < 0:
        raise ValueError("amounts are never negative")
    # ether from a thousandth up, gwei from a thousandth of a gwei up, wei below that
    for unit, exponent in (("ether", 18), ("gwei", 9)):
        if wei >= 10 ** (exponent - 3):
            whole, fraction = divmod(wei, 10**exponent)
            digits = str(fraction).rjust(exponent, "0").rstrip("0")
            return f"{whole}.{digits} {unit}" if digits else f"{whole} {unit}"
    return f"{wei} wei"
