"""`tidemill simulate` end to end: a table, summary.json and plots; exit 2 on a bad row."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tidemill.cli.main import app
from tidemill.cli.simulate import DEFAULT_POLICY_NAMES, POLICY_NAMES
from tidemill.scheduler.sim import DEFAULT_POLICIES, POLICIES

runner = CliRunner()

CLUSTER = (
    "nodes:\n  - {name: gpu, cpu: 64, memory: 512Gi, gpus: 8, count: 2}\n"
    "queues:\n  - {name: ads}\n  - {name: search, weight: 2}\n"
)
TRACE = (
    "timestamp,duration,gpus,queue,pods\n"
    "0,100,8,ads,1\n"
    "0,100,16,search,2\n"
    "10,50,4,ads,1\n"
    "20,30,2,search,1\n"
)


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(CLUSTER)
    trace = tmp_path / "trace.csv"
    trace.write_text(TRACE)
    return trace, cluster


def simulate(trace: Path, cluster: Path, out: Path, *extra: str) -> tuple[int, str, str]:
    args = ["simulate", "--trace", str(trace), "--cluster", str(cluster), "--out", str(out)]
    result = runner.invoke(app, [*args, *extra])
    return result.exit_code, result.stdout, result.stderr


def test_a_replay_compares_tidemill_with_both_baselines_and_writes_json_and_plots(
    files: tuple[Path, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    code, stdout, stderr = simulate(*files, out)
    assert code == 0, stderr
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["policies"]) == ["tidemill", "first-fit", "best-fit"]
    tidemill = summary["policies"]["tidemill"]
    assert (summary["jobs"], summary["gpus"], tidemill["ended"]) == (4, 16, 4)
    # The 16-GPU gang holds both nodes until 100; the others wait for it.
    assert tidemill["queueing_delay_s"]["max"] == 100
    for name in ("gpu_allocation.png", "jct_cdf.png", "queue_slowdown.png"):
        assert (out / name).read_bytes().startswith(b"\x89PNG")
    assert "tidemill" in stdout and "best-fit" in stdout and "JCT MEAN/P50/P99" in stdout
    assert f"wrote {out / 'summary.json'}" in stderr


def test_a_bad_row_names_its_line_and_exits_2(files: tuple[Path, Path], tmp_path: Path) -> None:
    trace, cluster = files
    trace.write_text(TRACE + "30,soon,1,ads,1\n")
    code, _, stderr = simulate(trace, cluster, tmp_path / "out")
    assert code == 2
    assert f"error: {trace} line 6: duration: 'soon' is not a number" in stderr
    assert not (tmp_path / "out").exists()


def test_an_unknown_policy_or_a_bad_cluster_file_exits_2(
    files: tuple[Path, Path], tmp_path: Path
) -> None:
    trace, cluster = files
    code, _, stderr = simulate(trace, cluster, tmp_path / "out", "--policy", "random")
    assert code == 2
    assert "--policy: 'random' is not a policy; choose from tidemill, first-fit" in stderr
    cluster.write_text("nodes:\n  - {name: n1, cpu: 4, memory: lots}\n")
    code, _, stderr = simulate(trace, cluster, tmp_path / "out")
    assert code == 2 and "memory" in stderr


def test_without_matplotlib_the_json_is_written_and_the_install_is_named(
    files: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for module in ("matplotlib", "matplotlib.figure"):
        monkeypatch.setitem(sys.modules, module, None)  # what import sees when it is absent
    out = tmp_path / "out"
    code, _, stderr = simulate(*files, out, "--policy", "fifo")
    assert code == 0, stderr
    assert "pip install 'tidemill[sim]'" in stderr
    assert list(json.loads((out / "summary.json").read_text())["policies"]) == ["fifo"]
    assert not (out / "jct_cdf.png").exists()


def test_packing_reports_allocation_at_each_demand_point(tmp_path: Path) -> None:
    nodes = tmp_path / "nodes.csv"
    nodes.write_text("sn,cpu_milli,memory_mib,gpu,model\nn0,64000,262144,4,T4\n")
    pods = tmp_path / "pods.csv"
    pods.write_text(
        "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,"
        "creation_time,deletion_time,scheduled_time\n"
        "p0,1000,1024,1,500,,LS,Running,0,10,0\np1,1000,1024,1,1000,,BE,Running,0,10,0\n"
    )
    out = tmp_path / "out"
    code, stdout, stderr = simulate(pods, nodes, out, "--packing", "--seeds", "2")
    assert code == 0, stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seeds"] == [42, 43]
    assert summary["packing"]["best-fit"]["mean_percent"]["130%"] == 100.0
    assert "GPU ALLOC @130% DEMAND" in stdout


def test_the_command_names_every_policy_the_simulator_has() -> None:
    assert tuple(POLICIES) == POLICY_NAMES
    assert DEFAULT_POLICY_NAMES == DEFAULT_POLICIES


def test_the_cluster_files_scheduler_section_is_the_policy_tidemill_replays_with(
    tmp_path: Path,
) -> None:
    """Behind a 16-GPU gang that waits for the whole cluster, a 4-GPU job starts at
    once by default; with ``strictFifo`` the queue's head blocks it until the gang ends."""
    trace = tmp_path / "trace.csv"
    trace.write_text(
        "timestamp,duration,gpus,queue,pods\n0,100,8,ads,1\n1,50,16,ads,2\n2,10,4,ads,1\n"
    )
    waits: dict[str, float] = {}
    for name, section in [("default", ""), ("strict", "scheduler: {strictFifo: true}\n")]:
        cluster = tmp_path / f"{name}.yaml"
        cluster.write_text(
            "nodes:\n  - {name: gpu, cpu: 64, memory: 512Gi, gpus: 8, count: 2}\n" + section
        )
        out = tmp_path / name
        code, _, stderr = simulate(trace, cluster, out, "--policy", "tidemill", "--no-plots")
        assert code == 0, stderr
        tidemill = json.loads((out / "summary.json").read_text())["policies"]["tidemill"]
        waits[name] = tidemill["queueing_delay_s"]["max"]
    assert waits == {"default": 99, "strict": 148}
