"""EIP-712 vouchers: the fast path against eth-account, the contract's signature rules, the
wire codec on hostile bytes."""

from __future__ import annotations

import os

import pytest
from coincurve import PublicKey
from eth_account import Account
from eth_account.messages import encode_typed_data
from hypothesis import given, settings
from hypothesis import strategies as st

import thetadist.pay.voucher as voucher_module
from bench.pay_gas import voucher_typed_data
from thetadist.errors import InvalidTicket
from thetadist.pay.voucher import (
    MAX_UINT64,
    MAX_UINT256,
    SECP256K1_N,
    WIRE_SIZE,
    Domain,
    PayerKeys,
    SignedVoucher,
    Voucher,
    VoucherSigner,
    keccak256,
    recover_signer,
    verify,
    with_recovering_v,
)
from thetadist.wire.messages import MAX_VOUCHER_SIZE

KEY = bytes.fromhex("4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318")
CONTRACT = bytes.fromhex("cccccccccccccccccccccccccccccccccccccccc")
PAYEE = bytes.fromhex("bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb")
DOMAIN = Domain(31337, CONTRACT)

private_keys = st.integers(1, SECP256K1_N - 1).map(lambda k: k.to_bytes(32, "big"))
addresses = st.binary(min_size=20, max_size=20)
domains = st.builds(Domain, st.integers(1, MAX_UINT64), addresses)


def typed_data(voucher: Voucher, domain: Domain) -> dict:
    return voucher_typed_data(
        "0x" + voucher.payer.hex(),
        "0x" + voucher.payee.hex(),
        voucher.epoch,
        voucher.cumulative,
        chain_id=domain.chain_id,
        contract="0x" + domain.contract.hex(),
    )


def signed_by(key: bytes = KEY, cumulative: int = 10**15, domain: Domain = DOMAIN) -> SignedVoucher:
    signer = VoucherSigner(key, domain)
    return signer.sign(Voucher(signer.address, PAYEE, 7, cumulative))


def with_signature(signed: SignedVoucher, signature: bytes) -> SignedVoucher:
    return SignedVoucher(signed.voucher, signature)


def test_keccak_is_ethereum_keccak_not_sha3() -> None:
    assert keccak256(b"").hex() == (
        "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"
    )


def test_signer_address_matches_eth_account() -> None:
    assert "0x" + VoucherSigner(KEY, DOMAIN).address.hex() == Account.from_key(KEY).address.lower()


@settings(max_examples=60, deadline=None)
@given(
    key=private_keys,
    payee=addresses,
    epoch=st.integers(0, MAX_UINT64),
    cumulative=st.integers(0, MAX_UINT256),
    domain=domains,
)
def test_fast_path_matches_eth_account(
    key: bytes, payee: bytes, epoch: int, cumulative: int, domain: Domain
) -> None:
    signer = VoucherSigner(key, domain)
    voucher = Voucher(signer.address, payee, epoch, cumulative)
    signed = signer.sign(voucher)
    message = typed_data(voucher, domain)
    signable = encode_typed_data(full_message=message)
    assert voucher.digest(domain) == keccak256(
        b"\x19" + signable.version + signable.header + signable.body
    )
    reference = Account.sign_typed_data(key, full_message=message)
    assert signed.signature == bytes(reference.signature)  # both RFC 6979, low s, v = 27/28
    assert Account.recover_message(signable, signature=signed.signature).lower() == (
        "0x" + signer.address.hex()
    )
    assert recover_signer(signed, domain) == signer.address
    verify(signed, domain)


def test_signatures_are_low_s_with_ethereum_v() -> None:
    for cumulative in range(1, 200):
        signature = signed_by(cumulative=cumulative).signature
        assert signature[64] in (27, 28)
        assert int.from_bytes(signature[32:64], "big") <= SECP256K1_N // 2


@pytest.mark.parametrize(
    "domain",
    [Domain(1, CONTRACT), Domain(31337, bytes(19) + b"\x01")],
    ids=["other chain", "other contract"],
)
def test_a_voucher_is_bound_to_its_domain(domain: Domain) -> None:
    with pytest.raises(InvalidTicket, match="recovers to"):
        verify(signed_by(), domain)


@pytest.mark.parametrize("field", ["payee", "epoch", "cumulative"])
def test_tampering_breaks_the_signature(field: str) -> None:
    signed = signed_by()
    changes = {"payee": bytes(20), "epoch": 8, "cumulative": signed.cumulative + 1}
    fields = {
        "payer": signed.payer,
        "payee": signed.payee,
        "epoch": signed.epoch,
        "cumulative": signed.cumulative,
    }
    fields[field] = changes[field]
    with pytest.raises(InvalidTicket, match="recovers to"):
        verify(SignedVoucher(Voucher(**fields), signed.signature), DOMAIN)


