//! skyroute for other languages. [`api`]: the uniffi API, from which the Kotlin (Android) and
//! Swift (iOS) bindings are generated (`bindings/generate.sh`). [`c`]: the C ABI for firmware,
//! with its header in `include/skyroute.h` (cbindgen). Both sit on [`core`]: a node on its own
//! tokio runtime, driven by blocking calls, where no panic crosses the boundary.

pub mod api;
pub mod c;
pub mod core;
mod logging;

#[cfg(target_os = "android")]
mod android;

uniffi::setup_scaffolding!();
