"""powerplane application shell: CLI, configuration loading and runtime wiring."""

__version__ = "0.1.0"
