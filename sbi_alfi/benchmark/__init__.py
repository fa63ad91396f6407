r"""Benchmarks of sbi-alfi's methods against `sbi`'s on tasks with exact
references."""

from .tasks import TASKS, Task, make_task

__all__ = ["TASKS", "Task", "make_task"]
