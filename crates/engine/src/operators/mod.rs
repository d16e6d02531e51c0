//! Built-in operators, one per file.

pub mod basic;
pub mod keyed_process;
pub mod local_window;
pub(crate) mod timer_queue;
pub mod window;
