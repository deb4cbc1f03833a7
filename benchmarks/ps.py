"""Parameter-server embedding training: tidemill's PS against TorchRec and the kernel alone.

Side by side in one run, on the same Zipf(1.1) batches of 4,096 unique ids over a
1M-id, dim-64 Adagrad table (rows/s = unique ids trained per second, a row pulled and
its gradient pushed):

- ``ceiling``: one in-process ``ShardTable`` (tidemill's numba kernels, no network):
  ``pull`` + ``push`` per step, with the undo log on as a PS replica runs it;
- ``tidemill``: two PS replicas as real processes (``python -m tidemill.ps``) on
  this host, a ``PSClient`` of rank 0 of 1, sync mode: pull the batch, push its
  gradients, ``advance()``; once plainly and once with the next batch's pull sent
  ahead (``pull_async``, as ``PSEmbedding.prefetch`` does), which in sync mode rides
  behind this step's pushes. Over loopback TCP (``same_host_socket=False``: the
  issue's measure, and what a worker on another host gets) and through the replicas'
  same-host Unix sockets (what a worker sharing the replicas' host gets). The table
  is filled first (every id pulled once, untimed) and cut, as a job's first commit does;
- ``torchrec``: ``EmbeddingBagCollection`` fused with EXACT_ADAGRAD (FBGEMM CPU kernel)
  in process, forward + backward per step, run by ``benchmarks/ps_torchrec.py`` in its
  own venv (``benchmarks/.venv-torchrec``, made here when missing), with torch's
  default threads and with one.

Also: memory of a 10M-row table in one process (2M when the machine lacks the memory)
against its raw row bytes (weights + Adagrad accumulators, float32) over a replica's
life, undo log on: after the fill and its cut, after ``--steps`` training steps, after
the next cut and after a shorter epoch's cut; and the time to first use of the kernels
(numba compile, cold and cached) in fresh processes. ``--memory-only`` measures the
memory figures alone (that table and the PS shards after their fill) and writes them over
those of the results file.

Prints a table with ratios and the issue's goals, and writes
``benchmarks/results/ps.json``. The machine is shared and has 2 cores, which the PS
replicas, the client and TorchRec's threads all contend for, so the sides run in
interleaved rounds (``--rounds``) and each reports its best round's median step.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from ps_torchrec import run_torchrec, tail

from tidemill.ps import OptimizerConfig, PSClient, PSConfig, TableConfig
from tidemill.ps._hashing import dedupe
from tidemill.ps._table import ShardTable

HERE = Path(__file__).parent
RESULTS = HERE / "results" / "ps.json"
LR, EPS = 0.01, 1e-8
FILL_CHUNK = 65_536
LISTENING = re.compile(r"listening on (\S+):(\d+)")
FIRST_USE = (
    "import time; t = time.perf_counter(); import numpy as np; "
    "from tidemill.ps._table import ShardTable, TableConfig; "
    "table = ShardTable(TableConfig('t', dim=4, admit_min_count=2, max_rows=8, ttl_steps=1)); "
    "table.begin(1); table.pull(np.arange(20), 0); table.pull(np.arange(20), 1); "
    "table.push([1], np.ones((1, 4), np.float32), 1); table.evict(5); "
    "table.load(table.export(), replace=False); table.begin(2); table.pull([3], 6); "
    "table.rollback(); from tidemill.ps._hashing import segment_sum, virtual_shard; "
    "segment_sum(np.ones((2, 2)), [0, 0], 1); virtual_shard([1], 2); "
    "print(time.perf_counter() - t)"
)

Ids = npt.NDArray[np.int64]


def table_config(dim: int) -> TableConfig:
    return TableConfig("bench", dim, OptimizerConfig("adagrad", lr=LR, eps=EPS), 0.01, 1)


def zipf_batches(vocab: int, batch: int, count: int, seed: int) -> npt.NDArray[np.int64]:
    """``[count, batch]`` ids in ``0 .. vocab-1``, each row unique ids drawn Zipf(1.1)
    over a shuffled vocabulary (so hot ids are spread over the table)."""
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(vocab).astype(np.int64)
    batches = np.empty((count, batch), np.int64)
    for row in range(count):
        unique = np.empty(0, np.int64)
        while unique.size < batch:
            ranks = (rng.zipf(1.1, size=4 * batch) - 1) % vocab
            unique = dedupe(np.concatenate([unique, shuffled[ranks]]))[0]
        batches[row] = unique[:batch]
    return batches


def ms(seconds: list[float]) -> float:
    return round(statistics.median(seconds) * 1e3, 3)


def rss_bytes(pid: int | str = "self") -> dict[str, int]:
    """Resident and peak resident bytes of a process (Linux ``/proc``)."""
    status = Path(f"/proc/{pid}/status").read_text()
    found = dict(re.findall(r"^(VmRSS|VmHWM):\s+(\d+) kB", status, re.M))
    return {"rss_bytes": int(found["VmRSS"]) * 1024, "peak_rss_bytes": int(found["VmHWM"]) * 1024}


def fill(table: ShardTable, rows: int, dim: int) -> float:
    """Create rows ``0 .. rows-1`` by pulling each once at step 0; seconds taken."""
    out = np.empty((FILL_CHUNK, dim), np.float32)
    started = time.perf_counter()
    for start in range(0, rows, FILL_CHUNK):
        ids = np.arange(start, min(rows, start + FILL_CHUNK), dtype=np.int64)
        table.pull(ids, step=0, out=out[: ids.size])
    return time.perf_counter() - started


def filled_table(rows: int, dim: int, undo: bool) -> tuple[ShardTable, float]:
    """An in-process table holding ``rows`` rows (undo epoch open, as a PS replica runs
    it, when ``undo``); the fill's rows/s."""
    table = ShardTable(table_config(dim))
    if undo:
        table.begin(0)
    fill_s = fill(table, rows, dim)
    if undo:
        table.begin(1)
    return table, rows / fill_s


