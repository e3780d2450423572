#pragma version 0.4.3
#pragma evm-version london
"""
@title TicketPool
@notice Collateralised pools for thetadist's per-piece micropayments.
        A payer funds a pool (deposit + collateral) and signs EIP-712 vouchers
        Voucher(payer, payee, epoch, cumulativeAmount): "payee has earned cumulativeAmount
        from me in this epoch". Anyone may redeem a voucher; it credits the payee with
        cumulativeAmount - claimed (pull payment, `withdrawEarnings`). A payer whose deposit
        cannot cover a voucher loses its collateral (burned) and is flagged for good: the
        collateral is what makes promising more than the deposit unprofitable.
@dev    Choices (gas figures: `python -m bench.pay_gas`):
        * `london` EVM (no PUSH0): the same bytecode runs on chains without Shanghai, such
          as Theta's EVM.
        * The pool is packed into two slots. The hot slot holds all a redemption reads and
          writes (deposit, epoch, flagged), so a redemption touches one pool slot; collateral
          and the unlock time live in the cold slot, read only by fund, overdraft and
          withdraw. Amounts are capped at 2**128 - 1 wei, far above any chain's supply.
        * `claimed` is stored once per (payer, payee) pair together with its epoch
          (epoch << 192 | amount): the first redemption after an epoch bump rewrites a live
          slot (~2.9k gas) instead of creating one (~20k). Only the latest epoch a pair
          redeemed in is kept; older epochs can never redeem again, and their history is in
          the Redeemed events.
        * Burned collateral stays in the contract, counted in `burned`; no function can move
          it, and not sending it anywhere keeps redemption free of external calls.
        * The domain separator is cached at deployment and recomputed whenever `chain.id`
          differs (after a fork), so a voucher never verifies on a chain it was not signed
          for, nor at another deployment.
        * `redeemBatch` skips an invalid voucher with a `Rejected` event instead of
          reverting: one bad voucher (or a payer flagged earlier in the same batch) must not
          block a seeder's other vouchers. `redeem` reverts with a reason instead.
        * Every voucher of a batch logs exactly one `Redeemed` (the amount credited, 0 when
          nothing new) or one `Rejected`, in order, so a client maps logs to vouchers by
          position.
        * A payee's credit is written once per run of consecutive vouchers to it.
"""

# EIP-712 type hashes.
DOMAIN_TYPEHASH: constant(bytes32) = keccak256(
    "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
)
VOUCHER_TYPEHASH: constant(bytes32) = keccak256(
    "Voucher(address payer,address payee,uint64 epoch,uint256 cumulativeAmount)"
)
NAME_HASH: constant(bytes32) = keccak256("thetadist")
VERSION_HASH: constant(bytes32) = keccak256("1")

# secp256k1n // 2: a larger s is the malleable twin of a valid signature (EIP-2).
HALF_N: constant(uint256) = (
    57896044618658097711785492504343953926418782139537452191302581570759080747168
)

MAX_BATCH: constant(uint256) = 256
BPS: constant(uint256) = 10000

# Pool packing. Hot slot: deposit (bits 0-127) | epoch (128-191) | flagged (192).
# Cold slot: collateral (bits 0-127) | unlockAt (128-191).
MASK128: constant(uint256) = 2**128 - 1
MASK64: constant(uint256) = 2**64 - 1
FLAG_BIT: constant(uint256) = 2**192
# Claim slot: amount (bits 0-191) | epoch (192-255).
MASK192: constant(uint256) = 2**192 - 1

# Rejected.reason codes.
REASON_SIGNATURE: constant(uint8) = 1  # malformed: v not 27/28, r or s zero, s high
REASON_SIGNER: constant(uint8) = 2  # recovers to no address or not to the payer
REASON_EPOCH: constant(uint8) = 3  # not the payer's current epoch
REASON_FLAGGED: constant(uint8) = 4  # the payer overdrew earlier and is flagged

