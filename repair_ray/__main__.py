"""``python -m repair_ray ...`` is ``repair-ray ...``."""

from .cli import main

main(prog_name="repair-ray")
