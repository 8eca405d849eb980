//! skyroute for other languages. [`api`]: the uniffi API, from which the Kotlin (Android) and
//! Swift (iOS) bindings are generated (`bindings/generate.sh`). [`c`]: the C ABI for firmware,
//! with its header in `include/skyroute.h` (cbindgen). Both sit on [`core`]: a node on its own
//! tokio runtime, driven by blocking calls, where no panic crosses the boundary.

//!
//! Features: `uniffi` (the Kotlin/Swift API), `c` (the C ABI), `quic` (QUIC links in the
//! node library); all default. Firmware builds `--no-default-features --features c`.

#[cfg(feature = "uniffi")]
pub mod api;
#[cfg(feature = "c")]
pub mod c;
pub mod core;
#[cfg(feature = "uniffi")]
mod logging;

#[cfg(all(feature = "uniffi", target_os = "android"))]
mod android;

#[cfg(feature = "uniffi")]
uniffi::setup_scaffolding!();
