"""One reading of the process table finds a replica's whole tree, as psutil does."""

from __future__ import annotations

import os
import signal
import subprocess

import psutil

from tidemill.engines.usage import ProcessTree

from .processes import wait_for


def test_a_tree_read_once_finds_children_and_grandchildren_as_psutil_does() -> None:
    root = subprocess.Popen(
        ["sh", "-c", "sleep 60 & sh -c 'sleep 60; true' & wait"], start_new_session=True
    )
    try:
        parent = psutil.Process(root.pid)
        wait_for(lambda: len(parent.children(recursive=True)) == 3, "three descendants")

        found = ProcessTree().descendants(parent)

        expected = parent.children(recursive=True)
        assert sorted(p.pid for p in found) == sorted(p.pid for p in expected)
        leaf = next(p for p in expected if not p.children())
        assert ProcessTree().descendants(leaf) == []
    finally:
        os.killpg(root.pid, signal.SIGKILL)
        root.wait()


def test_a_process_that_ended_since_the_reading_is_left_out() -> None:
    root = subprocess.Popen(["sh", "-c", "sleep 60 & wait"], start_new_session=True)
    try:
        parent = psutil.Process(root.pid)
        wait_for(lambda: len(parent.children()) == 1, "the child")
        tree = ProcessTree()
        child = parent.children()[0]
        child.kill()
        child.wait(timeout=10)

        assert tree.descendants(parent) == []
    finally:
        os.killpg(root.pid, signal.SIGKILL)
        root.wait()
