"""Building blocks shared by the model families.

Every model builds its convolutions from `Conv` here, so the convolution
implementation (XLA's generic kernel or an im2col matmul) is chosen in one
place while the parameter layout stays that of `flax.linen.Conv` (kernel
[*window, C_in, C_out], bias [C_out]), which keeps checkpoints and imported
pretrained weights interchangeable.
"""

import flax.linen as nn

# For now the XLA convolution; the backend-aware implementation plugs in here.
Conv = nn.Conv
