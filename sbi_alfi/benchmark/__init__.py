r"""Benchmarks of sbi-alfi's methods against `sbi`'s on tasks with exact
references."""

from .methods import METHODS, Run, run_method
from .tasks import TASKS, Task, make_task

__all__ = ["METHODS", "TASKS", "Run", "Task", "make_task", "run_method"]
