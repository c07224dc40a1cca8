"""Sweeps: members from a config (sweep_config), member-stacked train and
eval steps (sweep_steps), the sweep run (sweep), on the ('members', 'data')
meshes of cnn_jax/distributed/mesh.py.

Built on training, runs and transfer; imported by launch.py and reports."""
