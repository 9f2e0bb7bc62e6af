"""Names of the files every run folder holds (shared by all ranks, written by rank 0)."""
CONFIG_FILE = "config.yaml"  # the resolved config the run trained with
RUN_FILE = "run.json"  # the setup it actually ran with (world size, backend, precision, devices)
MANIFEST_COPY = "manifest.json"  # the dataset's manifest, so a run can be used after its data is gone
LOCK_FILE = ".lock"  # held by the training process that owns the folder
TB_DIR = "tb"  # TensorBoard events
TRACKERS_FILE = "trackers.json"  # the run ids of the experiment trackers a resume continues (MLflow, W&B)
TASKS_DIR = "tasks"  # default output folder of tasks: tasks/<task>
