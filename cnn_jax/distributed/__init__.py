"""Many devices and hosts: the device meshes of runs and sweeps (mesh) and
jax.distributed with per-process data (multihost). Imports nothing of
cnn_jax; training, sweeps and launch.py build on it."""
