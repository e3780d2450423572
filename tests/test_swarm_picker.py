"""The piece picker: a hypothesis state machine against a plain model, plus unit tests.

No clock and no sleeping: every call gets an explicit ``now``.
"""

from __future__ import annotations

import math
import random
from array import array

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from thetadist.manifest.model import ChunkerParams, FileSpec, Manifest
from thetadist.swarm import PeerRate, PickerConfig, PiecePicker, split_runs
from thetadist.wire.messages import ChunkRun

MiB = 1024 * 1024


def whole(piece_count: int, size: int = MiB) -> list[tuple[ChunkRun, int]]:
    return [(ChunkRun(p, 0, 1), size) for p in range(piece_count)]


# --------------------------------------------------------------------------- state machine

PEERS = (0, 1, 2, 3)


class PickerMachine(RuleBasedStateMachine):
    """Drives a PiecePicker with joins, HAVEs, picks, answers, timeouts and deadlines, keeping
    a model of who holds what, and checks every answer and invariant against it."""

    @initialize(
        layout=st.lists(
            st.integers(1, 4).flatmap(
                lambda n: st.tuples(st.just(n), st.sets(st.integers(0, n - 1), min_size=1))
            ),
            min_size=1,
            max_size=6,
        ),
        seed=st.integers(0, 2**32 - 1),
        max_requesters=st.integers(1, 3),
    )
    def setup(self, layout: list[tuple[int, set[int]]], seed: int, max_requesters: int) -> None:
        self.piece_count = len(layout)
        runs: list[tuple[ChunkRun, int]] = []
        for piece, (chunks, needed) in enumerate(layout):
            runs += split_runs(piece, {c for c in needed if c < chunks}, [1000] * chunks)
        self.runs = [run for run, _ in runs]
        self.max_requesters = max_requesters
        self.picker: PiecePicker[int] = PiecePicker(
            self.piece_count,
            runs,
            rng=random.Random(seed),
            config=PickerConfig(endgame_max_requesters=max_requesters),
        )
        self.now = 0.0
        self.done: set[ChunkRun] = set()
        self.held: dict[int, dict[ChunkRun, None]] = {}  # peer -> outstanding, oldest first
        self.has: dict[int, set[int]] = {}
        self.max_out: dict[int, int] = {}
        self.deadlines: dict[int, float] = {}

    # ---- model helpers

    def holders(self, run: ChunkRun) -> list[int]:
        return [p for p, runs in self.held.items() if run in runs]

    def pickable(self) -> set[ChunkRun]:
        return {r for r in self.runs if r not in self.done and not self.holders(r)}

    def availability(self, piece: int) -> int:
        return sum(piece in pieces for pieces in self.has.values())

    def piece_runs(self, piece: int) -> list[ChunkRun]:
        return [r for r in self.runs if r.piece == piece]

    def release(self, peer: int, run: ChunkRun) -> None:
        del self.held[peer][run]

    # ---- rules (peers and pieces are drawn from the current state: no filtering)

    def draw_peer(self, data: st.DataObject) -> int:
        return data.draw(st.sampled_from(sorted(self.has)), label="peer")

    def draw_piece(self, data: st.DataObject) -> int:
        return data.draw(st.integers(0, self.piece_count - 1), label="piece")

    @precondition(lambda self: len(self.has) < len(PEERS))
    @rule(data=st.data(), kind=st.sampled_from(["seed", "some", "none"]), max_out=st.integers(0, 4))
    def join(self, data: st.DataObject, kind: str, max_out: int) -> None:
        peer = min(set(PEERS) - set(self.has))
        if kind == "seed":
            pieces = set(range(self.piece_count))
        elif kind == "some":
            pieces = data.draw(st.sets(st.integers(0, self.piece_count - 1)), label="pieces")
        else:
            pieces = set()
        self.picker.peer_joined(peer, sorted(pieces), max_outstanding=max_out)
        self.has[peer] = set(pieces)
        self.held[peer] = {}
        self.max_out[peer] = max_out

    @precondition(lambda self: bool(self.has))
    @rule(data=st.data())
    def have(self, data: st.DataObject) -> None:
        peer, piece = self.draw_peer(data), self.draw_piece(data)
        useful = self.picker.peer_has(peer, piece)
        new = piece not in self.has[peer]
        self.has[peer].add(piece)
        assert useful == (new and any(r.piece == piece for r in self.pickable()))

    @precondition(lambda self: bool(self.has))
    @rule(data=st.data())
    def leave(self, data: st.DataObject) -> None:
        peer = self.draw_peer(data)
        released = self.picker.peer_left(peer)
        assert released == list(self.held[peer])
        del self.has[peer], self.held[peer], self.max_out[peer]

    @precondition(lambda self: bool(self.has))
    @rule(data=st.data(), count=st.none() | st.integers(0, 4), dt=st.floats(0, 3))
    def pick(self, data: st.DataObject, count: int | None, dt: float) -> None:
        peer = self.draw_peer(data)
        self.now += dt
        before = len(self.held[peer])
        picked = self.picker.pick(peer, self.now, count)
        if count is not None:
            assert len(picked) <= count
        self.record_pick(peer, picked)
        # A short answer means nothing more was available to this peer.
        if count is not None and len(picked) < count and before + len(picked) < self.max_out[peer]:
            assert not any(r.piece in self.has[peer] for r in self.pickable())

    def record_pick(self, peer: int, picked: list[ChunkRun]) -> None:
        assert len(self.held[peer]) + len(picked) <= self.max_out[peer]
        for run in picked:
            assert run.piece in self.has[peer], "asked a peer for a piece it does not have"
            assert run not in self.done and run not in self.held[peer]
            others = self.holders(run)
            pickable = self.pickable()
            if others:
                assert not pickable, "duplicate request outside endgame"
                assert len(others) < self.max_requesters
            else:
                self.check_order(peer, run, pickable)
            self.held[peer][run] = None

    def check_order(self, peer: int, run: ChunkRun, pickable: set[ChunkRun]) -> None:
        """Deadline pieces first, then partial pieces, then the rarest."""
        candidates = {r.piece for r in pickable if r.piece in self.has[peer]}
        with_deadline = [p for p in candidates if p in self.deadlines]
        if with_deadline:
            assert run.piece in self.deadlines
            assert self.deadlines[run.piece] == min(self.deadlines[p] for p in with_deadline)
            return
        partial = [
            p
            for p in candidates
            if any(r in self.done or self.holders(r) for r in self.piece_runs(p))
        ]
        if partial:
            assert run.piece in partial
            return
        assert self.availability(run.piece) == min(self.availability(p) for p in candidates)

    def outstanding_pair(self, data: st.DataObject) -> tuple[int, ChunkRun]:
        pairs = [(p, r) for p, runs in self.held.items() for r in runs]
        return data.draw(st.sampled_from(pairs))

    @precondition(lambda self: any(self.held.values()))
    @rule(data=st.data(), dt=st.floats(0, 2))
    def receive(self, data: st.DataObject, dt: float) -> None:
        peer, run = self.outstanding_pair(data)
        self.now += dt
        self.deliver(peer, run)

    def deliver(self, peer: int, run: ChunkRun) -> None:
        expected = [(p, run) for p in self.holders(run) if p != peer]
        cancels = self.picker.on_received(peer, run, self.now)
        assert sorted(cancels) == sorted(expected)
        for p in self.holders(run):
            self.release(p, run)
        self.done.add(run)
        if all(r in self.done for r in self.piece_runs(run.piece)):
            self.deadlines.pop(run.piece, None)

    @precondition(lambda self: bool(self.has))
    @rule(data=st.data())
    def pick_all_then_answer_heads(self, data: st.DataObject) -> None:
        """Every peer fills its pipeline; then each answers its oldest request."""
        self.now += 0.5
        for peer in sorted(self.has):
            self.record_pick(peer, self.picker.pick(peer, self.now))
        for peer in sorted(self.has):
            if self.held[peer] and data.draw(st.booleans(), label=f"answer {peer}"):
                run = next(iter(self.held[peer]))
                self.deliver(peer, run)

    @precondition(lambda self: any(self.held.values()))
    @rule(data=st.data(), kind=st.sampled_from(["reject", "not available", "hash failed"]))
    def give_back(self, data: st.DataObject, kind: str) -> None:
        peer, run = self.outstanding_pair(data)
        if kind == "hash failed":
            self.picker.on_failed(peer, run, self.now)
        else:
            lacks = kind == "not available"
            self.picker.on_rejected(peer, run, self.now, peer_lacks_piece=lacks)
            if lacks:
                self.has[peer].discard(run.piece)
        self.release(peer, run)

    @rule(dt=st.sampled_from([0.1, 6.0, 31.0, 130.0]))
    def timeouts(self, dt: float) -> None:
        self.now += dt
        for peer, run in self.picker.timeouts(self.now):
            assert run in self.held[peer]
            self.release(peer, run)

    @rule(data=st.data(), deadline=st.none() | st.floats(0, 100))
    def deadline(self, data: st.DataObject, deadline: float | None) -> None:
        if deadline is None:
            self.picker.clear_deadlines()
            self.deadlines.clear()
            return
        piece = self.draw_piece(data)
        self.picker.set_deadline(piece, deadline)
        runs = self.piece_runs(piece)
        if runs and not all(r in self.done for r in runs):
            self.deadlines[piece] = deadline

    # ---- invariants

    @invariant()
    def agrees_with_model(self) -> None:
        picker = self.picker
        picker.check_invariants()
        for run in self.runs:
            holders = self.holders(run)
            assert sorted(picker.requesters(run)) == sorted(holders)
            assert picker.is_done(run) == (run in self.done)
            # every needed run is done, outstanding or pickable — exactly one of them
            assert picker.is_pickable(run) == (run not in self.done and not holders)
            assert len(holders) <= self.max_requesters
        for peer, runs in self.held.items():
            assert picker.outstanding(peer) == list(runs)
        assert picker.complete == (len(self.done) == len(self.runs))
        assert picker.endgame == (not self.pickable() and len(self.done) < len(self.runs))
        for piece in range(self.piece_count):
            assert picker.availability(piece) == self.availability(piece)


