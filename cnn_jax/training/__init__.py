"""The training loop: the train state, optimizers and schedules, the pure
train/eval steps (steps.py), several steps per call, metric windows, what a
checkpoint keeps for resuming (resume.py), preemption, and
train_and_evaluate in named phases (train.py).

May import data, models (and conv through them), tasks, runs and transfer
(transfer.hooks only); knows no command-line flags (launch.py turns flags
into a config)."""
