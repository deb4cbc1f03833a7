"""Trace and cluster readers: good rows become jobs and nodes; a bad row stops the read, named."""

from __future__ import annotations

from pathlib import Path

import pytest

from tidemill.api.errors import SpecError
from tidemill.scheduler.sim import (
    SimInputError,
    read_cluster,
    read_csv_trace,
    read_openb_nodes,
    read_openb_pods,
    read_trace,
)

OPENB = Path("/work/shared/data/traces/alibaba-gpu-v2023")
OPENB_HEADER = (
    "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,"
    "creation_time,deletion_time,scheduled_time\n"
)
GIB = 2**30


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_header_saved_with_a_byte_order_mark_reads_the_same(tmp_path: Path) -> None:
    path = tmp_path / "excel.csv"
    path.write_bytes("timestamp,gpus,queue\r\n0,1,ads\r\n".encode("utf-8-sig"))
    (only,) = read_trace(path)
    assert (only.arrival_s, only.gpus, only.queue) == (0.0, 1.0, "ads")


def test_a_csv_trace_fills_defaults_and_splits_a_gang_over_its_pods(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "t.csv",
        "timestamp,duration,gpus,queue,pods,name,priority\n"
        "0,3600,16,ads,2,big,5\n"
        "12.5,,0.5,search,,,\n",
    )
    big, small = read_csv_trace(path)
    assert (big.name, big.pods, big.gpu_per_pod, big.gpus, big.priority) == ("big", 2, 8.0, 16.0, 5)
    assert (big.arrival_s, big.duration_s, big.queue) == (0.0, 3600.0, "ads")
    assert (small.name, small.duration_s, small.gpu_per_pod, small.pods) == ("job-3", None, 0.5, 1)
    assert (small.cpu_millis_per_pod, small.memory_bytes_per_pod) == (1000, 4 * GIB)


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ("0,10,1,ads\n5,x,1,ads\n", "line 3: duration: 'x' is not a number"),
        ("0,10,1,ads\n-5,10,1,ads\n", "line 3: timestamp: -5 is out of range"),
        ("0,10,1.5,ads\n", "line 2: gpus: 1.5 over 1 pod(s) is 1.5 per pod"),
        ("0,10,1,\n", "line 2: queue: is empty"),
        ("0,10,1\n", "line 2: has 3 values; the header names 4"),
        ("0,10,inf,ads\n", "line 2: gpus: inf is out of range"),
    ],
    ids=[
        "a duration that is not a number",
        "a negative arrival time",
        "a fraction above one GPU",
        "an empty queue",
        "a short row",
        "an infinite GPU count",
    ],
)
def test_a_bad_csv_row_is_named_with_its_line_and_column(
    tmp_path: Path, rows: str, expected: str
) -> None:
    path = write(tmp_path, "t.csv", "timestamp,duration,gpus,queue\n" + rows)
    with pytest.raises(SimInputError) as caught:
        read_csv_trace(path)
    assert str(caught.value).startswith(f"{path} {expected}"), str(caught.value)


def test_a_gang_whose_gpus_do_not_divide_over_its_pods_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "t.csv", "timestamp,gpus,queue,pods\n0,12,ads,8\n")
    with pytest.raises(SimInputError, match=r"line 2: gpus: 12 over 8 pod.*multiple of pods"):
        read_csv_trace(path)


def test_a_header_without_a_required_column_or_with_an_unknown_one_is_refused(
    tmp_path: Path,
) -> None:
    missing = write(tmp_path, "m.csv", "timestamp,duration,queue\n0,1,ads\n")
    with pytest.raises(SimInputError, match=r"line 1: the header lacks gpus"):
        read_csv_trace(missing)
    unknown = write(tmp_path, "u.csv", "timestamp,gpus,queue,gpu\n0,1,ads,1\n")
    with pytest.raises(SimInputError, match=r"line 1: unknown column.s. gpu; known: timestamp"):
        read_csv_trace(unknown)


def test_a_repeated_job_name_names_both_lines(tmp_path: Path) -> None:
    path = write(tmp_path, "t.csv", "name,timestamp,gpus,queue\na,0,1,q\nb,0,1,q\na,1,1,q\n")
    with pytest.raises(SimInputError, match=r"line 4: name: 'a' is already the name of line 2"):
        read_csv_trace(path)


def test_a_missing_file_says_it_cannot_be_read(tmp_path: Path) -> None:
    with pytest.raises(SimInputError, match=r"absent.csv: cannot read the file"):
        read_trace(tmp_path / "absent.csv")