def test_someone_else_signing_for_the_payer_is_rejected() -> None:
    mallory = VoucherSigner(os.urandom(31) + b"\x01", DOMAIN)
    forged = mallory.sign(Voucher(mallory.address, PAYEE, 7, 1))
    claimed = SignedVoucher(
        Voucher(VoucherSigner(KEY, DOMAIN).address, PAYEE, 7, 1), forged.signature
    )
    with pytest.raises(InvalidTicket, match="recovers to"):
        verify(claimed, DOMAIN)


def test_high_s_twin_is_rejected() -> None:
    """(r, n − s, the other v) is just as valid to ecrecover; the contract and we refuse it."""
    signed = signed_by()
    r, s, v = (
        signed.signature[:32],
        int.from_bytes(signed.signature[32:64], "big"),
        signed.signature[64],
    )
    twin = r + (SECP256K1_N - s).to_bytes(32, "big") + bytes((55 - v,))  # 27 <-> 28
    recovered = PublicKey.from_signature_and_message(
        twin[:64] + bytes((twin[64] - 27,)), signed.voucher.digest(DOMAIN), hasher=None
    )
    assert voucher_module.address_of(recovered) == signed.payer  # a genuine malleable twin
    with pytest.raises(InvalidTicket, match="high s"):
        verify(with_signature(signed, twin), DOMAIN)


@pytest.mark.parametrize("v", [0, 1, 26, 29, 255])
def test_v_must_be_27_or_28(v: int) -> None:
    signed = signed_by()
    with pytest.raises(InvalidTicket, match="v must be 27 or 28"):
        verify(with_signature(signed, signed.signature[:64] + bytes((v,))), DOMAIN)


@pytest.mark.parametrize(
    ("r", "s", "reason"),
    [
        (0, 1, "r out of range"),
        (SECP256K1_N, 1, "r out of range"),
        (2**256 - 1, 1, "r out of range"),
        (1, 0, "s out of range"),
        (1, SECP256K1_N // 2 + 1, "s out of range"),
    ],
)
def test_r_and_s_ranges(r: int, s: int, reason: str) -> None:
    signature = r.to_bytes(32, "big") + s.to_bytes(32, "big") + b"\x1b"
    with pytest.raises(InvalidTicket, match=reason):
        verify(with_signature(signed_by(), signature), DOMAIN)


def test_unrecoverable_signature() -> None:
    # an r that is not the x coordinate of any curve point: nothing recovers from it
    digest = signed_by().voucher.digest(DOMAIN)
    r = next(
        candidate
        for candidate in range(1, 1000)
        if not _recovers(candidate.to_bytes(32, "big") + (1).to_bytes(32, "big") + b"\x00", digest)
    )
    signature = r.to_bytes(32, "big") + (1).to_bytes(32, "big") + b"\x1b"
    with pytest.raises(InvalidTicket, match="does not recover"):
        verify(with_signature(signed_by(), signature), DOMAIN)


def _recovers(compact: bytes, digest: bytes) -> bool:
    try:
        PublicKey.from_signature_and_message(compact, digest, hasher=None)
    except ValueError:
        return False
    return True


def test_zero_address_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(voucher_module, "address_of", lambda public_key: bytes(20))
    with pytest.raises(InvalidTicket, match="zero address"):
        recover_signer(signed_by(), DOMAIN)


@settings(max_examples=200, deadline=None)
@given(signature=st.binary(min_size=65, max_size=65), cumulative=st.integers(0, MAX_UINT256))
def test_verify_of_random_signatures_raises_only_invalid_ticket(
    signature: bytes, cumulative: int
) -> None:
    signed = SignedVoucher(Voucher(bytes(20), PAYEE, 0, cumulative), signature)
    with pytest.raises(InvalidTicket):
        verify(signed, DOMAIN)


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ((bytes(19), PAYEE, 0, 0), "payer"),
        ((PAYEE, b"x" * 21, 0, 0), "payee"),
        ((PAYEE, "bb" * 20, 0, 0), "payee"),
        ((PAYEE, PAYEE, -1, 0), "epoch"),
        ((PAYEE, PAYEE, MAX_UINT64 + 1, 0), "epoch"),
        ((PAYEE, PAYEE, True, 0), "epoch"),
        ((PAYEE, PAYEE, 0, -1), "cumulative"),
        ((PAYEE, PAYEE, 0, MAX_UINT256 + 1), "cumulative"),
        ((PAYEE, PAYEE, 0, 1.0), "cumulative"),
    ],
)
def test_voucher_fields_are_validated(fields: tuple, reason: str) -> None:
    with pytest.raises(InvalidTicket, match=reason):
        Voucher(*fields)


