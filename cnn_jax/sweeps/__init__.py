"""Sweeps: members from a config (sweep_config), member-stacked train and
eval steps (sweep_steps), the sweep run (sweep), and device meshes
(parallel).

Built on training, runs and transfer; imported by launch.py and reports."""