TestPickerMachine = PickerMachine.TestCase
TestPickerMachine.settings = settings(
    max_examples=300,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow],
)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    piece_count=st.integers(1, 40),
    peer_count=st.integers(1, 5),
)
def test_swarm_always_completes(seed: int, piece_count: int, peer_count: int) -> None:
    """Random peers (one of them a seed), random answers and losses: the picker finishes."""
    rng = random.Random(seed)
    picker: PiecePicker[int] = PiecePicker(piece_count, whole(piece_count), rng=rng)
    for peer in range(peer_count):
        pieces = (
            range(piece_count)
            if peer == 0
            else [p for p in range(piece_count) if rng.random() < 0.5]
        )
        picker.peer_joined(peer, pieces, max_outstanding=rng.randint(1, 6))
    now = 0.0
    for _ in range(10_000):
        if picker.complete:
            break
        now += 0.01
        peer = rng.randrange(peer_count)
        picker.pick(peer, now)
        out = picker.outstanding(peer)
        if out:
            run = rng.choice(out)
            roll = rng.random()
            if roll < 0.8:
                picker.on_received(peer, run, now)
            elif roll < 0.9 and peer != 0:
                picker.on_rejected(peer, run, now, peer_lacks_piece=True)
            else:
                picker.on_failed(peer, run, now)
        if rng.random() < 0.05 and peer != 0:
            picker.peer_has(peer, rng.randrange(piece_count))
    picker.check_invariants()
    assert picker.complete
    assert not picker.endgame and picker.remaining_runs == 0


