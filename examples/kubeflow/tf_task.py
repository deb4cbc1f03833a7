"""Stands in for a TensorFlow program: shows the task TF_CONFIG gives this replica.

TensorFlow finds its cluster through TF_CONFIG; tidemill sets it for TFJob replicas as
the Kubeflow operator does. Printing it lets the TFJob example run where TensorFlow is
not installed.
"""

from __future__ import annotations

import argparse
import json
import os


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=0, help="pretend training steps")
    steps = parser.parse_args().steps
    config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    task = config.get("task") or {
        "type": os.environ.get("TIDEMILL_ROLE", "worker"),
        "index": int(os.environ.get("TIDEMILL_INDEX", "0")),
    }
    cluster = config.get("cluster", {})
    members = ", ".join(f"{role}: {len(hosts)}" for role, hosts in sorted(cluster.items()))
    print(f"{task['type']} {task['index']}: cluster {{{members}}}", flush=True)
    for step in range(1, steps + 1):
        print(f"{task['type']} {task['index']}: step {step}/{steps}", flush=True)


if __name__ == "__main__":
    main()
