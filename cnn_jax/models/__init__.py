"""Model families. `MODELS[name](num_classes=..., ...)` returns a Linen module.

Every module is called as `module.init(rngs, x, train=False)` and
`module.apply(variables, x, train=..., mutable=['batch_stats'])`.
"""

from cnn_jax.models.simple_cnn import SimpleCNN

MODELS = {
    "simple_cnn": SimpleCNN,
}
