"""rissole's exceptions live in the torch-free runtime (rissole_runtime.errors), so the edge sampler and the
training package raise and report the same errors; re-exported here under their old names."""

from rissole_runtime.errors import CheckpointError, ConfigError, DataError, RissoleError, run_command

__all__ = ["CheckpointError", "ConfigError", "DataError", "RissoleError", "run_command"]
