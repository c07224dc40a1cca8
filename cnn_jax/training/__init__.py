"""The training loop: the train state, optimizers and schedules, the pure
train/eval steps, several steps per call, metric windows, preemption, and
train_and_evaluate.

May import data, models (and conv through them), tasks, runs and transfer;
knows no command-line flags (launch.py turns flags into a config)."""
