//! Custom WGSL kernels (`shaders/`), launched on the cubecl wgpu / WebGPU backend. Each one has
//! a plain-burn reference that computes the same thing and a test comparing the two
//! (`tests/flash_attention.rs`); callers fall back to the reference wherever the kernel does
//! not apply (CPU, autodiff, other dtypes).

pub mod flash_attention;
