"""Property tests of the pause/seek/resume rules (PartitionFlow) and the in-flight budget."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from headrace.connectors.kafka.flow import Budget, PartitionFlow, released_on_assign

TPS = [("orders", 0), ("orders", 1), ("quotes", 0)]
tp_strategy = st.sampled_from(TPS)


class FlowMachine(RuleBasedStateMachine):
    """Drives PartitionFlow the way the source does, with a consumer thread that applies
    pauses/seeks (some fail) and resumes; checks that no seek is ever skipped."""

    def __init__(self) -> None:
        super().__init__()
        self.flow = PartitionFlow()
        self.applying: dict[tuple[str, int], int | None] | None = None
        self.owed: dict[tuple[str, int], int] = {}  # seek back still to apply, per partition

    @rule(tps=st.lists(tp_strategy, min_size=1, unique=True), full=st.booleans())
    def assign(self, tps: list[tuple[str, int]], full: bool) -> None:
        fresh = [tp for tp in tps if tp not in self.flow.assigned]
        keep = self.flow.assign(fresh, lambda tp: full)
        released = released_on_assign(fresh, keep)
        assert set(released) | set(keep) >= set(fresh)
        assert not set(released) & set(keep)
        for tp in fresh:
            self.owed.pop(tp, None)  # a fresh assignment starts at the committed offset

    @rule(tps=st.lists(tp_strategy, min_size=1, unique=True))
    def revoke(self, tps: list[tuple[str, int]]) -> None:
        self.flow.revoke(tps)
        for tp in tps:
            self.owed.pop(tp, None)

    @rule(tp=tp_strategy, offset=st.none() | st.integers(0, 1000))
    def pause(self, tp: tuple[str, int], offset: int | None) -> None:
        if tp not in self.flow.assigned:
            return
        self.flow.pause(tp, offset)
        if offset is not None:
            self.owed[tp] = min(self.owed.get(tp, offset), offset)

    @rule(tp=tp_strategy, offset=st.integers(0, 1000))
    def rewind(self, tp: tuple[str, int], offset: int) -> None:
        if tp not in self.flow.paused:
            return
        before = self.flow.to_pause.get(tp)
        self.flow.rewind(tp, offset)
        assert self.flow.to_pause[tp] == (offset if before is None else min(before, offset))
        self.owed[tp] = min(self.owed.get(tp, offset), offset)

    @precondition(lambda self: self.applying is None)
    @rule()
    def start_applying(self) -> None:
        self.applying = self.flow.take_pending()
        assert self.flow.to_pause == {}

    @precondition(lambda self: self.applying is not None)
    @rule(data=st.data())
    def finish_applying(self, data: st.DataObject) -> None:
        assert self.applying is not None
        pending, self.applying = self.applying, None
        failed = {tp: o for tp, o in pending.items() if data.draw(st.booleans(), label=str(tp))}
        self.flow.applied(pending, failed)
        for tp, offset in pending.items():
            if tp in failed or offset is None:
                continue
            if self.owed.get(tp) == offset:  # the seek took effect
                del self.owed[tp]
            if tp in self.flow.to_pause and self.flow.to_pause[tp] is not None:
                self.owed[tp] = self.flow.to_pause[tp]  # a newer seek queued meanwhile

    @rule(room=st.booleans())
    def resume(self, room: bool) -> None:
        ready = self.flow.take_ready(lambda tp: room)
        for tp in ready:
            assert tp not in self.owed, f"{tp} resumed with its seek to {self.owed[tp]} unapplied"
            assert self.applying is None or tp not in self.applying
        assert room or not ready

    @rule(tp=tp_strategy)
    def resume_fails(self, tp: tuple[str, int]) -> None:
        self.flow.resume_failed([tp])

    @invariant()
    def held_partitions_are_assigned(self) -> None:
        assert self.flow.paused <= self.flow.assigned
        assert set(self.flow.to_pause) <= self.flow.paused

    @invariant()
    def an_owed_seek_is_pending_or_being_applied(self) -> None:
        for tp in self.owed:
            assert tp in self.flow.to_pause or tp in self.flow.applying, tp


TestFlowMachine = FlowMachine.TestCase
TestFlowMachine.settings = settings(max_examples=200, stateful_step_count=60, deadline=None)


@given(
    st.integers(1, 20),
    st.integers(1, 10_000),
    st.lists(st.tuples(st.booleans(), st.integers(0, 3_000)), max_size=200),
)
def test_a_budget_is_never_open_over_a_cap(
    max_count: int, max_bytes: int, steps: list[tuple[bool, int]]
) -> None:
    budget, held = Budget(max_count, max_bytes), []
    for add, size in steps:
        if add or not held:
            budget.add(size)
            held.append(size)
        else:
            budget.remove(held.pop())
        assert (budget.count, budget.bytes) == (len(held), sum(held))
        if budget.count >= max_count or budget.bytes >= max_bytes:
            assert budget.full
        if not budget.full:
            assert budget.count < max_count and budget.bytes < max_bytes