def time_table(table: ShardTable, batches: Ids, first_step: int) -> dict[str, Any]:
    """The kernel alone, no network: pull + push per batch."""
    dim = table.config.dim
    grads = np.random.default_rng(2).standard_normal((batches.shape[1], dim)).astype(np.float32)
    out = np.empty((batches.shape[1], dim), np.float32)
    pull_s, push_s = [], []
    for step, ids in enumerate(batches, start=first_step):
        t0 = time.perf_counter()
        table.pull(ids, step=step, out=out)
        t1 = time.perf_counter()
        table.push(ids, grads, step=step)
        pull_s.append(t1 - t0)
        push_s.append(time.perf_counter() - t1)
    step_ms = ms([a + b for a, b in zip(pull_s, push_s, strict=True)])
    return {
        "pull_ms": ms(pull_s),
        "push_ms": ms(push_s),
        "step_ms": step_ms,
        "rows_per_s": round(batches.shape[1] / step_ms * 1e3),
    }


@contextmanager
def replicas(config: PSConfig, count: int) -> Iterator[list[subprocess.Popen[str]]]:
    """``count`` PS replicas as processes on free loopback ports; SIGTERM'd on exit."""
    env = {
        **os.environ,
        "TIDEMILL_PS": config.to_spec(count).model_dump_json(by_alias=True),
        "TIDEMILL_PS_ADDRS": ",".join(["127.0.0.1:0"] * count),
    }
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "tidemill.ps"],
            env={**env, "TIDEMILL_INDEX": str(index)},
            stdout=subprocess.PIPE,
            text=True,
        )
        for index in range(count)
    ]
    try:
        yield processes
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def address_of(process: subprocess.Popen[str]) -> tuple[str, int]:
    line = process.stdout.readline() if process.stdout else ""
    found = LISTENING.search(line)
    if found is None:
        raise RuntimeError(f"PS replica did not start (exit {process.poll()}): {line!r}")
    return found.group(1), int(found.group(2))


