"""Deprecated: per-prompt stage pipelining is experimental and lives in `trapo.experimental.pipeline`."""

from trapo._deprecated import reexport

globals().update(
    reexport(
        __name__,
        {
            name: "trapo.experimental.pipeline"
            for name in ("FakeEngine", "run_pipelined", "run_stage_synchronous", "simulate")
        },
    )
)