# --------------------------------------------------------------------------- construction


def test_split_runs_cuts_at_gaps() -> None:
    sizes = [10, 20, 30, 40, 50]
    assert split_runs(7, [0, 1, 3, 4], sizes) == [
        (ChunkRun(7, 0, 2), 30),
        (ChunkRun(7, 3, 2), 90),
    ]
    assert split_runs(7, [4, 2, 2], sizes) == [(ChunkRun(7, 2, 1), 30), (ChunkRun(7, 4, 1), 50)]
    assert split_runs(7, [], sizes) == []
    with pytest.raises(ValueError):
        split_runs(7, [5], sizes)


def test_bad_runs_are_refused() -> None:
    with pytest.raises(ValueError):
        PiecePicker(1, [(ChunkRun(1, 0, 1), 1)])
    with pytest.raises(ValueError):
        PiecePicker(1, [(ChunkRun(0, 0, 2), 1), (ChunkRun(0, 1, 1), 1)])
    with pytest.raises(ValueError):
        PiecePicker(1, [(ChunkRun(0, 0, 0), 1)])


def _manifest() -> Manifest:
    sizes = array("I", [4096] * 40)
    spec = FileSpec("a.bin", 4096 * 40, False, bytes(32 * 40), sizes)
    return Manifest.from_files(
        [spec], name="t", version="1", chunker=ChunkerParams.fixed(4096), piece_size=64 * 1024
    )


