"""What ``GET /api/v1/jobs/{name}/stacks`` and ``POST .../exec`` carry.

A stacks report lists every running replica's threads (frames innermost first) and the
groups of replicas whose main threads stand in the same place: a hung job reads as
"worker 0-6 (ranks 0-6) in all_reduce(); worker 7 (rank 7) in __next__()".
"""

from __future__ import annotations

from pydantic import BaseModel, Field, field_validator

from tidemill.api.limits import text_problem

EXEC_ARGS_MAX = 256
EXEC_ARG_CHARS_MAX = 16 * 1024
EXEC_TIMEOUT_MAX_S = 24 * 3600


class FrameView(BaseModel):
    function: str
    file: str
    line: int


class ThreadView(BaseModel):
    name: str
    main: bool = False
    frames: list[FrameView] = Field(description="innermost first")


class ReplicaStacks(BaseModel):
    replica: str = Field(description="role-index, e.g. worker-3")
    role: str
    index: int
    rank: int | None = Field(None, description="RANK of chief and worker replicas")
    pid: int | None = None
    source: str = Field("", description="py-spy or faulthandler; empty when problem is set")
    problem: str = Field("", description="why there are no stacks")
    threads: list[ThreadView] = []
    text: str = Field("", description="the stacks as the tool printed them")


class StackGroup(BaseModel):
    replicas: list[str]
    label: str = Field(description="worker 0-6 (ranks 0-6)")
    summary: str = Field(description="in all_reduce() at distributed_c10d.py:2050, or the problem")
    frames: list[FrameView] = Field([], description="the shared main-thread stack, innermost first")


class StacksReport(BaseModel):
    job: str = Field(description="namespace/name")
    replicas: list[ReplicaStacks]
    groups: list[StackGroup] = Field(description="largest first")


class ExecRequest(BaseModel):
    role: str = Field(min_length=1, max_length=63)
    index: int = Field(ge=0, le=2**31 - 1)
    command: list[str] = Field(min_length=1, max_length=EXEC_ARGS_MAX)
    timeout_s: float = Field(
        3600.0, gt=0, le=EXEC_TIMEOUT_MAX_S, description="the command is killed after this"
    )

    @field_validator("command")
    @classmethod
    def _bounded(cls, command: list[str]) -> list[str]:
        long = [i for i, arg in enumerate(command) if len(arg) > EXEC_ARG_CHARS_MAX]
        if long:
            raise ValueError(
                f"argument {long[0]} has over {EXEC_ARG_CHARS_MAX} characters; pass long "
                "input in a file the replica can read"
            )
        if not command[0]:
            raise ValueError("the program (first argument) is empty")
        for index, arg in enumerate(command):
            if (problem := text_problem(arg, multiline=True)) is not None:
                raise ValueError(f"argument {index} {problem}")
        return command
