"""The ``zhiying`` command line: one module per command group, mounted in ``main``."""
