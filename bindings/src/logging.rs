//! Log lines to the platform: a tracing layer that hands every event at info and above to the
//! registered listeners (and, on Android, to logcat through `android_logger`).

use std::sync::{Arc, Mutex, Once};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::prelude::*;

use crate::api::{LogLevel, NodeListener};

static SINKS: Mutex<Vec<(u64, Arc<dyn NodeListener>)>> = Mutex::new(Vec::new());
static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
static INIT: Once = Once::new();

/// Adds a listener for log lines; returns its id for [`unregister`].
pub fn register(l: Arc<dyn NodeListener>) -> u64 {
    INIT.call_once(|| {
        let filter = skyroute::daemon::log_filter(None);
        let _ = tracing_subscriber::registry().with(filter).with(Forward).try_init();
    });
    let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if let Ok(mut s) = SINKS.lock() {
        s.push((id, l));
    }
    id
}

pub fn unregister(id: u64) {
    if let Ok(mut s) = SINKS.lock() {
        s.retain(|(i, _)| *i != id);
    }
}

struct Forward;

struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}{}", self.0);
        } else {
            self.0 += &format!(" {}={value:?}", field.name());
        }
    }
}

impl<S: Subscriber> Layer<S> for Forward {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let level = match *event.metadata().level() {
            Level::ERROR => LogLevel::Error,
            Level::WARN => LogLevel::Warn,
            Level::INFO => LogLevel::Info,
            Level::DEBUG => LogLevel::Debug,
            Level::TRACE => LogLevel::Trace,
        };
        let mut m = Message(String::new());
        event.record(&mut m);
        #[cfg(target_os = "android")]
        crate::android::log(level, &m.0);
        // Call the listeners outside the lock: one may log in turn.
        let sinks: Vec<Arc<dyn NodeListener>> =
            SINKS.lock().map(|s| s.iter().map(|(_, l)| l.clone()).collect()).unwrap_or_default();
        for s in sinks {
            s.on_log(level, m.0.clone());
        }
    }
}
