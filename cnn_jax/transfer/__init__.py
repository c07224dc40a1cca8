"""Transfer learning: plans of which variables are restored, frozen and
trained (masks by path, optax.masked: the only place freezing lives), frozen
BatchNorm, partial restore, pretrained weight import, and the dry run.

Imports training.optim only; the training loop calls in, never the other
way round."""