def test_from_manifest_whole_pieces_and_partial_chunks() -> None:
    manifest = _manifest()
    assert [p.chunk_count for p in manifest.pieces] == [16, 16, 8]
    picker: PiecePicker[str] = PiecePicker.from_manifest(manifest, {0: None, 2: [0, 1, 5]})
    assert list(picker.needed_runs()) == [
        ChunkRun(0, 0, 16),
        ChunkRun(2, 0, 2),
        ChunkRun(2, 5, 1),
    ]
    assert picker.run_size(ChunkRun(0, 0, 16)) == 64 * 1024
    assert picker.run_size(ChunkRun(2, 0, 2)) == 8192
    assert list(PiecePicker.from_manifest(manifest, [1]).needed_runs()) == [ChunkRun(1, 0, 16)]


# --------------------------------------------------------------------------- ordering


def test_rarest_first() -> None:
    picker: PiecePicker[str] = PiecePicker(4, whole(4), rng=random.Random(1))
    picker.peer_joined("seed", range(4))
    picker.peer_joined("a", [0, 1, 2])
    picker.peer_joined("b", [0, 1])
    picker.peer_joined("c", [0])
    # availability: piece 0 → 4, 1 → 3, 2 → 2, 3 → 1
    assert [run.piece for run in picker.pick("seed", 0.0, 4)] == [3, 2, 1, 0]


def test_rarest_first_for_a_partial_peer_and_after_haves() -> None:
    picker: PiecePicker[str] = PiecePicker(3, whole(3), rng=random.Random(1))
    picker.peer_joined("a", [0, 1, 2])
    picker.peer_joined("b", [0, 1])
    picker.peer_joined("c", [1])
    # availability: 0 → 2, 1 → 3, 2 → 1; b has 0 and 1 only
    assert picker.pick("b", 0.0, 1) == [ChunkRun(0, 0, 1)]
    picker.peer_has("c", 2)  # 2 → 2, still rarer than 1 → 3
    assert picker.pick("a", 0.0, 1) == [ChunkRun(2, 0, 1)]
    picker.check_invariants()


def test_random_tie_break_is_deterministic_per_seed() -> None:
    def order(seed: int) -> list[int]:
        picker: PiecePicker[str] = PiecePicker(50, whole(50), rng=random.Random(seed))
        picker.peer_joined("seed", range(50), max_outstanding=50)
        return [run.piece for run in picker.pick("seed", 0.0, 50)]

    assert order(3) == order(3)
    assert sorted(order(3)) == list(range(50))
    assert len({tuple(order(seed)) for seed in range(5)}) > 1


def test_deadlines_come_first_in_deadline_order() -> None:
    picker: PiecePicker[str] = PiecePicker(10, whole(10), rng=random.Random(0))
    picker.peer_joined("seed", range(10))
    picker.peer_joined("other", [0, 1, 2, 3, 4, 5, 6, 7])  # 8 and 9 are rarest
    picker.set_deadline(5, 12.0)
    picker.set_deadline(3, 10.0)
    picker.set_deadline(4, 11.0)
    assert [r.piece for r in picker.pick("seed", 0.0, 3)] == [3, 4, 5]
    # without deadlines: rarest first again
    assert {r.piece for r in picker.pick("seed", 0.0, 2)} == {8, 9}
    picker.set_deadline(7, 1.0)
    picker.set_deadline(6, 2.0)
    picker.clear_deadlines()
    picked = picker.pick("other", 0.0, 2)
    assert {r.piece for r in picked} <= {0, 1, 2, 6, 7}


def test_deadline_on_received_piece_is_dropped() -> None:
    picker: PiecePicker[str] = PiecePicker(3, whole(3), rng=random.Random(0))
    picker.peer_joined("s", range(3))
    picker.set_deadline(1, 5.0)
    [run] = picker.pick("s", 0.0, 1)
    assert run.piece == 1
    picker.on_received("s", run, 0.1)
    picker.set_deadline(1, 1.0)  # ignored: the piece is done
    picker.set_deadline(2, 2.0)
    assert picker.pick("s", 0.2, 1) == [ChunkRun(2, 0, 1)]


