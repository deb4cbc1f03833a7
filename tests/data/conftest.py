"""Fixtures: a real tansu broker for the session, Parquet files and an Iceberg catalog per test."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from pyiceberg.catalog import Catalog, load_catalog

from tidemill.data.testing import LocalBroker


@pytest.fixture(scope="session")
def broker() -> Iterator[LocalBroker]:
    """One tansu process for all Kafka tests (about 0.2 s to start); killed at the end."""
    with LocalBroker() as running:
        yield running


@dataclass(frozen=True)
class Topic:
    """A topic filled by a test: ``records[partition]`` in offset order, with their stamps."""

    name: str
    bootstrap: str
    records: dict[int, list[dict[str, Any]]]
    stamps_ms: dict[int, list[int]]


def produce(
    bootstrap: str,
    topic: str,
    records: list[tuple[int, dict[str, Any] | bytes, int]],
) -> None:
    """``(partition, value, timestamp_ms)`` in order; batched as a real producer would."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for partition, value, stamp in records:
        payload = value if isinstance(value, bytes) else json.dumps(value).encode()
        producer.produce(topic, payload, partition=partition, timestamp=stamp)
    left = producer.flush(10)
    if left:
        raise RuntimeError(f"{left} records were not delivered to {topic}")


@pytest.fixture
def make_topic(broker: LocalBroker) -> Callable[..., Topic]:
    """``make_topic(n=200, partitions=2)``: a fresh topic with n JSON records, ids 0..n-1
    spread round-robin, stamped 10 ms apart starting 60 s ago."""

    def make(n: int = 200, partitions: int = 2) -> Topic:
        name = f"t-{uuid.uuid4().hex[:10]}"
        broker.create_topic(name, partitions=partitions)
        base = int(time.time() * 1000) - 60_000
        records: dict[int, list[dict[str, Any]]] = {p: [] for p in range(partitions)}
        stamps: dict[int, list[int]] = {p: [] for p in range(partitions)}
        batch = []
        for i in range(n):
            partition = i % partitions
            record = {"id": i, "user": f"u{i % 7}", "score": i * 0.5}
            records[partition].append(record)
            stamps[partition].append(base + i * 10)
            batch.append((partition, record, base + i * 10))
        produce(broker.bootstrap, name, batch)
        return Topic(name, broker.bootstrap, records, stamps)

    return make


@pytest.fixture
def catalog_props(tmp_path: Path) -> dict[str, str]:
    """Properties of a fresh SQL catalog on SQLite with a local warehouse folder."""
    warehouse = tmp_path / "warehouse"
    warehouse.mkdir()
    return {
        "name": "tests",
        "uri": f"sqlite:///{tmp_path / 'catalog.db'}",
        "warehouse": f"file://{warehouse}",
    }


def open_catalog(props: dict[str, str]) -> Catalog:
    """The catalog ``props`` describe, opened as the data library opens it."""
    return load_catalog(props["name"], **{k: v for k, v in props.items() if k != "name"})
