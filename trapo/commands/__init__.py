"""The CLI's commands, one module each (train, eval, prepare, demo, bench, tiny-model): ``add_arguments`` + ``run``."""