def test_partial_pieces_are_finished_first() -> None:
    # piece 0 has chunk 2 locally: two runs
    runs = [(ChunkRun(0, 0, 2), 2000), (ChunkRun(0, 3, 2), 2000)] + [
        (ChunkRun(p, 0, 4), 4000) for p in (1, 2)
    ]
    picker: PiecePicker[str] = PiecePicker(3, runs, rng=random.Random(0))
    picker.peer_joined("a", [0, 1, 2])
    picker.peer_joined("b", [0, 1, 2])
    picker.peer_joined("c", [0])  # pieces 1 and 2 are rarer than piece 0
    assert picker.pick("c", 0.0, 1) == [ChunkRun(0, 0, 2)]
    # the rest of piece 0 outranks the rarer pieces
    assert picker.pick("b", 0.0, 1) == [ChunkRun(0, 3, 2)]
    assert {r.piece for r in picker.pick("b", 0.0, 2)} == {1, 2}


def test_peer_is_only_asked_for_pieces_it_has() -> None:
    picker: PiecePicker[str] = PiecePicker(4, whole(4), rng=random.Random(0))
    picker.peer_joined("a", [2])
    assert picker.pick("a", 0.0, 4) == [ChunkRun(2, 0, 1)]
    assert picker.pick("a", 0.0, 4) == []
    assert not picker.is_interesting("a")
    assert picker.peer_has("a", 3)
    assert picker.is_interesting("a")
    assert not picker.peer_has("a", 3)


def test_reject_not_available_forgets_the_piece() -> None:
    picker: PiecePicker[str] = PiecePicker(2, whole(2), rng=random.Random(0))
    picker.peer_joined("liar", range(2))
    picker.peer_joined("b", [0])
    runs = picker.pick("liar", 0.0, 2)
    for run in runs:
        picker.on_rejected("liar", run, 0.0, peer_lacks_piece=run.piece == 1)
    assert not picker.peer_has_piece("liar", 1)
    assert picker.pick("liar", 0.0, 2) == [ChunkRun(0, 0, 1)]
    picker.check_invariants()


# --------------------------------------------------------------------------- endgame


def test_endgame_duplicates_and_cancels() -> None:
    picker: PiecePicker[str] = PiecePicker(2, whole(2), rng=random.Random(0))
    for peer in ("a", "b", "c"):
        picker.peer_joined(peer, range(2))
    assert len(picker.pick("a", 0.0, 2)) == 2
    assert picker.endgame
    dup = picker.pick("b", 1.0, 5)  # at most 2 requesters per run (default)
    assert sorted(dup) == [ChunkRun(0, 0, 1), ChunkRun(1, 0, 1)]
    assert picker.pick("c", 1.0, 5) == []
    assert picker.on_received("b", ChunkRun(1, 0, 1), 2.0) == [("a", ChunkRun(1, 0, 1))]
    assert picker.outstanding("a") == [ChunkRun(0, 0, 1)]
    # A copy that crossed the CANCEL on the wire is accepted quietly.
    assert picker.on_received("a", ChunkRun(1, 0, 1), 2.1) == []
    assert picker.on_received("a", ChunkRun(0, 0, 1), 2.2) == [("b", ChunkRun(0, 0, 1))]
    assert picker.complete and not picker.endgame
    picker.check_invariants()


def test_endgame_prefers_fewest_requesters_then_oldest() -> None:
    config = PickerConfig(endgame_max_requesters=3)
    picker: PiecePicker[str] = PiecePicker(3, whole(3), rng=random.Random(0), config=config)
    for peer in ("a", "b", "c"):
        picker.peer_joined(peer, range(3))
    [first] = picker.pick("a", 0.0, 1)
    [second] = picker.pick("a", 1.0, 1)
    picker.pick("a", 2.0, 1)
    assert picker.pick("b", 3.0, 1) == [first]  # oldest outstanding
    assert picker.pick("c", 3.0, 1) == [second]  # fewest requesters, then oldest


def test_peer_left_returns_its_runs() -> None:
    picker: PiecePicker[str] = PiecePicker(3, whole(3), rng=random.Random(0))
    picker.peer_joined("a", range(3))
    picker.peer_joined("b", [0])
    runs = picker.pick("a", 0.0, 2)
    assert picker.peer_left("a") == runs
    assert picker.pickable_runs == 3 and picker.availability(1) == 0
    assert picker.peer_left("a") == []
    assert picker.pick("b", 0.0, 3) == [ChunkRun(0, 0, 1)]
    picker.check_invariants()


