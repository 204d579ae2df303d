"""Run machinery shared by every method: the epoch driver, checkpoints, run directories, monitoring, devices."""
