"""A real anvil (Foundry's EVM node) for the payment end-to-end tests.

The launcher is the gas benchmark's (``bench.pay_gas.running_anvil``): the binary is
``$THETADIST_ANVIL``, else ``.tools/node_modules/.bin/anvil`` in the repository (``.ci/run``
installs it there from npm), else ``anvil`` on PATH.  A missing anvil FAILS the test with a
message saying how to install it — never a skip: a skipped end-to-end test proves nothing.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench.pay_gas import AnvilMissing, find_anvil, running_anvil


@pytest.fixture(scope="module")
def anvil() -> Iterator[str]:
    """The JSON-RPC URL of a fresh anvil, shared by the tests of one module."""
    try:
        find_anvil()
    except AnvilMissing as problem:
        pytest.fail(str(problem), pytrace=False)
    with running_anvil() as url:
        yield url
