"""The committed data view: cursors, ranges, merging the ranks' parts, passes and stages."""

from __future__ import annotations

from tidemill.data._progress import Cursor, DataProgress, RankPart, from_ranges, to_ranges


def test_a_cursor_inside_a_window_keeps_the_window_and_one_between_windows_is_a_position() -> None:
    inside = Cursor(start=100, rows=50, taken=20, end=150)
    assert inside.to_json() == [100, 50, 20, 150]
    assert Cursor.from_json(inside.to_json()) == inside
    used_up = Cursor(start=100, rows=50, taken=50, end=150)
    assert used_up.to_json() == 150
    assert Cursor.from_json(150) == Cursor.at(150)


def test_done_shards_travel_as_ranges() -> None:
    assert to_ranges([5, 0, 1, 2, 9, 8]) == [[0, 3], [5, 6], [8, 10]]
    assert from_ranges(to_ranges(range(1000))) == set(range(1000))


def test_merging_parts_adds_what_each_rank_read_and_drops_cursors_of_finished_shards() -> None:
    base = DataProgress(
        stage=0,
        done={"t": {0}},
        cursors={"t": {"t#1": Cursor(10, 5, 2, 15), "t#2": Cursor.at(40)}},
    )
    rank0 = RankPart()
    rank0.hold("t", "t#1", Cursor.at(30))
    rank1 = RankPart()
    rank1.finish("t", 2, "t#2")
    rank1.hold("t", "t#3", Cursor(0, 8, 3, 8))

    merged = base.merged([rank0, rank1])

    assert merged.done == {"t": {0, 2}}
    assert merged.cursors == {"t": {"t#1": Cursor.at(30), "t#3": Cursor(0, 8, 3, 8)}}
    assert DataProgress.from_json(merged.to_json()) == merged
    assert RankPart.from_json(rank1.to_json()) == rank1


def test_a_new_pass_forgets_batch_sources_but_keeps_streams_and_the_last_pass_ends_them() -> None:
    view = DataProgress(
        done={"table": {0, 1}, "stream": {3}},
        cursors={"stream": {"s/0": Cursor.at(7)}},
    )
    second = view.next_pass(["table"], epochs=2)
    assert (second.pass_index, second.batch_ended) == (1, False)
    assert second.done == {"stream": {3}}
    assert second.cursors == {"stream": {"s/0": Cursor.at(7)}}
    last = second.next_pass(["table"], epochs=2)
    assert last.batch_ended and last.pass_index == 1
    assert last.next_stage() == DataProgress(stage=1)


def test_a_job_without_a_view_starts_at_the_first_stage() -> None:
    assert DataProgress.from_json(None) == DataProgress()
