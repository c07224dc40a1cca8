"""How a convolution runs: the implementation choice (conv_impls), im2col
matrix multiplies (conv_im2col), oneDNN custom calls on the CPU (onednn,
built by onednn_build from native/, checked per machine by onednn_verify).

Imports jax and numpy only: nothing else of cnn_jax."""