def test_openb_pods_become_shares_whole_gpus_and_cpu_only_jobs(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "pods.csv",
        OPENB_HEADER + "p0,12000,16384,1,460,,LS,Running,100,500,120\n"
        "p1,8000,1024,4,1000,V100M32,BE,Running,0,50,0\n"
        "p2,2000,512,0,0,,Burstable,Pending,10,70,\n",
    )
    share, whole, cpu_only = read_openb_pods(path)
    assert (share.gpu_per_pod, share.arrival_s, share.duration_s, share.queue) == (
        0.46,
        100.0,
        380.0,
        "ls",
    )
    assert (share.cpu_millis_per_pod, share.memory_bytes_per_pod) == (12000, 16384 * 2**20)
    assert (whole.gpu_per_pod, whole.gpu_model, whole.duration_s) == (4.0, "V100M32", 50.0)
    assert (cpu_only.gpus, cpu_only.duration_s, cpu_only.queue) == (0.0, 60.0, "burstable")
    assert read_trace(path) == [share, whole, cpu_only]


def test_an_openb_pod_deleted_before_it_was_created_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "pods.csv", OPENB_HEADER + "p0,1000,1024,1,1000,,LS,Running,100,50,\n")
    with pytest.raises(SimInputError, match=r"line 2: deletion_time: 50 is out of range"):
        read_openb_pods(path)


def test_the_shipped_openb_trace_and_node_list_read_whole() -> None:
    pods = read_openb_pods(OPENB / "openb_pod_list_default.csv")
    cluster = read_openb_nodes(OPENB / "openb_node_list_gpu_node.csv")
    assert len(pods) == 8152
    assert sum(1 for p in pods if 0 < p.gpu_per_pod < 1) == 3078
    assert (len(cluster.nodes), sum(n.gpus for n in cluster.nodes)) == (1213, 6212)


def test_an_openb_node_list_row_with_a_bad_gpu_count_is_named(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "nodes.csv",
        "sn,cpu_milli,memory_mib,gpu,model\nn0,64000,1024,8,G2\nn1,1,1,two,G2\n",
    )
    with pytest.raises(SimInputError, match=r"nodes.csv line 3: gpu: 'two' is not a whole number"):
        read_cluster(path)


def test_a_cluster_yaml_is_the_server_s_cluster_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "cluster.yaml",
        "nodes:\n"
        "  - {name: gpu, cpu: 64, memory: 512Gi, gpus: 8, gpuModel: A100, count: 2,"
        " labels: {rack: r1}}\n"
        "  - {name: cpu, cpu: 32, memory: 64Gi}\n"
        "queues:\n"
        "  - {name: ads, weight: 2, max: {gpu: 8}}\n",
    )
    state = read_cluster(path)
    assert [(n.name, n.gpus, n.gpu_model, n.labels) for n in state.nodes] == [
        ("gpu-0", 8, "A100", {"rack": "r1"}),
        ("gpu-1", 8, "A100", {"rack": "r1"}),
        ("cpu", 0, None, {}),
    ]
    assert state.nodes[0].cpu_millis == 64_000 and state.nodes[2].memory_bytes == 64 * GIB
    assert (state.queues["ads"].weight, state.queues["ads"].max_gpu) == (2.0, 8.0)


def test_a_cluster_yaml_s_topology_numa_and_reservation_settings_reach_the_scheduler(
    tmp_path: Path,
) -> None:
    path = write(
        tmp_path,
        "cluster.yaml",
        "topology: {levels: [rack]}\n"
        "nodes:\n"
        "  - {name: gpu, cpu: 4, memory: 64Gi, gpus: 2, labels: {rack: r1},"
        " numa: [{cpus: '0-1', gpus: [0]}, {cpus: '2-3', gpus: [1]}]}\n"
        "queues:\n"
        "  - {name: ads, runtimeEstimateSeconds: 600, reserveAfterSeconds: 1800}\n",
    )
    state = read_cluster(path)
    assert state.topology == ("rack",)
    assert [(n.cpus, n.gpus) for n in state.nodes[0].numa] == [((0, 1), (0,)), ((2, 3), (1,))]
    ads = state.queues["ads"]
    assert (ads.runtime_estimate_s, ads.reserve_after_s) == (600.0, 1800.0)


def test_a_bad_cluster_yaml_reports_the_field(tmp_path: Path) -> None:
    path = write(
        tmp_path, "cluster.yaml", "nodes:\n  - {name: n1, cpu: 4, memory: 1Gi, gpus: -1}\n"
    )
    with pytest.raises(SpecError) as caught:
        read_cluster(path)
    assert any("gpus" in str(error) for error in caught.value.errors)
    empty = write(tmp_path, "empty.yaml", "queues: [{name: ads}]\n")
    with pytest.raises(SimInputError, match=r"declares no nodes"):
        read_cluster(empty)
