"""Property tests of the offset tracker: commits never pass an unfinished offset."""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from headrace.connectors.kafka.offsets import OffsetTracker

TPS = [("orders", 0), ("orders", 1), ("quotes", 0)]


@st.composite
def offsets_and_order(draw: st.DrawFn) -> tuple[list[int], list[int]]:
    """Increasing offsets with gaps (transaction markers, compaction) and a completion order."""
    gaps = draw(st.lists(st.integers(0, 3), min_size=1, max_size=200))
    start = draw(st.integers(0, 10_000))
    offsets, offset = [], start
    for gap in gaps:
        offset += gap
        offsets.append(offset)
        offset += 1
    order = draw(st.permutations(range(len(offsets))))
    return offsets, list(order)


@given(offsets_and_order())
def test_committed_offset_is_first_unfinished(case: tuple[list[int], list[int]]) -> None:
    offsets, order = case
    tracker = OffsetTracker()
    tp = TPS[0]
    acks = [tracker.begin(tp, offset) for offset in offsets]
    unfinished = set(offsets)
    committed: int | None = None
    for index in order:
        acks[index]()
        unfinished.discard(offsets[index])
        commit = tracker.committable().get(tp)
        expected = min(unfinished) if unfinished else offsets[-1] + 1
        if commit is not None:
            assert commit <= expected, "committed past an unfinished offset"
            assert commit == expected
            assert committed is None or commit > committed
            tracker.mark_committed({tp: commit})
            committed = commit
        else:
            assert committed == expected or (committed is None and expected == offsets[0])
    assert committed == offsets[-1] + 1
    assert tracker.committable() == {}
    assert tracker.in_flight() == 0


@given(offsets_and_order(), st.data())
def test_revoked_partition_ignores_late_completions(
    case: tuple[list[int], list[int]], data: st.DataObject
) -> None:
    offsets, order = case
    tracker = OffsetTracker()
    tp = TPS[1]
    acks = [tracker.begin(tp, offset) for offset in offsets]
    cut = data.draw(st.integers(0, len(order)))
    for index in order[:cut]:
        acks[index]()
    tracker.revoke([tp])
    assert tracker.committable() == {}
    # Reassigned: consumption restarts from some earlier offset in a new generation.
    restart = data.draw(st.sampled_from(offsets))
    again = [o for o in offsets if o >= restart]
    new_acks = [tracker.begin(tp, offset) for offset in again]
    for index in order[cut:]:
        acks[index]()  # late completions of the old generation
    assert tracker.committable() == {}
    for ack in new_acks:
        ack()
    assert tracker.committable() == {tp: offsets[-1] + 1}


class TrackerMachine(RuleBasedStateMachine):
    """Random begins, completions (current and stale), revokes and commits on 3 partitions."""

    def __init__(self) -> None:
        super().__init__()
        self.tracker = OffsetTracker()
        self.next_offset = dict.fromkeys(TPS, 0)
        self.pending: dict[tuple[str, int], set[int]] = {tp: set() for tp in TPS}
        self.begun: dict[tuple[str, int], list[int]] = {tp: [] for tp in TPS}
        self.committed: dict[tuple[str, int], int] = {}
        self.acks: list[tuple[tuple[str, int], int, int, Callable[[], None]]] = []
        self.generation = dict.fromkeys(TPS, 0)

    @rule(tp=st.sampled_from(TPS), count=st.integers(1, 20), gap=st.integers(0, 2))
    def begin(self, tp: tuple[str, int], count: int, gap: int) -> None:
        for _ in range(count):
            offset = self.next_offset[tp] + gap
            self.acks.append((tp, self.generation[tp], offset, self.tracker.begin(tp, offset)))
            self.pending[tp].add(offset)
            self.begun[tp].append(offset)
            self.next_offset[tp] = offset + 1

    @precondition(lambda self: self.acks)
    @rule(data=st.data())
    def complete(self, data: st.DataObject) -> None:
        index = data.draw(st.integers(0, len(self.acks) - 1))
        tp, generation, offset, ack = self.acks.pop(index)
        ack()
        if generation == self.generation[tp]:
            self.pending[tp].discard(offset)

    @rule(tp=st.sampled_from(TPS), data=st.data())
    def revoke(self, tp: tuple[str, int], data: st.DataObject) -> None:
        self.tracker.revoke([tp])
        self.generation[tp] += 1
        self.pending[tp] = set()
        # The next owner starts at the committed offset, or earlier (never committed).
        restart = self.committed.get(tp, 0)
        self.next_offset[tp] = data.draw(st.integers(0, restart))
        self.begun[tp] = []
        self.committed.pop(tp, None)

    @rule()
    def commit(self) -> None:
        offsets = self.tracker.committable()
        for tp, offset in offsets.items():
            self._check_position(tp, offset)
            assert offset > self.committed.get(tp, -1), "committed without advancing"
        self.tracker.mark_committed(offsets)
        for tp, offset in offsets.items():
            self.committed[tp] = offset

    def _check_position(self, tp: tuple[str, int], offset: int) -> None:
        pending = self.pending[tp]
        if pending:
            assert offset <= min(pending), f"{tp}: commit {offset} passes unfinished {min(pending)}"
            done_below = [o for o in self.begun[tp] if o < min(pending)]
            assert not done_below or offset > max(done_below), "commit lags what is done"
        else:
            assert offset == self.begun[tp][-1] + 1

    @invariant()
    def never_past_unfinished(self) -> None:
        for tp in TPS:
            position = self.tracker.position(tp)
            if position is not None and self.pending[tp]:
                assert position <= min(self.pending[tp])

    @invariant()
    def memory_bounded_by_in_flight(self) -> None:
        """Only offsets from the lowest unfinished one on are kept."""
        for tp in TPS:
            pending = self.pending[tp]
            window = [o for o in self.begun[tp] if pending and o >= min(pending)]
            assert self.tracker.in_flight(tp) == len(window)

    def teardown(self) -> None:
        for _tp, _generation, _offset, ack in self.acks:
            ack()
        offsets = self.tracker.committable()
        for tp in TPS:
            if self.begun[tp]:
                expected = self.begun[tp][-1] + 1
                assert offsets.get(tp, self.committed.get(tp)) == expected
        assert self.tracker.in_flight() == 0


TestTrackerMachine = TrackerMachine.TestCase
TestTrackerMachine.settings = settings(max_examples=200, stateful_step_count=60, deadline=None)