def train_steps(client: PSClient, batches: Ids, grads: npt.NDArray[np.float32]) -> dict[str, Any]:
    """Pull, push, advance per batch; each phase timed."""
    pull_s, push_s, step_s = [], [], []
    for ids in batches:
        t0 = time.perf_counter()
        pulled = client.pull_many({"bench": ids})["bench"]
        t1 = time.perf_counter()
        client.push_pulled({"bench": (pulled, grads)})
        client.advance()
        t2 = time.perf_counter()
        pull_s.append(t1 - t0)
        push_s.append(t2 - t1)
        step_s.append(t2 - t0)
    step_ms = ms(step_s)
    return {
        "pull_ms": ms(pull_s),
        "push_ms": ms(push_s),
        "step_ms": step_ms,
        "rows_per_s": round(batches.shape[1] / step_ms * 1e3),
    }


def train_prefetched(
    client: PSClient, batches: Ids, grads: npt.NDArray[np.float32]
) -> dict[str, Any]:
    """As :func:`train_steps`, but the next batch's pull goes out before this push."""
    step_s = []
    pending = client.pull_async({"bench": batches[0]})
    for index in range(len(batches)):
        t0 = time.perf_counter()
        pulled = pending.result()["bench"]
        if index + 1 < len(batches):
            pending = client.pull_async({"bench": batches[index + 1]}, step=client.step + 1)
        client.push_pulled({"bench": (pulled, grads)})
        client.advance()
        step_s.append(time.perf_counter() - t0)
    step_ms = ms(step_s)
    return {"step_ms": step_ms, "rows_per_s": round(batches.shape[1] / step_ms * 1e3)}


@contextmanager
def filled_ps(
    rows: int, dim: int, shards: int, same_host_socket: bool = False
) -> Iterator[tuple[PSClient, dict[str, Any]]]:
    """Real replicas on loopback and a rank-0-of-1 sync client (over TCP, or their Unix
    sockets with ``same_host_socket``); the table filled (every id pulled once) and cut,
    as a job's first commit does; facts about the fill."""
    config = PSConfig((table_config(dim),), consistency="sync", pull_timeout_s=120.0)
    with replicas(config, shards) as processes:
        addresses = [address_of(process) for process in processes]
        with PSClient(
            config, addresses, rank=0, world=1, same_host_socket=same_host_socket
        ) as client:
            expected = "unix" if same_host_socket else "tcp"
            if client.transports != [expected] * shards:
                raise RuntimeError(f"wanted {expected} to every replica: {client.transports}")
            started = time.perf_counter()
            for start in range(0, rows, FILL_CHUNK):
                client.pull_many({"bench": np.arange(start, min(rows, start + FILL_CHUNK))})
            fill_s = time.perf_counter() - started
            client.advance()
            client.begin(client.step)
            filled = [shard["tables"]["bench"] for shard in client.stats()]
            memory = [entry["memory_bytes"] for entry in filled]
            yield (
                client,
                {
                    "shards": shards,
                    "fill_rows_per_s": round(rows / fill_s),
                    "shard_rows": [entry["rows"] for entry in filled],
                    "shard_memory_bytes": memory,
                    "shard_memory_over_raw": [
                        round(used / (entry["rows"] * dim * 2 * 4), 3)
                        for used, entry in zip(memory, filled, strict=True)
                    ],
                    "shard_rss_bytes": [rss_bytes(p.pid)["rss_bytes"] for p in processes],
                },
            )


def memory_point(table: ShardTable, base_rss: int, raw: int) -> dict[str, Any]:
    """The table's ``memory_bytes`` and the process's RSS above ``base_rss``, over ``raw``."""
    rss = rss_bytes()["rss_bytes"] - base_rss
    return {
        "memory_bytes": table.memory_bytes,
        "memory_over_raw": round(table.memory_bytes / raw, 3),
        "rss_bytes": rss,
        "rss_over_raw": round(rss / raw, 3),
    }


