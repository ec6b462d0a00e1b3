"""PartitionFlow: which partitions are assigned, held back, and waiting for a pause/seek."""

from __future__ import annotations

from headrace.connectors.kafka.flow import Budget, PartitionFlow, released_on_assign

A0, A1, B0 = ("a", 0), ("a", 1), ("b", 0)


def never(tp: tuple[str, int]) -> bool:
    return False


def always(tp: tuple[str, int]) -> bool:
    return True


def test_pause_is_applied_once_and_counted() -> None:
    flow = PartitionFlow()
    flow.assign([A0, A1, B0], never)
    flow.pause(A0, 17)
    assert flow.active("a") == [A1]
    assert flow.take_pending() == {A0: 17}
    assert flow.take_pending() == {}
    assert flow.stats["pauses"] == 1


def test_rewind_keeps_the_smallest_offset() -> None:
    flow = PartitionFlow()
    flow.assign([A0], never)
    flow.pause(A0, None)
    flow.rewind(A0, 30)
    flow.rewind(A0, 20)
    flow.rewind(A0, 25)
    assert flow.take_pending() == {A0: 20}


def test_failed_pause_is_applied_again_only_while_still_held() -> None:
    flow = PartitionFlow()
    flow.assign([A0, A1], never)
    flow.pause(A0, 5)
    flow.pause(A1, 6)
    pending = flow.take_pending()
    flow.revoke([A1])
    flow.applied(pending, pending)
    assert flow.to_pause == {A0: 5}


def test_ready_partitions_resume_and_a_failed_resume_holds_them_again() -> None:
    flow = PartitionFlow()
    flow.assign([A0, A1], never)
    flow.pause(A0, None)
    flow.pause(A1, None)
    assert flow.take_ready(always) == []  # pauses not applied yet
    flow.applied(flow.take_pending(), {})
    assert sorted(flow.take_ready(lambda tp: tp == A0)) == [A0]
    assert flow.paused == {A1}
    assert flow.stats["resumes"] == 1
    flow.resume_failed([A0])
    assert flow.paused == {A0, A1}


def test_assign_keeps_held_partitions_and_pauses_when_full() -> None:
    flow = PartitionFlow()
    flow.assign([A0], never)
    flow.pause(A0, 3)
    assert set(flow.assign([A1, B0], lambda tp: tp == B0)) == {A0, B0}
    assert flow.paused == {A0, B0}
    flow.assign([A0], never)  # assigned again: starts at the committed offset, no seek
    assert A0 not in flow.to_pause


def test_revoke_forgets_everything_about_the_partition() -> None:
    flow = PartitionFlow()
    flow.assign([A0, A1], never)
    flow.pause(A0, 9)
    flow.revoke([A0])
    assert flow.assigned == {A1}
    assert flow.paused == set()
    assert flow.to_pause == {}


def test_a_partition_whose_pause_or_seek_is_being_applied_is_not_resumed() -> None:
    """Issue 7 item 8: a seek that fails during a concurrent resume must not be lost."""
    flow = PartitionFlow()
    flow.assign([A0, A1], never)
    flow.pause(A0, 40)  # rewind A0 to offset 40
    flow.pause(A1, None)
    pending = flow.take_pending()  # the consumer thread is applying them now
    assert flow.take_ready(always) == []
    flow.applied(pending, failed={A0: 40})  # A0's seek failed, A1's pause worked
    assert flow.take_ready(always) == [A1]
    assert flow.to_pause == {A0: 40} and A0 in flow.paused
    flow.applied(flow.take_pending(), {})
    assert flow.take_ready(always) == [A0]


def test_a_paused_partition_revoked_and_assigned_back_is_released() -> None:
    """Issue 7 item 1: the source forgets a revoked partition's pause, librdkafka does not."""
    flow = PartitionFlow()
    flow.assign([A0, A1], never)
    flow.pause(A0, None)
    flow.applied(flow.take_pending(), {})
    flow.revoke([A0])
    keep = flow.assign([A0], never)  # back, with room: not to be kept paused
    assert keep == []
    assert released_on_assign([A0], keep) == [A0]
    flow.pause(A1, None)
    keep = flow.assign([B0], always)  # full: B0 stays paused, A1 is still held
    assert set(keep) == {A1, B0}
    assert released_on_assign([B0], keep) == []


def test_a_budget_is_full_at_either_cap_and_reopens_at_half_of_both() -> None:
    budget = Budget(max_count=4, max_bytes=100)
    assert [budget.add(10) for _ in range(4)] == [False, False, False, True]
    assert budget.remove(10) is False  # 3 of 4: still full
    assert budget.remove(10) is True  # 2 of 4 and 20 of 100 bytes: open again
    assert budget.add(90) is True  # 110 bytes
    assert budget.remove(10) is False  # 2 items but 100 bytes: still full
    assert budget.remove(90) is True and (budget.count, budget.bytes) == (1, 10)
