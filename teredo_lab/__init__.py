"""A Teredo topology in network namespaces, for tests, benchmarks and the demo.

- `lab.Lab`: the fixture (build, run daemons and commands in namespaces, remove all).
- `scenario.run_scenario` / `scenario.scenario_lab`: which implementation plays which role.
- `checks`: the six checks of a run, each usable alone.
- `cli`: `teredo-lab up | down | run | list` (root only).
"""
