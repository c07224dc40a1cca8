"""The run folder on disk: workdir states and config checks (workdirs),
metrics.jsonl / TensorBoard / progress bar (writers), and checkpoints
(checkpoint: the only module that imports orbax).

Imports nothing else of cnn_jax, except the train state type."""