def memory_child(rows: int, dim: int, batch: int, steps: int) -> None:
    """A ``rows``-row table in this process, over a PS replica's life (undo log on): cut,
    filled, cut; ``steps`` training steps (pull + push of Zipf batches), whose first
    changes the undo log saves; a cut (the log keeps its room for the next epoch); a
    tenth as many steps and a cut (the room the short epoch did not need is released).
    Prints its memory at each point as JSON."""
    short = max(1, steps // 10)
    batches = zipf_batches(rows, batch, steps + short, seed=3)
    base = rss_bytes()["rss_bytes"]
    table, fill_rate = filled_table(rows, dim, undo=True)
    raw = rows * (dim + table.config.state_width) * 4
    life = {"after_fill_and_cut": memory_point(table, base, raw)}
    time_table(table, batches[:steps], first_step=1)
    life[f"after_{steps}_steps"] = memory_point(table, base, raw)
    table.begin(1 + steps)
    life["after_their_cut"] = memory_point(table, base, raw)
    time_table(table, batches[steps:], first_step=1 + steps)
    table.begin(1 + steps + short)
    life[f"after_{short}_more_steps_and_a_cut"] = memory_point(table, base, raw)
    peak = rss_bytes()["peak_rss_bytes"] - base
    figures = {
        "rows": table.rows,
        "raw_row_bytes": raw,
        **life["after_fill_and_cut"],
        "peak_rss_over_raw": round(peak / raw, 3),
        "most_over_raw": max(v for p in life.values() for k, v in p.items() if "over" in k),
        "life": life,
        "process_rss_before_table_bytes": base,
        "fill_rows_per_s": round(fill_rate),
    }
    print(json.dumps(figures))


def available_bytes() -> int:
    found = re.search(r"^MemAvailable:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
    return int(found.group(1)) * 1024 if found else 0


def run_memory(rows: int, fallback_rows: int, dim: int, batch: int, steps: int) -> dict[str, Any]:
    """The memory figures of a ``rows``-row table over a replica's life (see
    :func:`memory_child`), or of ``fallback_rows`` when the machine's free memory cannot
    hold the fill's peak (under 2x the raw row bytes; 2.7x is asked for margin)."""
    raw = rows * dim * 2 * 4
    note = f"{rows:,} rows"
    if available_bytes() < 2.7 * raw + (2 << 30):
        note = (
            f"{rows:,} rows need ~{2.7 * raw / 2**30:.1f} GiB at peak; "
            f"{available_bytes() / 2**30:.1f} GiB available: measured {fallback_rows:,}"
        )
        rows = fallback_rows
    argv = [sys.executable, __file__, "--memory-child", str(rows), "--dim", str(dim)]
    argv += ["--batch", str(batch), "--steps", str(steps)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=900)
    if done.returncode:
        return {"note": note, "error": f"memory child exited {done.returncode}: {tail(done)}"}
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return {"note": note, **result}


def first_use_s(cache_dir: str) -> float:
    """Seconds to import and exercise every kernel once in a fresh process."""
    env = {**os.environ, "NUMBA_CACHE_DIR": cache_dir}
    done = subprocess.run(
        [sys.executable, "-c", FIRST_USE], env=env, capture_output=True, text=True, check=True
    )
    return float(done.stdout.strip())


def machine() -> dict[str, Any]:
    cpu = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
    total = re.search(r"^MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
    return {
        "cpu": cpu.group(1) if cpu else platform.processor(),
        "cores": os.cpu_count(),
        "memory_bytes": int(total.group(1)) * 1024 if total else None,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": version("numba"),
        "note": "shared 2-core machine: PS replicas, client, TorchRec contend; rounds vary 3x",
    }


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


SIDES = {
    "ceiling": "ceiling: ShardTable in process (undo log on)",
    "kernel_without_undo_log": "kernel alone, undo log off (info)",
    "tidemill_plain": "tidemill PS, {shards} shards, TCP: pull + push",
    "tidemill_prefetched": "tidemill PS, {shards} shards, TCP: next pull sent ahead",
    "tidemill_unix_plain": "the same, same-host Unix sockets: pull + push",
    "tidemill_unix_prefetched": "the same, same-host Unix sockets: next pull ahead",
    "torchrec_default_threads": "TorchRec fused EBC EXACT_ADAGRAD, {threads} threads",
    "torchrec_1_thread": "TorchRec fused EBC EXACT_ADAGRAD, 1 thread",
}


def best_round(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The least disturbed round (most rows/s), with every round's rows/s."""
    measured = [side for side in rounds if "rows_per_s" in side]
    if not measured:
        return rounds[-1]
    best = max(measured, key=lambda side: side["rows_per_s"])
    return {**best, "rounds_rows_per_s": [side.get("rows_per_s") for side in rounds]}


def print_table(sides: dict[str, dict[str, Any]], shards: int) -> None:
    reference = (
        max(
            sides["torchrec_default_threads"].get("rows_per_s", 0),
            sides["torchrec_1_thread"].get("rows_per_s", 0),
        )
        or None
    )
    ceiling = sides["ceiling"]["rows_per_s"]
    threads = sides["torchrec_default_threads"].get("threads", "default")
    print(f"{'side':56}{'rows/s':>11}{'step ms':>9}{'/TorchRec':>11}{'/ceiling':>10}")
    for name, side in sides.items():
        label = SIDES[name].format(shards=shards, threads=threads)
        rate = side.get("rows_per_s")
        if rate is None:
            print(f"{label:56}  {side.get('error', 'no figure')}")
            continue
        over_trec = ratio(rate, reference)
        print(
            f"{label:56}{rate:>11,}{side['step_ms']:>9.2f}"
            f"{over_trec if over_trec is not None else '-':>11}{ratio(rate, ceiling):>10}"
        )


def measure(args: argparse.Namespace, batches: Ids) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every side, ``args.rounds`` times interleaved (load on a shared machine comes and
    goes); each side's best round, and the PS fill facts."""
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in SIDES}
    with_undo, fill_rate = filled_table(args.rows, args.dim, undo=True)
    without_undo, _ = filled_table(args.rows, args.dim, undo=False)
    with (
        filled_ps(args.rows, args.dim, args.shards) as (client, ps_facts),
        filled_ps(args.rows, args.dim, args.shards, same_host_socket=True) as (local, _),
    ):
        grads = np.random.default_rng(2).standard_normal((args.batch, args.dim), np.float32)
        for round_index in range(args.rounds):
            first_step = 1 + round_index * len(batches)
            rounds["ceiling"].append(time_table(with_undo, batches, first_step))
            rounds["kernel_without_undo_log"].append(time_table(without_undo, batches, first_step))
            rounds["tidemill_plain"].append(train_steps(client, batches, grads))
            rounds["tidemill_prefetched"].append(train_prefetched(client, batches, grads))
            rounds["tidemill_unix_plain"].append(train_steps(local, batches, grads))
            rounds["tidemill_unix_prefetched"].append(train_prefetched(local, batches, grads))
            for name, threads in (("torchrec_default_threads", 0), ("torchrec_1_thread", 1)):
                if not rounds[name] or "error" not in rounds[name][-1]:
                    rounds[name].append(
                        run_torchrec(batches, args.rows, args.dim, threads, (LR, EPS))
                    )
            print(f"round {round_index + 1}/{args.rounds} done", flush=True)
    sides = {name: best_round(measured) for name, measured in rounds.items()}
    sides["ceiling"]["fill_rows_per_s"] = round(fill_rate)
    return sides, ps_facts


def memory_goals(
    memory: dict[str, Any], ps_facts: dict[str, Any], memory_rows: int
) -> dict[str, bool]:
    return {
        "memory_within_2x_raw_at_10m_rows": memory.get("rows") == memory_rows
        and memory["most_over_raw"] <= 2,
        "ps_shard_memory_within_2x_raw": max(ps_facts["shard_memory_over_raw"]) <= 2,
    }


def print_memory(memory: dict[str, Any], ps_facts: dict[str, Any]) -> None:
    if "error" in memory:
        print(f"memory: {memory['error']}")
        return
    print(
        f"memory, {memory['rows']:,} rows: memory_bytes {memory['memory_over_raw']}x raw,"
        f" RSS {memory['rss_over_raw']}x after the fill, at most {memory['most_over_raw']}x"
        f" over its life (peak RSS {memory['peak_rss_over_raw']}x);"
        f" PS shards after fill (undo log on): {ps_facts['shard_memory_over_raw']}x raw"
    )


def memory_only(args: argparse.Namespace) -> None:
    """The memory figures alone (a 10M-row table's life, the PS shards after their fill),
    written over those of the results file; its speed figures stay from their run."""
    memory = run_memory(
        args.memory_rows, args.memory_fallback_rows, args.dim, args.batch, args.steps
    )
    with filled_ps(args.rows, args.dim, args.shards) as (_, ps_facts):
        pass
    print_memory(memory, ps_facts)
    figures = json.loads(RESULTS.read_text())
    figures["memory"], figures["tidemill_fill"] = memory, ps_facts
    figures["goals_met"].update(memory_goals(memory, ps_facts, args.memory_rows))
    figures["memory_figures_from"] = "python benchmarks/ps.py --memory-only"
    RESULTS.write_text(json.dumps(figures, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=100, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--memory-rows", type=int, default=10_000_000)
    parser.add_argument("--memory-fallback-rows", type=int, default=2_000_000)
    parser.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument(
        "--memory-only", action="store_true", help="measure memory only, update its figures"
    )
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child, args.dim, args.batch, args.steps)
        return
    if args.memory_only:
        memory_only(args)
        return
    print(f"note: {machine()['note']}", flush=True)

    batches = zipf_batches(args.rows, args.batch, args.steps, seed=1)
    sides, ps_facts = measure(args, batches)
    memory = run_memory(
        args.memory_rows, args.memory_fallback_rows, args.dim, args.batch, args.steps
    )
    with tempfile.TemporaryDirectory() as cache:
        cold, warm = first_use_s(cache), first_use_s(cache)

    print_table(sides, args.shards)
    best = max(sides["tidemill_plain"]["rows_per_s"], sides["tidemill_prefetched"]["rows_per_s"])
    torchrec = [sides["torchrec_default_threads"], sides["torchrec_1_thread"]]
    reference = max((side.get("rows_per_s", 0) for side in torchrec), default=0) or None
    over_trec = ratio(best, reference)
    over_ceiling = ratio(best, sides["ceiling"]["rows_per_s"])
    unix = max(
        sides["tidemill_unix_plain"]["rows_per_s"], sides["tidemill_unix_prefetched"]["rows_per_s"]
    )
    goals = {
        "tidemill_over_torchrec_at_least_3": None if over_trec is None else over_trec >= 3,
        "tidemill_over_ceiling_at_least_0_5": over_ceiling is not None and over_ceiling >= 0.5,
        **memory_goals(memory, ps_facts, args.memory_rows),
    }
    ceiling, plain = sides["ceiling"], sides["tidemill_plain"]
    print(
        f"pull {ceiling['pull_ms']} ms + push {ceiling['push_ms']} ms in the kernel vs"
        f" {plain['pull_ms']} + {plain['push_ms']} ms through {args.shards} shards"
    )
    print_memory(memory, ps_facts)
    print(f"numba first use: {cold:.1f} s cold, {warm:.1f} s cached")
    print(
        f"over TorchRec: {over_trec} by TCP loopback, {ratio(unix, reference)} through the"
        " same-host Unix sockets"
    )
    print(f"goals (TCP loopback): {goals}")
    figures = {
        "machine": machine(),
        "workload": {
            "rows": args.rows,
            "dim": args.dim,
            "batch_unique_ids": args.batch,
            "steps_per_round": args.steps,
            "rounds": args.rounds,
            "optimizer": {"name": "adagrad", "lr": LR, "eps": EPS},
            "ids": "Zipf(1.1) over a shuffled vocabulary, unique per batch",
            "figure": "each side's best of the interleaved rounds (median step of the round)",
        },
        "sides": sides,
        "tidemill_fill": ps_facts,
        "memory": memory,
        "first_use_cold_compile_s": round(cold, 2),
        "first_use_warm_cache_s": round(warm, 2),
        "ratios": {
            "tidemill_over_torchrec": over_trec,
            "tidemill_over_ceiling": over_ceiling,
            "tidemill_unix_over_torchrec": ratio(unix, reference),
            "tidemill_unix_over_ceiling": ratio(unix, sides["ceiling"]["rows_per_s"]),
        },
        "goals_measured_on": "TCP loopback (the best of plain and prefetched)",
        "goals_met": goals,
    }
    RESULTS.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
