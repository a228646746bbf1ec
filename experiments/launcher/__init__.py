"""XManager launcher pieces: config loading and sweeps, executors, commands/manifests, experiments.

`experiments/launch.py` is the command line; this package holds the parts it is built from so
each can be tested alone. xmanager is the optional `launch` extra (setup.cfg).
"""