# A voucher as redeemBatch takes it: the 65-byte signature split into r, s, v. Fixed-size
# fields make the struct static, which saves ~1k gas a voucher over `Bytes[65]` (no offset
# and length words in calldata, no copy of a byte string); `redeem` takes the 65 bytes.
struct Voucher:
    payer: address
    payee: address
    epoch: uint64
    cumulativeAmount: uint256
    r: uint256
    s: uint256
    v: uint8

event Funded:
    payer: indexed(address)
    funder: indexed(address)
    deposit: uint256
    collateral: uint256

event Redeemed:
    payer: indexed(address)
    payee: indexed(address)
    paid: uint256

event Rejected:
    payer: indexed(address)
    payee: indexed(address)
    reason: uint8

event Overdraft:
    payer: indexed(address)
    payee: indexed(address)
    shortfall: uint256
    burned: uint256

event UnlockRequested:
    payer: indexed(address)
    unlockAt: uint256

event Withdrawn:
    payer: indexed(address)
    amount: uint256
    newEpoch: uint64

event EarningsWithdrawn:
    payee: indexed(address)
    amount: uint256

collateralRatio: public(immutable(uint256))
unlockDelay: public(immutable(uint256))
_CACHED_CHAIN_ID: immutable(uint256)
_CACHED_DOMAIN: immutable(bytes32)

earnings: public(HashMap[address, uint256])
burned: public(uint256)

_hot: HashMap[address, uint256]
_cold: HashMap[address, uint256]
_claims: HashMap[address, HashMap[address, uint256]]


@deploy
def __init__(collateral_ratio_bps: uint256, unlock_delay: uint256):
    """
    @param collateral_ratio_bps collateral required per unit of deposit, in basis points
           (10000: collateral >= deposit)
    @param unlock_delay seconds between requestUnlock and withdraw; payees use it to redeem
           what they hold
    """
    collateralRatio = collateral_ratio_bps
    unlockDelay = unlock_delay
    _CACHED_CHAIN_ID = chain.id
    _CACHED_DOMAIN = self._build_domain()


# -- views --------------------------------------------------------------------------------


@view
@external
def domainSeparator() -> bytes32:
    return self._domain()


@view
@external
def pool(payer: address) -> (uint256, uint256, uint64, uint64, bool):
    """
    @return (deposit, collateral, epoch, unlockAt (0: none), flagged)
    """
    hot: uint256 = self._hot[payer]
    cold: uint256 = self._cold[payer]
    return (
        hot & MASK128,
        cold & MASK128,
        convert((hot >> 128) & MASK64, uint64),
        convert(cold >> 128, uint64),
        hot & FLAG_BIT != 0,
    )


@view
@external
def claimed(payer: address, payee: address, epoch: uint64) -> uint256:
    """
    @notice Amount already credited to `payee` from `payer`'s vouchers of `epoch`. Only the
            latest epoch a pair redeemed in is stored; an older epoch reads as 0.
    """
    slot: uint256 = self._claims[payer][payee]
    if slot >> 192 != convert(epoch, uint256):
        return 0
    return slot & MASK192


# -- payer --------------------------------------------------------------------------------


@payable
@external
def fund(collateral: uint256):
    """
    @notice Add `msg.value - collateral` to your deposit and `collateral` to your collateral.
            A top-up (even of zero) by the payer cancels a pending unlock.
    """
    self._fund(msg.sender, msg.value, collateral, True)


@payable
@external
def fundFor(payer: address, collateral: uint256):
    """
    @notice Add to `payer`'s pool; unlike `fund`, never cancels their pending unlock, so a
            third party cannot keep a payer's money locked.
    """
    assert payer != empty(address), "zero payer"
    self._fund(payer, msg.value, collateral, False)


@external
def requestUnlock():
    """
    @notice Start the unlock delay; `withdraw` pays the pool out after it. Vouchers stay
            redeemable until then.
    """
    hot: uint256 = self._hot[msg.sender]
    assert hot & FLAG_BIT == 0, "payer flagged"
    cold: uint256 = self._cold[msg.sender]
    assert cold >> 128 == 0, "unlock already requested"
    unlock_at: uint256 = block.timestamp + unlockDelay
    assert unlock_at <= MASK64, "unlock delay too large"
    self._cold[msg.sender] = (cold & MASK128) | (unlock_at << 128)
    log UnlockRequested(payer=msg.sender, unlockAt=unlock_at)


