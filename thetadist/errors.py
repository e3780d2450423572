"""One exception tree for the whole toolkit, split by who is at fault.

Every error a stranger can provoke (a manifest, a wire frame, a tracker reply, a ticket,
a command-line argument) is raised as a subclass of :class:`ThetadistError`.  The CLI maps
each branch to one documented exit code (``EXIT_CODES``) and prints one line.

    ThetadistError
    ├─ UsageError            a bad argument or option value
    ├─ Interrupted           Ctrl-C / SIGTERM stopped an unfinished job (resumable)
    ├─ ManifestError         an untrusted manifest was rejected
    │   └─ SignatureError    a signature is bad or a trusted key did not sign
    ├─ ProtocolError
    │   ├─ LocalProtocolError   we broke the protocol (our bug)
    │   └─ RemoteProtocolError  the peer broke it (drop, maybe ban)
    ├─ TransportError
    │   ├─ PeerConnectionError
    │   └─ PeerTimeout
    ├─ IntegrityError        data failed its hash
    ├─ StoreError            disk full, permissions, an output directory that is not ours
    ├─ TrackerError
    └─ PaymentError
        ├─ InvalidTicket
        ├─ InsufficientFunds
        └─ ChainError
"""

from __future__ import annotations


class ThetadistError(Exception):
    """Base of every error this toolkit raises on purpose."""

    exit_code = 1


class UsageError(ThetadistError):
    exit_code = 2


class Interrupted(ThetadistError):
    """Ctrl-C or SIGTERM stopped an unfinished job; rerunning it resumes."""

    exit_code = 130


class ManifestError(ThetadistError):
    exit_code = 3


class SignatureError(ManifestError):
    pass


class IntegrityError(ThetadistError):
    exit_code = 4


class StoreError(ThetadistError):
    exit_code = 5


class ProtocolError(ThetadistError):
    exit_code = 6


class LocalProtocolError(ProtocolError):
    pass


class RemoteProtocolError(ProtocolError):
    pass


class TransportError(ThetadistError):
    exit_code = 7


class PeerConnectionError(TransportError):
    pass


class PeerTimeout(TransportError):
    pass


class TrackerError(ThetadistError):
    exit_code = 8


class PaymentError(ThetadistError):
    exit_code = 9


class InvalidTicket(PaymentError):
    pass


class InsufficientFunds(PaymentError):
    pass


class ChainError(PaymentError):
    pass


#: Exit codes of the ``thetadist`` command, documented in docs/user-guide.md.
EXIT_CODES: dict[int, str] = {
    0: "success",
    1: "unexpected internal error (a bug: please report it)",
    2: "usage error: a bad argument or option",
    3: "manifest rejected (malformed, hostile, or signature not trusted)",
    4: "integrity: data on disk or from a peer does not match the manifest",
    5: "store: the output cannot be written (disk full, permissions, not ours)",
    6: "protocol error",
    7: "transport error (peers unreachable or timed out)",
    8: "tracker error",
    9: "payment error",
    130: "interrupted (Ctrl-C); rerun to resume",
}
