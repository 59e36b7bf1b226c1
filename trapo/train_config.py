"""Deprecated: ``trapo train``'s config resolution lives in `trapo.commands.train`."""

from trapo._deprecated import reexport

globals().update(
    reexport(
        __name__,
        {
            name: "trapo.commands.train"
            for name in (
                "TrainPlan",
                "TrainScriptArguments",
                "describe_plan",
                "load_train_plan",
                "load_yaml",
                "resolve_rewards",
                "run_train",
            )
        },  # fmt: skip
    )
)