@nonreentrant
@external
def withdraw():
    """
    @notice After the unlock delay, pay deposit + collateral back and move to the next
            epoch, which kills every voucher signed so far.
    """
    hot: uint256 = self._hot[msg.sender]
    cold: uint256 = self._cold[msg.sender]
    unlock_at: uint256 = cold >> 128
    assert unlock_at != 0, "no unlock requested"
    assert block.timestamp >= unlock_at, "unlock delay not over"
    amount: uint256 = (hot & MASK128) + (cold & MASK128)
    epoch: uint256 = ((hot >> 128) & MASK64) + 1
    assert epoch <= MASK64, "epoch exhausted"  # 2**64 would spill into the flag bit
    self._hot[msg.sender] = (hot & FLAG_BIT) | (epoch << 128)
    self._cold[msg.sender] = 0
    log Withdrawn(payer=msg.sender, amount=amount, newEpoch=convert(epoch, uint64))
    if amount != 0:
        raw_call(msg.sender, b"", value=amount)


# -- payee --------------------------------------------------------------------------------


@external
def redeem(
    payer: address,
    payee: address,
    epoch: uint64,
    cumulativeAmount: uint256,
    signature: Bytes[65],
) -> uint256:
    """
    @notice Credit `payee` with what this voucher adds over what was already claimed.
            Reverts on an invalid voucher; returns the amount credited (0 if nothing new).
    """
    assert len(signature) == 65, "malformed signature"
    paid: uint256 = 0
    reason: uint8 = 0
    paid, reason = self._redeem(
        payer,
        payee,
        epoch,
        cumulativeAmount,
        extract32(signature, 0, output_type=uint256),
        extract32(signature, 32, output_type=uint256),
        convert(slice(signature, 64, 1), uint256),
        self._domain(),
    )
    assert reason != REASON_SIGNATURE, "malformed signature"
    assert reason != REASON_SIGNER, "signer is not the payer"
    assert reason != REASON_EPOCH, "wrong epoch"
    assert reason != REASON_FLAGGED, "payer flagged"
    if paid != 0:
        self.earnings[payee] += paid
    return paid


@external
def redeemBatch(vouchers: DynArray[Voucher, MAX_BATCH]) -> uint256:
    """
    @notice Redeem many vouchers; invalid ones are skipped with a Rejected event.
    @return the total credited
    """
    total: uint256 = 0
    # A payee's credit is written once per run of consecutive vouchers to it, the usual
    # shape of a batch (one seeder redeeming what many payers signed to it).
    run_payee: address = empty(address)
    run_paid: uint256 = 0
    domain: bytes32 = self._domain()
    for v: Voucher in vouchers:
        paid: uint256 = 0
        reason: uint8 = 0
        paid, reason = self._redeem(
            v.payer,
            v.payee,
            v.epoch,
            v.cumulativeAmount,
            v.r,
            v.s,
            convert(v.v, uint256),
            domain,
        )
        if reason != 0:
            log Rejected(payer=v.payer, payee=v.payee, reason=reason)
            continue
        if v.payee != run_payee:
            if run_paid != 0:
                self.earnings[run_payee] += run_paid
            run_payee = v.payee
            run_paid = 0
        # Cannot overflow: at most 256 credits, each out of a deposit below 2**128.
        run_paid = unsafe_add(run_paid, paid)
        total = unsafe_add(total, paid)
    if run_paid != 0:
        self.earnings[run_payee] += run_paid
    return total


@nonreentrant
@external
def withdrawEarnings():
    """
    @notice Pay out the caller's earnings. A payee that cannot receive only fails itself.
    """
    amount: uint256 = self.earnings[msg.sender]
    assert amount != 0, "no earnings"
    self.earnings[msg.sender] = 0
    log EarningsWithdrawn(payee=msg.sender, amount=amount)
    raw_call(msg.sender, b"", value=amount)


