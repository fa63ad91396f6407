r"""Benchmarks of sbi-alfi's methods against `sbi`'s on tasks with exact
references; `python -m sbi_alfi.benchmark --help` runs them."""

from .methods import METHODS, Run, run_method
from .report import write_report
from .run import Result, read_results, run_benchmark
from .tasks import TASKS, SbibmTask, Task, make_task, sbibm_task

__all__ = [
    "METHODS",
    "TASKS",
    "Result",
    "Run",
    "SbibmTask",
    "Task",
    "make_task",
    "read_results",
    "run_benchmark",
    "run_method",
    "sbibm_task",
    "write_report",
]
