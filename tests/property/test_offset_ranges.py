"""Property tests of offset ranges: one ack object per run of a partition's messages.

The Kafka source opens one ``OffsetRange`` per run of messages of one partition in a
fetched batch and passes the range as every message's ack. These tests drive ranges the way
the source does (offsets with gaps, acks in any order, some before the range is closed,
revocations with late acks of the old assignment) against a model of the messages.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from headrace.connectors.kafka.offsets import OffsetRange, OffsetTracker, PartitionOffsets

TPS = [("orders", 0), ("orders", 1)]


def take(state: PartitionOffsets, offsets: list[int], early: set[int]) -> OffsetRange:
    """Begin ``offsets`` as one run (as ``KafkaSource._handle`` does); the indexes in
    ``early`` are acked before the range is closed (a value filtered on delivery)."""
    window = state.open(offsets[0])
    for index, offset in enumerate(offsets):
        if index:
            state.last_begun = offset
        if index in early:
            window()
    window.close(len(offsets))
    return window


@st.composite
def runs_and_order(draw: st.DrawFn) -> tuple[list[list[int]], list[tuple[int, int]]]:
    """Runs of increasing offsets with gaps, and an order in which to ack every message."""
    sizes = draw(st.lists(st.integers(1, 30), min_size=1, max_size=12))
    offset = draw(st.integers(0, 1_000))
    runs: list[list[int]] = []
    for size in sizes:
        run = []
        for _ in range(size):
            offset += draw(st.integers(0, 2))  # gaps: transaction markers, compaction
            run.append(offset)
            offset += 1
        runs.append(run)
    messages = [(r, i) for r, run in enumerate(runs) for i in range(len(run))]
    return runs, draw(st.permutations(messages))


@given(runs_and_order())
def test_position_is_the_first_offset_of_the_oldest_unfinished_range(
    case: tuple[list[list[int]], list[tuple[int, int]]],
) -> None:
    runs, order = case
    tracker = OffsetTracker()
    tp = TPS[0]
    state = tracker.partition(tp)
    windows = [take(state, run, set()) for run in runs]
    left = [len(run) for run in runs]
    committed: int | None = None
    for r, _index in order:
        windows[r]()
        left[r] -= 1
        unfinished = [run for run, n in zip(runs, left, strict=True) if n]
        expected = unfinished[0][0] if unfinished else runs[-1][-1] + 1
        every_unfinished = [
            o for run, n in zip(runs, left, strict=True) if n for o in run
        ]  # any message of an unfinished range may be the one not handled yet
        commit = tracker.committable().get(tp)
        if commit is not None:
            assert commit == expected
            assert all(commit <= o for o in every_unfinished), "committed past an unfinished"
            assert committed is None or commit > committed
            tracker.mark_committed({tp: commit})
            committed = commit
        else:
            assert committed == expected or (committed is None and expected == runs[0][0])
        first = next((r for r, n in enumerate(left) if n), len(runs))
        assert state.in_flight == sum(len(run) for run in runs[first:])
    assert committed == runs[-1][-1] + 1
    assert all(w.done for w in windows)


@given(st.lists(st.integers(1, 20), min_size=1, max_size=10), st.data())
def test_acks_before_close_finish_the_range_exactly_once(
    sizes: list[int], data: st.DataObject
) -> None:
    """Every message acked before ``close``: the range is done at ``close``, not before."""
    state = PartitionOffsets()
    offset = 0
    for size in sizes:
        offsets = list(range(offset, offset + size))
        offset += size
        early = set(data.draw(st.sets(st.integers(0, size - 1))))
        window = state.open(offsets[0])
        for index, o in enumerate(offsets):
            if index:
                state.last_begun = o
            if index in early:
                window()
                assert not window.done, "done before its range was closed"
        window.close(size)
        for index in range(size):
            if index not in early:
                assert not window.done
                window()
        assert window.done
        assert state.position == offsets[-1] + 1
        assert state.in_flight == 0


class RangeMachine(RuleBasedStateMachine):
    """Runs begun on 2 partitions, acks in any order (current and stale), revokes, commits."""

    def __init__(self) -> None:
        super().__init__()
        self.tracker = OffsetTracker()
        self.next_offset = dict.fromkeys(TPS, 0)
        self.generation = dict.fromkeys(TPS, 0)
        # per partition: the current generation's ranges as [offsets, unacked count]
        self.runs: dict[tuple[str, int], list[list]] = {tp: [] for tp in TPS}
        self.committed: dict[tuple[str, int], int] = {}
        self.acks: list[tuple[tuple[str, int], int, int, OffsetRange]] = []

    @rule(
        tp=st.sampled_from(TPS),
        size=st.integers(1, 15),
        gap=st.integers(0, 2),
        early=st.sets(st.integers(0, 14), max_size=5),
    )
    def take_run(self, tp: tuple[str, int], size: int, gap: int, early: set[int]) -> None:
        offsets = []
        for _ in range(size):
            offset = self.next_offset[tp] + gap
            offsets.append(offset)
            self.next_offset[tp] = offset + 1
        early = {i for i in early if i < size}
        window = take(self.tracker.partition(tp), offsets, early)
        run = [offsets, size - len(early)]
        self.runs[tp].append(run)
        index = len(self.runs[tp]) - 1
        for _ in range(size - len(early)):
            self.acks.append((tp, self.generation[tp], index, window))

    @precondition(lambda self: self.acks)
    @rule(data=st.data())
    def ack(self, data: st.DataObject) -> None:
        tp, generation, index, window = self.acks.pop(data.draw(st.integers(0, len(self.acks) - 1)))
        window()
        if generation == self.generation[tp]:
            self.runs[tp][index][1] -= 1

    @rule(tp=st.sampled_from(TPS), data=st.data())
    def revoke(self, tp: tuple[str, int], data: st.DataObject) -> None:
        self.tracker.revoke([tp])
        self.generation[tp] += 1
        self.runs[tp] = []
        # the next owner starts at the committed offset, or earlier (never committed)
        self.next_offset[tp] = data.draw(st.integers(0, self.committed.pop(tp, 0)))

    @rule()
    def commit(self) -> None:
        offsets = self.tracker.committable()
        for tp, offset in offsets.items():
            low, high = self._bounds(tp)
            assert low is not None and low <= offset <= high
            assert offset > self.committed.get(tp, -1), "committed without advancing"
        self.tracker.mark_committed(offsets)
        self.committed.update(offsets)

    def _bounds(self, tp: tuple[str, int]) -> tuple[int | None, int]:
        """Where the position may be: from the end of the done ranges at the start (None:
        none done yet) to the first offset of the oldest unfinished range (or past the last
        begun). Which of the two depends on whether the next range was begun when the
        older one finished (the offsets between them are gaps: no message)."""
        runs = self.runs[tp]
        done = 0
        while done < len(runs) and not runs[done][1]:
            done += 1
        low = runs[done - 1][0][-1] + 1 if done else None
        high = runs[done][0][0] if done < len(runs) else (low if low is not None else -1)
        return low, high

    @invariant()
    def position_never_passes_an_unfinished_offset(self) -> None:
        for tp in TPS:
            position = self.tracker.position(tp)
            low, high = self._bounds(tp)
            if low is None:
                assert position is None, "a position before any range was done"
            else:
                assert position is not None and low <= position <= high

    @invariant()
    def in_flight_counts_the_ranges_from_the_oldest_unfinished(self) -> None:
        for tp in TPS:
            runs = self.runs[tp]
            first = next((i for i, (_, unacked) in enumerate(runs) if unacked), len(runs))
            assert self.tracker.in_flight(tp) == sum(len(o) for o, _ in runs[first:])

    def teardown(self) -> None:
        for _tp, _generation, _index, window in self.acks:
            window()
        offsets = self.tracker.committable()
        for tp in TPS:
            if self.runs[tp]:
                expected = self.runs[tp][-1][0][-1] + 1
                assert offsets.get(tp, self.committed.get(tp)) == expected
        assert self.tracker.in_flight() == 0


TestRangeMachine = RangeMachine.TestCase
TestRangeMachine.settings = settings(max_examples=150, stateful_step_count=50, deadline=None)