# -- internals ----------------------------------------------------------------------------


@internal
def _fund(payer: address, sent: uint256, collateral: uint256, own: bool):
    assert collateral <= sent, "collateral exceeds value sent"
    hot: uint256 = self._hot[payer]
    assert hot & FLAG_BIT == 0, "payer flagged"
    cold: uint256 = self._cold[payer]
    added_deposit: uint256 = unsafe_sub(sent, collateral)
    new_deposit: uint256 = (hot & MASK128) + added_deposit
    new_collateral: uint256 = (cold & MASK128) + collateral
    assert new_deposit <= MASK128 and new_collateral <= MASK128, "amount too large"
    # Checked products: an absurd ratio makes funding revert rather than wrap.
    assert new_collateral * BPS >= new_deposit * collateralRatio, "collateral below ratio"
    unlock_bits: uint256 = cold >> 128
    if own:
        unlock_bits = 0
    self._hot[payer] = (hot & ~MASK128) | new_deposit
    self._cold[payer] = new_collateral | (unlock_bits << 128)
    log Funded(payer=payer, funder=msg.sender, deposit=added_deposit, collateral=collateral)


@internal
def _redeem(
    payer: address,
    payee: address,
    epoch: uint64,
    cumulative: uint256,
    r: uint256,
    s: uint256,
    v: uint256,
    domain: bytes32,
) -> (uint256, uint8):
    """
    @return (amount to credit to payee, 0) or (0, rejection reason). The caller credits.
    """
    if r == 0 or s == 0 or s > HALF_N or (v != 27 and v != 28):
        return 0, REASON_SIGNATURE

    struct_hash: bytes32 = keccak256(
        abi_encode(VOUCHER_TYPEHASH, payer, payee, epoch, cumulative)
    )
    digest: bytes32 = keccak256(concat(b"\x19\x01", domain, struct_hash))
    signer: address = ecrecover(digest, v, r, s)
    if signer == empty(address) or signer != payer:
        return 0, REASON_SIGNER

    hot: uint256 = self._hot[payer]
    if hot & FLAG_BIT != 0:
        return 0, REASON_FLAGGED
    if convert(epoch, uint256) != (hot >> 128) & MASK64:
        return 0, REASON_EPOCH

    slot: uint256 = self._claims[payer][payee]
    already: uint256 = 0
    if slot >> 192 == convert(epoch, uint256):
        already = slot & MASK192
    if cumulative <= already:
        log Redeemed(payer=payer, payee=payee, paid=0)
        return 0, 0

    owed: uint256 = unsafe_sub(cumulative, already)
    deposit: uint256 = hot & MASK128
    # A cumulative amount beyond 2**192 is always an overdraft (deposits are < 2**128),
    # after which the payer is flagged for good, so clamping what is stored loses nothing.
    self._claims[payer][payee] = (convert(epoch, uint256) << 192) | min(cumulative, MASK192)
    if owed <= deposit:
        self._hot[payer] = unsafe_sub(hot, owed)  # deposit is the low field: no borrow
        log Redeemed(payer=payer, payee=payee, paid=owed)
        return owed, 0

    # Overdraft: the payer signed more than it holds. Pay what is left, burn the collateral.
    cold: uint256 = self._cold[payer]
    lost: uint256 = cold & MASK128
    self.burned += lost
    self._cold[payer] = cold & ~MASK128
    self._hot[payer] = (hot & ~MASK128) | FLAG_BIT
    log Overdraft(payer=payer, payee=payee, shortfall=unsafe_sub(owed, deposit), burned=lost)
    log Redeemed(payer=payer, payee=payee, paid=deposit)
    return deposit, 0


@view
@internal
def _domain() -> bytes32:
    if chain.id == _CACHED_CHAIN_ID:
        return _CACHED_DOMAIN
    return self._build_domain()


@view
@internal
def _build_domain() -> bytes32:
    return keccak256(abi_encode(DOMAIN_TYPEHASH, NAME_HASH, VERSION_HASH, chain.id, self))
