"""``python -m repair_ray.cli ...`` is ``repair-ray ...``."""

from . import main

if __name__ == "__main__":  # importing the module (as tools that walk the package do) runs nothing
    main(prog_name="repair-ray")
