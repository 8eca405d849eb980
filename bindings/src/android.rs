//! Android only: logcat through `android_logger`, set up when the JVM loads the library.

use jni::sys::{jint, JNI_VERSION_1_6};
use jni::JavaVM;

use crate::api::LogLevel;

/// Called by the JVM on `System.loadLibrary` (JNA loads it the same way): logcat output for
/// the node's log lines, tag "skyroute".
#[no_mangle]
pub extern "system" fn JNI_OnLoad(_vm: JavaVM, _reserved: *mut std::ffi::c_void) -> jint {
    android_logger::init_once(
        android_logger::Config::default().with_max_level(log::LevelFilter::Info).with_tag("skyroute"),
    );
    JNI_VERSION_1_6
}

pub fn log(level: LogLevel, message: &str) {
    let level = match level {
        LogLevel::Error => log::Level::Error,
        LogLevel::Warn => log::Level::Warn,
        LogLevel::Info => log::Level::Info,
        LogLevel::Debug => log::Level::Debug,
        LogLevel::Trace => log::Level::Trace,
    };
    log::log!(level, "{message}");
}
