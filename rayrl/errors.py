"""User-facing errors: one place, on the ground floor, so any layer can raise them.

Each is a problem the user can fix; ``str(error)`` is the whole message and names the file, key,
entry or actor and the fix. The ``rayrl`` command prints it as one ``error:`` line and exits with
status 2 (:func:`rayrl.cli.main`); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class RayrlError(Exception):
    """Base of every error whose message tells the user what to change."""


class ConfigError(RayrlError):
    """An experiment or sweep file, or a command-line override, that does not make a valid config."""


class EnvError(RayrlError, ValueError):
    """An ``[[env]]`` entry that cannot be built: the message names the id and the fix."""


class RewardFunctionError(EnvError):
    """A custom reward function (``[[env]] reward = "file.py:fn"``) that cannot be loaded."""


class CheckpointError(RayrlError, RuntimeError):
    """A run folder, checkpoint or resume point that cannot be used as asked."""


class StorageError(RayrlError, RuntimeError):
    """A storage URI, run folder or archive that is wrong in a way the message explains."""


class EvalSplitError(RayrlError, ValueError):
    """An environment's held-out split is too small for the requested evaluation split."""


class WarmstartError(RayrlError, ValueError):
    """The supervised warm-start cannot run on the configured environment."""


class CommandError(RayrlError):
    """A subcommand's input is wrong in a way the message explains."""


class DataError(RayrlError, ValueError):
    """A data file (supervised fine-tuning's prompt/response table) that cannot be used as given."""


class DiskSpaceError(StorageError):
    """Too little free space for a checkpoint, or a write that ran out of it: the message names the folder,
    the space needed and free, and what to delete or change."""


class NumericsError(RayrlError, RuntimeError):
    """Training met numbers that are not finite (NaN or inf) too often to go on; the message says where."""


class ActorError(RayrlError, RuntimeError):
    """An actor died beyond its restarts or stopped answering: the message names it, the call and the step."""


class WeightsError(RayrlError, RuntimeError):
    """A replica's weights after a load differ from what the learner published (checked every version)."""
