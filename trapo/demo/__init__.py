"""`trapo demo`: TRAPO and its baselines on the built-in task, from one tiny local base, at equal budget.

- `trapo.demo.settings`: what defines a run (`DemoSettings`);
- `trapo.demo.runner`: training every method and evaluating it along the way;
- `trapo.demo.report`: the table, ``results.json`` and the plots.
"""

from trapo.demo.settings import DEMO_METHODS, DemoSettings


def run(settings: DemoSettings, log=print) -> dict:
    """Run the demo (see `trapo.demo.runner.run`)."""
    from trapo.demo.runner import run as run_demo

    return run_demo(settings, log)


__all__ = ["DEMO_METHODS", "DemoSettings", "run"]