def test_seed_that_lacks_a_piece_becomes_a_partial_peer() -> None:
    picker: PiecePicker[str] = PiecePicker(3, whole(3), rng=random.Random(0))
    picker.peer_joined("s", range(3))
    picker.peer_joined("p", [1])
    picker.peer_lacks("s", 0)
    picker.check_invariants()
    assert {r.piece for r in picker.pick("s", 0.0, 3)} == {1, 2}
    picker.peer_has("s", 0)
    picker.check_invariants()
    assert picker.pick("s", 0.0, 3) == [ChunkRun(0, 0, 1)]


# --------------------------------------------------------------------------- timeouts


def test_timeout_without_rate_uses_ceiling() -> None:
    picker: PiecePicker[str] = PiecePicker(2, whole(2), rng=random.Random(0))
    picker.peer_joined("slow", range(2))
    picker.peer_joined("fast", range(2))
    runs = picker.pick("slow", 0.0, 2)
    assert picker.request_timeout("slow", 0.0) == 30.0
    assert picker.timeouts(29.9) == []
    assert sorted(picker.timeouts(30.1)) == sorted(("slow", r) for r in runs)
    assert picker.stalls("slow") == 1
    assert sorted(picker.pick("fast", 30.1, 2)) == sorted(runs)
    # the stalled peer answers late: accepted, and the new holder's copy is cancelled
    assert picker.on_received("slow", runs[0], 31.0) == [("fast", runs[0])]


def test_timeout_follows_measured_rate_with_floor() -> None:
    picker: PiecePicker[str] = PiecePicker(20, whole(20), rng=random.Random(0))
    picker.peer_joined("p", range(20))
    [run] = picker.pick("p", 0.0, 1)
    picker.on_received("p", run, 0.1)  # 1 MiB in 0.1 s ≈ 10 MiB/s
    assert picker.request_timeout("p", 0.1) == 5.0  # 4 × 0.1 s, raised to the floor
    runs = picker.pick("p", 1.0, 3)
    # the head waits from when it was sent (after the last delivery)
    assert picker.timeouts(5.9) == []
    assert len(picker.timeouts(6.1)) == 3
    slow_config = PickerConfig(min_timeout=1.0, max_timeout=10.0)
    slow: PiecePicker[str] = PiecePicker(2, whole(2, 10 * MiB), config=slow_config)
    slow.peer_joined("p", range(2))
    [run] = slow.pick("p", 0.0, 1)
    slow.on_received("p", run, 1.0)  # 10 MiB/s
    assert slow.request_timeout("p", 1.0) == pytest.approx(4.0)
    del runs


def test_progress_resets_the_head_wait() -> None:
    picker: PiecePicker[str] = PiecePicker(10, whole(10), rng=random.Random(0))
    picker.peer_joined("p", range(10))
    runs = picker.pick("p", 0.0, 10)
    now = 0.0
    for run in runs[:-1]:  # one run every 4 s: slow, but never stalled for 30 s
        now += 4.0
        assert picker.timeouts(now) == []
        picker.on_received("p", run, now)
    assert picker.outstanding("p") == runs[-1:]


def test_single_ignored_request_is_taken_back_by_age() -> None:
    config = PickerConfig(max_request_age=60.0)
    picker: PiecePicker[str] = PiecePicker(99, whole(99), rng=random.Random(0), config=config)
    picker.peer_joined("p", range(99), max_outstanding=64)
    runs = picker.pick("p", 0.0, 2)
    ignored = runs[0]
    picker.on_received("p", runs[1], 1.0)
    now = 1.0
    while now < 61.0:  # keeps answering newer requests, never the first one
        now += 1.0
        [run] = picker.pick("p", now, 1)
        picker.on_received("p", run, now + 0.5)
        expired = picker.timeouts(now + 0.5)
        if expired:
            assert expired == [("p", ignored)]
            break
    else:
        raise AssertionError("the ignored request never expired")
    assert picker.is_pickable(ignored)


# --------------------------------------------------------------------------- pipeline


