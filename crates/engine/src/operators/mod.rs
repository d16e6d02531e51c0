//! Built-in operators, one per file.

pub mod basic;
pub mod keyed_process;
pub mod local_window;
pub mod window;
