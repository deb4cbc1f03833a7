"""The ``kafka`` source: partition leases with concrete offsets, and group commits.

Start and end positions are resolved to offsets once, when the leases are planned, so
every worker (and every restart) reads the same records.

Two brokers were kept in mind: Apache Kafka, and tansu (the Kafka-protocol broker used in
tests). tansu answers ListOffsets at record-batch granularity: "latest" is the base
offset of the last batch plus one, and a time lookup returns the base offset of a batch
(or 0 for a time after the last record). So neither answer is used as final here:
the head is taken from the high watermark of a fetch at the listed end, and a time
lookup is refined by reading forward to the first record stamped at or after the time.
Against Kafka both refinements cost one fetch per partition.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from tidemill.api.sources import KafkaEnd, KafkaSource, KafkaStart, SourceKind, epoch_ms
from tidemill.data._errors import DataError, SourceNotFound, SourceUnreachable
from tidemill.data._shards import PartitionLease, Shard, lease_id

_LOG = logging.getLogger("tidemill.data.kafka")
_PLANNER_GROUP = "tidemill-planner"
_SCAN_BATCH = 1000
_SCAN_WAIT_S = 0.05
_PLANNER_FETCH_WAIT_MS = 10
"""Planning reads to the head of each partition; it should not wait there for new records."""


def consumer_config(
    bootstrap: str, group_id: str | None, timeout_s: float, fetch_wait_ms: int = 100
) -> dict[str, Any]:
    """Settings shared by planners and readers: manual offsets only, nothing auto-committed.

    ``auto.offset.reset=error`` makes an offset that retention already deleted an error
    instead of a silent jump, which would skip records. ``fetch_wait_ms`` bounds how long
    the broker holds a fetch at the head, which is how long "caught up" takes to notice.
    """
    return {
        "bootstrap.servers": bootstrap,
        "group.id": group_id or _PLANNER_GROUP,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": True,
        "auto.offset.reset": "error",
        "socket.timeout.ms": max(1000, int(timeout_s * 1000)),
        "fetch.wait.max.ms": fetch_wait_ms,
        "logger": _LOG,
    }


def topic_partitions(
    consumer: Consumer, source: str, bootstrap: str, topics: list[str], timeout_s: float
) -> dict[str, list[int]]:
    """The partitions of each topic; missing topics and silent brokers are errors.

    All topics are listed rather than the ones named, because asking a broker about a
    single topic may create it when auto-creation is on.
    """
    try:
        metadata = consumer.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        raise SourceUnreachable(
            source,
            f"no Kafka broker answered at {bootstrap} within {timeout_s:g}s ({_reason(exc)}); "
            "check kafka.bootstrap and that the broker is up",
        ) from None
    known = {name: meta for name, meta in metadata.topics.items() if meta.error is None}
    missing = [topic for topic in topics if topic not in known]
    if missing:
        visible = sorted(name for name in known if not name.startswith("__"))
        raise SourceNotFound(
            source, f"no topic(s) {missing} on {bootstrap}; topics there: {visible}"
        )
    return {topic: sorted(known[topic].partitions) for topic in topics}


def _reason(exc: KafkaException) -> str:
    error = exc.args[0] if exc.args else None
    return error.str() if isinstance(error, KafkaError) else str(exc)


def head_offset(
    consumer: Consumer, source: str, topic: str, partition: int, timeout_s: float
) -> int:
    """The offset the next record produced to the partition will get (its high watermark)."""
    low, high = _watermarks(consumer, source, topic, partition, timeout_s)
    if high <= low:
        return int(high)
    return first_offset_where(
        consumer, source, topic, partition, high - 1, lambda _: False, timeout_s
    )


def low_offset(
    consumer: Consumer, source: str, topic: str, partition: int, timeout_s: float
) -> int:
    """The earliest offset still on the broker."""
    return _watermarks(consumer, source, topic, partition, timeout_s)[0]


def _watermarks(
    consumer: Consumer, source: str, topic: str, partition: int, timeout_s: float
) -> tuple[int, int]:
    try:
        low, high = consumer.get_watermark_offsets(
            TopicPartition(topic, partition), timeout=timeout_s, cached=False
        )
    except KafkaException as exc:
        raise SourceUnreachable(
            source, f"no offsets for {topic}/{partition} within {timeout_s:g}s ({_reason(exc)})"
        ) from None
    return int(low), int(high)


def offset_for_time(
    consumer: Consumer, source: str, topic: str, partition: int, time_ms: int, timeout_s: float
) -> int:
    """The first offset whose record is stamped at or after ``time_ms`` (else the head)."""
    try:
        [found] = consumer.offsets_for_times(
            [TopicPartition(topic, partition, time_ms)], timeout=timeout_s
        )
    except KafkaException as exc:
        raise SourceUnreachable(
            source, f"no time lookup for {topic}/{partition} within {timeout_s:g}s ({_reason(exc)})"
        ) from None
    if found.error is not None:
        raise DataError(source, f"time lookup on {topic}/{partition} failed: {found.error.str()}")
    if found.offset < 0:
        return head_offset(consumer, source, topic, partition, timeout_s)
    return first_offset_where(
        consumer,
        source,
        topic,
        partition,
        found.offset,
        lambda message: message.timestamp()[1] >= time_ms,
        timeout_s,
    )


def first_offset_where(
    consumer: Consumer,
    source: str,
    topic: str,
    partition: int,
    start: int,
    matches: Callable[[Message], bool],
    timeout_s: float,
) -> int:
    """Read from ``start`` to the first record that ``matches``; at the end, the head.

    Gives up only when no record or end-of-partition arrives for ``timeout_s``.
    """
    consumer.assign([TopicPartition(topic, partition, start)])
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            # consume() waits for a full batch or its timeout, so keep each wait short.
            messages = consumer.consume(_SCAN_BATCH, timeout=_SCAN_WAIT_S)
            if messages:
                deadline = time.monotonic() + timeout_s
            elif time.monotonic() > deadline:
                raise SourceUnreachable(
                    source, f"no records from {topic}/{partition} within {timeout_s:g}s"
                )
            for message in messages:
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        return int(message.offset() or 0)
                    raise read_error(source, None, topic, partition, error)
                if matches(message):
                    return int(message.offset() or 0)
    finally:
        consumer.unassign()


def read_error(
    source: str, shard: str | None, topic: str, partition: int, error: KafkaError
) -> DataError:
    """A broker error on a partition as the error type a person can act on."""
    code = error.code()
    where = f"{topic}/{partition}"
    if code in (KafkaError._AUTO_OFFSET_RESET, KafkaError.OFFSET_OUT_OF_RANGE):
        return SourceNotFound(
            source,
            f"the position on {where} is no longer on the broker (deleted by retention?): "
            f"{error.str()}",
            shard=shard,
        )
    if code in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_PARTITION):
        return SourceNotFound(source, f"{where} does not exist: {error.str()}", shard=shard)
    return DataError(source, f"reading {where} failed: {error.str()}", shard=shard)


def plan_kafka(source: str, spec: KafkaSource) -> list[Shard]:
    """One lease per partition of every topic, with start (and end) resolved to offsets."""
    consumer = Consumer(
        consumer_config(spec.bootstrap, spec.group_id, spec.timeout_s, _PLANNER_FETCH_WAIT_MS)
    )
    try:
        partitions = topic_partitions(consumer, source, spec.bootstrap, spec.topics, spec.timeout_s)
        committed = _committed(consumer, source, spec, partitions)
        now_ms = epoch_ms_now()
        leases = []
        for topic, numbers in partitions.items():
            for partition in numbers:
                start = _start(consumer, source, spec, topic, partition, committed)
                end_offset, end_time_ms = _end(consumer, source, spec, topic, partition, now_ms)
                leases.append(
                    Shard(
                        id=lease_id(source, topic, partition),
                        source=source,
                        kind=SourceKind.KAFKA,
                        lease=PartitionLease(
                            bootstrap=spec.bootstrap,
                            topic=topic,
                            partition=partition,
                            start_offset=start,
                            end_offset=end_offset,
                            end_time_ms=end_time_ms,
                            value_format=spec.value_format,
                            group_id=spec.group_id,
                            timeout_s=spec.timeout_s,
                        ),
                    )
                )
        return leases
    finally:
        consumer.close()


def epoch_ms_now() -> int:
    return int(time.time() * 1000)


def _committed(
    consumer: Consumer, source: str, spec: KafkaSource, partitions: dict[str, list[int]]
) -> dict[tuple[str, int], int]:
    if spec.start is not KafkaStart.COMMITTED:
        return {}
    wanted = [TopicPartition(t, p) for t, numbers in partitions.items() for p in numbers]
    try:
        found = consumer.committed(wanted, timeout=spec.timeout_s)
    except KafkaException as exc:
        raise SourceUnreachable(
            source,
            f"no committed offsets for group {spec.group_id!r} within {spec.timeout_s:g}s "
            f"({_reason(exc)})",
        ) from None
    return {(tp.topic, tp.partition): tp.offset for tp in found if tp.offset >= 0}


def _start(
    consumer: Consumer,
    source: str,
    spec: KafkaSource,
    topic: str,
    partition: int,
    committed: Mapping[tuple[str, int], int],
) -> int:
    timeout = spec.timeout_s
    if spec.start is KafkaStart.LATEST:
        return head_offset(consumer, source, topic, partition, timeout)
    if spec.start is KafkaStart.TIMESTAMP and spec.start_time is not None:
        return offset_for_time(
            consumer, source, topic, partition, epoch_ms(spec.start_time), timeout
        )
    if spec.start is KafkaStart.COMMITTED and (topic, partition) in committed:
        return committed[(topic, partition)]
    return low_offset(consumer, source, topic, partition, timeout)


def _end(
    consumer: Consumer, source: str, spec: KafkaSource, topic: str, partition: int, now_ms: int
) -> tuple[int | None, int | None]:
    """``(end_offset, end_time_ms)``: an end time already past is resolved to an offset."""
    if spec.end is KafkaEnd.OFFSETS and spec.end_offsets is not None:
        offsets = spec.end_offsets.get(topic, {})
        if partition not in offsets:
            raise SourceNotFound(
                source,
                f"endOffsets has no offset for {topic}/{partition}; "
                f"give one for every partition of {topic}",
            )
        return offsets[partition], None
    if spec.end is KafkaEnd.TIMESTAMP and spec.end_time is not None:
        end_ms = epoch_ms(spec.end_time)
        if end_ms <= now_ms:
            return offset_for_time(consumer, source, topic, partition, end_ms, spec.timeout_s), None
        return None, end_ms
    return None, None


def commit_offsets(positions: Mapping[Shard, int], timeout_s: float | None = None) -> None:
    """Commit reader positions of Kafka leases to their consumer groups.

    Call it only after the model state holding these positions has committed: the
    group's offsets then never run ahead of what was trained.

    Example::

        >>> commit_offsets({lease: reader.position})
    """
    groups: dict[tuple[str, str, float], list[TopicPartition]] = {}
    sources: dict[tuple[str, str, float], str] = {}
    for shard, position in positions.items():
        lease = shard.lease
        if lease is None:
            raise ValueError(f"shard {shard.id!r} is not a Kafka lease")
        if not lease.group_id:
            raise ValueError(
                f"source {shard.source!r} has no groupId; set kafka.groupId to commit offsets"
            )
        key = (lease.bootstrap, lease.group_id, timeout_s or lease.timeout_s)
        groups.setdefault(key, []).append(TopicPartition(lease.topic, lease.partition, position))
        sources.setdefault(key, shard.source)
    for key, offsets in groups.items():
        _commit_group(sources[key], *key, offsets)


def _commit_group(
    source: str, bootstrap: str, group: str, timeout_s: float, offsets: list[TopicPartition]
) -> None:
    consumer = Consumer(consumer_config(bootstrap, group, timeout_s))
    try:
        results = consumer.commit(offsets=offsets, asynchronous=False)
    except KafkaException as exc:
        raise SourceUnreachable(
            source, f"committing offsets of group {group!r} at {bootstrap} failed ({_reason(exc)})"
        ) from None
    finally:
        consumer.close()
    failed = [f"{tp.topic}/{tp.partition}: {tp.error.str()}" for tp in results or [] if tp.error]
    if failed:
        raise DataError(source, f"group {group!r} refused offsets: {failed}")
