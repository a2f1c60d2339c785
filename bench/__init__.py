"""The benchmark and the soak test: run from the project folder as modules, e.g. `python -m bench.run`."""
