"""Watch one job to its end: its log lines, its events, and a live status line.

Logs arrive on their own thread (the server's ``/logs?follow=true`` stream, which ends
when the job does); events and phase are polled. On a terminal it draws a Rich live
status line under the output; in a pipe it prints the same facts as plain lines.
``tidemill run`` and ``tidemill submit --wait`` both watch through :func:`watch`.
"""

from __future__ import annotations

import re
import sys
import threading
import time
from types import TracebackType
from typing import Protocol

from rich.console import Console
from rich.live import Live
from rich.spinner import Spinner
from rich.text import Text

from tidemill.api.status import EventView, JobPhase, JobView
from tidemill.cli import render, units
from tidemill.cli.common import stdout_console
from tidemill.client import Client, TidemillError

LOG_DRAIN_S = 10.0
"""How long to wait for the last log lines after the job has ended."""
EVENT_ECHO = re.compile(r"^\[master-\d+\] tidemill-master: (Normal|Warning) [A-Z][A-Za-z]*: ")
"""A job master's log line that repeats an event it posted (``tidemill logs --role
master`` keeps them beside its own lines); the watch shows that event from the events
themselves, with its time and replica, so it skips the echo."""


class Sink(Protocol):
    """Where progress goes; log lines may come from another thread."""

    def line(self, text: str, style: str = "") -> None: ...

    def status(self, view: JobView, elapsed_s: float) -> None: ...


class PlainSink:
    """For pipes and files: every line as it is, and a line per change of status."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_status = ""

    def __enter__(self) -> PlainSink:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None

    def line(self, text: str, style: str = "") -> None:
        with self._lock:
            sys.stdout.write(text + "\n")
            sys.stdout.flush()

    def status(self, view: JobView, elapsed_s: float) -> None:
        text = f"status: {view.phase.value} ({render.counts_text(render.replica_counts(view))})"
        if text != self._last_status:
            self._last_status = text
            self.line(text)


class LiveSink:
    """For terminals: output scrolls above a spinner with phase, replicas and time."""

    def __init__(self, console: Console, key: str) -> None:
        self._console = console
        self._key = key
        self._live = Live(
            Spinner("dots", text=f"{key} submitted"),
            console=console,
            transient=True,
            refresh_per_second=8,
        )

    def __enter__(self) -> LiveSink:
        self._live.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._live.stop()

    def line(self, text: str, style: str = "") -> None:
        self._console.print(Text(text, style=style), soft_wrap=True)

    def status(self, view: JobView, elapsed_s: float) -> None:
        text = Text.assemble(
            (self._key, "bold"),
            "  ",
            render.phase_text(view.phase),
            "  ",
            render.counts_text(render.replica_counts(view)),
            "  ",
            (units.duration(elapsed_s), "dim"),
        )
        self._live.update(Spinner("dots", text=text))


class JobProgress:
    """Streams a submitted job's logs and events until it succeeds or fails."""

    def __init__(self, client: Client, view: JobView, sink: Sink, poll_s: float = 0.5) -> None:
        self._client = client
        self._view = view
        self._sink = sink
        self._poll_s = poll_s
        self._key = f"{view.namespace}/{view.name}"
        self._last_event: int | None = None
        self._stopping = threading.Event()
        self.view = view
        """The latest view polled (replicas and their pids), also after Ctrl-C."""

    def follow(self) -> JobView:
        """Block until the job ends; returns its final view. Ctrl-C propagates."""
        started = time.monotonic()
        reader = threading.Thread(target=self._pump_logs, name="tidemill-logs", daemon=True)
        reader.start()
        try:
            view = self._view
            while True:
                view = self.view = self._client.get(view.name, view.namespace)
                self._print_new_events()
                if view.phase.is_terminal:
                    break
                self._sink.status(view, time.monotonic() - started)
                time.sleep(self._poll_s)
            reader.join(LOG_DRAIN_S)
            self._print_new_events()
            return view
        finally:
            self._stopping.set()

    def _pump_logs(self) -> None:
        # A client of its own: the main thread's keeps polling while this one blocks.
        try:
            with Client(self._client.server) as client:
                view = self._view
                for text in client.logs(view.name, follow=True, namespace=view.namespace):
                    if not EVENT_ECHO.match(text):
                        self._sink.line(text)
        except TidemillError as exc:
            if not self._stopping.is_set():
                self._sink.line(f"log stream ended early: {exc}", style="yellow")

    def _print_new_events(self) -> None:
        for event in self._client.events(job=self._key, since=self._last_event):
            self._sink.line(*event_text(event))
            self._last_event = event.id


def watch(client: Client, view: JobView, poll_s: float = 0.5) -> JobView:
    """Print the job's progress to stdout until it ends; returns its final view."""
    with progress_sink(view) as sink:
        return JobProgress(client, view, sink, poll_s).follow()


def progress_sink(view: JobView) -> LiveSink | PlainSink:
    """A live status line on a terminal, plain lines in a pipe."""
    console = stdout_console()
    if console.is_terminal:
        return LiveSink(console, f"{view.namespace}/{view.name}")
    return PlainSink()


def print_outcome(final: JobView) -> None:
    """How the job ended: the summary line in green or red, then what failed."""
    console = stdout_console()
    style = "green" if final.phase is JobPhase.SUCCEEDED else "red"
    for index, line in enumerate(render.final_summary(final)):
        console.print(line, style=style if index == 0 else "", markup=False, soft_wrap=True)


def event_text(event: EventView) -> tuple[str, str]:
    """An event as a line set apart from log lines, with its style."""
    text = f"-- {render.event_line(event, with_job=False)}"
    return text, "yellow" if event.type == "Warning" else "dim"


__all__ = [
    "JobProgress",
    "LiveSink",
    "PlainSink",
    "Sink",
    "event_text",
    "print_outcome",
    "progress_sink",
    "watch",
]
