"""``python -m vaeforge.run task=NAME run_dir=DIR [...]``: the task runner's command line (see
:mod:`vaeforge.tasks.runner`)."""
from .tasks.runner import main

if __name__ == "__main__":
    main()
