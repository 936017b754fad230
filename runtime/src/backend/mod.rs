//! Execution backends. The CPU backend is the reference; a GPU backend joins it later.

pub mod cpu;