def test_pipeline_depth_clamps() -> None:
    picker: PiecePicker[str] = PiecePicker(400, whole(400), rng=random.Random(0))
    picker.peer_joined("p", range(400), max_outstanding=64)
    picker.peer_joined("one", range(400), max_outstanding=1)
    picker.peer_joined("none", range(400), max_outstanding=0)
    assert picker.desired_outstanding("p", 0.0) == 4  # before any delivery
    assert picker.desired_outstanding("one", 0.0) == 1  # the peer's own limit wins
    assert picker.desired_outstanding("none", 0.0) == 0
    assert picker.pick("none", 0.0) == []
    assert len(picker.pick("p", 0.0)) == 4  # fills up to the desired depth
    assert picker.pick("p", 0.0) == []
    # slow: 1 MiB per 2 s → 0.5 MiB/s × 0.5 s / 1 MiB → floor of 2
    [head, *_] = picker.outstanding("p")
    picker.on_received("p", head, 2.0)
    assert picker.desired_outstanding("p", 2.0) == 2
    # fast: 100 runs back to back, 1 ms apart → ~1 GiB/s → clamp at 64
    fast: PiecePicker[str] = PiecePicker(400, whole(400), rng=random.Random(0))
    fast.peer_joined("p", range(400), max_outstanding=64)
    now = 0.0
    fast.pick("p", now, 64)
    for run in fast.outstanding("p")[:50]:
        now += 0.001
        fast.on_received("p", run, now)
    assert fast.desired_outstanding("p", now) == 64


def test_pipeline_depth_formula() -> None:
    picker: PiecePicker[str] = PiecePicker(100, whole(100), rng=random.Random(0))
    picker.peer_joined("p", range(100), max_outstanding=64)
    now = 0.0
    # first request into an empty pipeline: service 0.3 s
    [run] = picker.pick("p", now, 1)
    now += 0.3
    picker.on_received("p", run, now)
    # then back-to-back deliveries at 0.1 s each (10 MiB/s)
    picker.pick("p", now, 10)
    for run in picker.outstanding("p"):
        now += 0.1
        picker.on_received("p", run, now)
    rate = 11 * MiB / (0.3 + 10 * 0.1)  # ≈ 8.5 MiB/s of busy time
    # Latency samples come from requests sent into an empty pipeline: the first (0.3 s, rate
    # unknown) and the first of the ten (0.1 s − 1 MiB at 1 MiB/0.3 s < 0 → 0): EWMA 0.225 s.
    latency = 0.3 + 0.25 * (0.0 - 0.3)
    queue_time = max(0.5, 2 * latency)
    expected = math.ceil(rate * queue_time / MiB)
    assert expected == 5
    assert picker.desired_outstanding("p", now) == expected


def test_peer_rate_window_and_busy_time() -> None:
    rate = PeerRate(window=10.0)
    assert rate.rate(0.0) is None
    rate.add(1.0, 1000, 1.0)
    rate.add(2.0, 3000, 1.0)
    assert rate.rate(2.0) == pytest.approx(2000.0)
    rate.add(30.0, 500, 0.5)  # the old samples leave the window; idle time is not counted
    assert rate.rate(30.0) == pytest.approx(1000.0)
    assert rate.rate(100.0) == pytest.approx(1000.0)  # the newest sample is always kept
    assert rate.total_bytes == 4500
    rate.observe_latency(0.2)
    rate.observe_latency(0.6)
    assert rate.latency == pytest.approx(0.3)
    assert rate.mean_sample_bytes() == 500


# --------------------------------------------------------------------------- scale


def test_many_pieces_and_partial_peers() -> None:
    """100k pieces, a seed and 7 partial peers: the bookkeeping stays consistent at scale.
    (Cost per pick is measured, not asserted: see docs/benchmarks.md.)"""
    n = 100_000
    rng = random.Random(5)
    picker: PiecePicker[int] = PiecePicker(n, whole(n), rng=random.Random(1))
    picker.peer_joined(0, range(n))
    for peer in range(1, 8):
        picker.peer_joined(peer, [p for p in range(n) if rng.random() < 0.05])
    now = 0.0
    for peer in range(8):
        picker.pick(peer, now, 8)
    received = 0
    for i in range(5000):
        peer = i % 8
        now += 0.001
        out = picker.outstanding(peer)
        if out:
            picker.on_received(peer, out[0], now)
            received += 1
        for run in picker.pick(peer, now, 1):
            assert picker.peer_has_piece(peer, run.piece)
    assert received > 4000
    assert picker.remaining_runs == n - received
    picker.check_invariants()
