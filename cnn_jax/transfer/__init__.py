"""Transfer learning: plans of which variables are restored, frozen and
trained (patterns over variable paths), optax masks (the only place freezing
lives), the frozen forward pass (BatchNorm included), partial restore,
pretrained weight import, and the dry run.

Bottom to top: paths (variable paths, patterns) <- plan (config -> Plan),
pretrained (torch/timm weights) <- optimizer (optax groups), frozen_forward,
restore (init_from) <- hooks (what the training loop calls) <- dry_run.
Imports training.optim and runs.checkpoint (dry_run also training.steps);
the training loop calls in through hooks.TransferHooks, never the other way
round."""
