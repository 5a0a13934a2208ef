class RecipeError(Exception):
    """Bad input or configuration: reported as one line, without a traceback."""


# The exit status of a job that stopped on a signal after saving a checkpoint (EX_TEMPFAIL):
# the Slurm batch script requeues it without counting a retry, and the rerun resumes.
PREEMPTED = 75


class Preempted(Exception):
    """Training stopped on a signal after writing a checkpoint."""
