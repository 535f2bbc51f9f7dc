//! Diffusion schedulers (being written).
