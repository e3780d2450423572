"""Per-piece micropayments: EIP-712 vouchers, durable ledgers, wallets and the TicketPool chain.

The design is in docs/payments.md.
"""