def test_domain_and_signer_are_validated() -> None:
    for chain_id, contract in [(0, CONTRACT), (MAX_UINT64 + 1, CONTRACT), (1, b"short")]:
        with pytest.raises(InvalidTicket):
            Domain(chain_id, contract)
    for key in [bytes(32), SECP256K1_N.to_bytes(32, "big"), b"short"]:
        with pytest.raises(InvalidTicket, match="private key"):
            VoucherSigner(key, DOMAIN)
    with pytest.raises(InvalidTicket, match="signature must be 65"):
        SignedVoucher(Voucher(PAYEE, PAYEE, 0, 0), bytes(64))


def test_signer_signs_only_for_itself_and_hides_its_key() -> None:
    signer = VoucherSigner(KEY, DOMAIN)
    with pytest.raises(InvalidTicket, match="not this wallet"):
        signer.sign(Voucher(PAYEE, PAYEE, 0, 1))
    assert KEY.hex() not in repr(signer) and signer.address.hex() in repr(signer)


def test_domains_with_equal_fields_are_equal() -> None:
    assert Domain(5, CONTRACT) == Domain(5, CONTRACT)
    assert Domain(5, CONTRACT).separator == Domain(5, CONTRACT).separator
    assert Domain(5, CONTRACT).separator != Domain(6, CONTRACT).separator


# -- wire codec --------------------------------------------------------------------------


def test_wire_size_fits_a_voucher_message() -> None:
    encoded = signed_by().encode()
    assert len(encoded) == WIRE_SIZE == 146 <= MAX_VOUCHER_SIZE


@settings(max_examples=300)
@given(
    payer=addresses,
    payee=addresses,
    epoch=st.integers(0, MAX_UINT64),
    cumulative=st.integers(0, MAX_UINT256),
    signature=st.binary(min_size=65, max_size=65),
)
def test_wire_round_trip(
    payer: bytes, payee: bytes, epoch: int, cumulative: int, signature: bytes
) -> None:
    signed = SignedVoucher(Voucher(payer, payee, epoch, cumulative), signature)
    assert SignedVoucher.decode(signed.encode()) == signed
    assert SignedVoucher.decode(memoryview(bytearray(signed.encode()))) == signed


@settings(max_examples=1000)
@given(data=st.binary(max_size=300) | st.binary(min_size=WIRE_SIZE, max_size=WIRE_SIZE))
def test_decode_of_arbitrary_bytes_raises_only_invalid_ticket(data: bytes) -> None:
    try:
        decoded = SignedVoucher.decode(data)
    except InvalidTicket:
        return
    assert decoded.encode() == data


def test_decode_rejects_unknown_format_and_sizes() -> None:
    encoded = signed_by().encode()
    with pytest.raises(InvalidTicket, match="format"):
        SignedVoucher.decode(b"\x02" + encoded[1:])
    for data in (b"", encoded[:-1], encoded + b"\x00"):
        with pytest.raises(InvalidTicket, match="146 bytes"):
            SignedVoucher.decode(data)
    verify(SignedVoucher.decode(encoded), DOMAIN)


# -- checking against a payer's known key --------------------------------------------------


def with_other_v(signed: SignedVoucher) -> SignedVoucher:
    return with_signature(signed, signed.signature[:64] + bytes((55 - signed.signature[64],)))


def test_payer_keys_recover_a_stranger_then_check_against_its_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    recoveries = []
    recover = voucher_module._recover
    monkeypatch.setattr(
        voucher_module, "_recover", lambda *args: recoveries.append(1) or recover(*args)
    )
    keys = PayerKeys()
    keys.verify(signed_by(cumulative=1), DOMAIN, recover=False)  # a stranger: recovered
    for cumulative in range(2, 6):
        keys.verify(signed_by(cumulative=cumulative), DOMAIN, recover=False)
    assert len(recoveries) == 1
    keys.verify(signed_by(cumulative=6), DOMAIN)  # asked to: recovered again
    assert len(recoveries) == 2


def known_keys() -> PayerKeys:
    keys = PayerKeys()
    keys.verify(signed_by(cumulative=1), DOMAIN)
    return keys


