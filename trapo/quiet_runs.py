"""Deprecated: the settings of short in-process runs live in `trapo.local_runs`."""

from trapo._deprecated import reexport

globals().update(
    reexport(
        __name__,
        {name: "trapo.local_runs" for name in ("local_trainer_args", "quiet_libraries", "quiet_trainer")},
    )
)