@pytest.mark.parametrize("field", ["payee", "epoch", "cumulative"])
def test_the_known_key_refuses_tampering(field: str) -> None:
    signed = signed_by()
    fields = {
        "payer": signed.payer,
        "payee": signed.payee,
        "epoch": signed.epoch,
        "cumulative": signed.cumulative,
    }
    fields[field] = {"payee": bytes(20), "epoch": 8, "cumulative": signed.cumulative + 1}[field]
    with pytest.raises(InvalidTicket, match="not signed by that payer"):
        known_keys().verify(
            SignedVoucher(Voucher(**fields), signed.signature), DOMAIN, recover=False
        )


def test_the_known_key_refuses_other_domains_and_other_signers() -> None:
    keys = known_keys()
    with pytest.raises(InvalidTicket, match="not signed by that payer"):
        keys.verify(signed_by(), Domain(1, CONTRACT), recover=False)
    mallory = VoucherSigner(os.urandom(31) + b"\x01", DOMAIN)
    forged = mallory.sign(Voucher(mallory.address, PAYEE, 7, 1))
    claimed = SignedVoucher(Voucher(signed_by().payer, PAYEE, 7, 1), forged.signature)
    with pytest.raises(InvalidTicket, match="not signed by that payer"):
        keys.verify(claimed, DOMAIN, recover=False)


@pytest.mark.parametrize(
    ("signature", "reason"),
    [
        (lambda sig: sig[:64] + b"\x00", "v must be 27 or 28"),
        (lambda sig: sig[:64] + b"\x01", "v must be 27 or 28"),
        (lambda sig: sig[:32] + bytes(32) + sig[64:], "s out of range"),
        (
            lambda sig: (
                sig[:32]
                + (SECP256K1_N - int.from_bytes(sig[32:64], "big")).to_bytes(32, "big")
                + bytes((55 - sig[64],))
            ),
            "high s",
        ),
        (lambda sig: SECP256K1_N.to_bytes(32, "big") + sig[32:], "r out of range"),
    ],
    ids=["v=0", "v=1", "s=0", "high-s twin", "r=n"],
)
def test_the_known_key_keeps_the_contracts_form_rules(signature, reason: str) -> None:
    signed = signed_by()
    with pytest.raises(InvalidTicket, match=reason):
        known_keys().verify(
            with_signature(signed, signature(signed.signature)), DOMAIN, recover=False
        )


def test_only_recovery_checks_v_and_redemption_restores_it() -> None:
    keys = known_keys()
    signed = signed_by()
    other_v = with_other_v(signed)
    keys.verify(other_v, DOMAIN, recover=False)  # (r, s) is the payer's: accepted
    with pytest.raises(InvalidTicket, match="recovers to"):
        keys.verify(other_v, DOMAIN)  # what the chain would do
    assert with_recovering_v(other_v, DOMAIN) == signed
    assert with_recovering_v(signed, DOMAIN) == signed
    unfixable = SignedVoucher(Voucher(bytes(19) + b"\x01", PAYEE, 7, 1), signed.signature)
    assert with_recovering_v(unfixable, DOMAIN) is unfixable  # the chain will reject it


def test_payer_keys_forget_the_oldest_beyond_their_limit() -> None:
    keys = PayerKeys(limit=2)
    signers = [VoucherSigner(os.urandom(31) + b"\x01", DOMAIN) for _ in range(3)]
    for signer in signers:
        keys.verify(signer.sign(Voucher(signer.address, PAYEE, 0, 1)), DOMAIN)
    first = signers[0]
    other_v = with_other_v(first.sign(Voucher(first.address, PAYEE, 0, 2)))
    with pytest.raises(InvalidTicket, match="recovers to"):  # forgotten: recovered again
        keys.verify(other_v, DOMAIN, recover=False)
    last = signers[2]
    keys.verify(with_other_v(last.sign(Voucher(last.address, PAYEE, 0, 2))), DOMAIN, recover=False)


@settings(max_examples=200, deadline=None)
@given(signature=st.binary(min_size=65, max_size=65), cumulative=st.integers(0, MAX_UINT256))
def test_the_known_key_on_random_signatures_raises_only_invalid_ticket(
    signature: bytes, cumulative: int
) -> None:
    keys = known_keys()
    signed = SignedVoucher(Voucher(signed_by().payer, PAYEE, 7, cumulative), signature)
    with pytest.raises(InvalidTicket):
        keys.verify(signed, DOMAIN, recover=False)
