//! Routes the engine's `tracing` events to each stream's JS logger. Silent by default: an
//! event reaches JS only when its reader (the `stream` field of the `reader` span
//! it happens in) has a logger registered.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi::Status;
use napi_derive::napi;
use once_cell::sync::{Lazy, OnceCell};
use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

use crate::engine::redact::redact;

/// One log line, as the JS logger receives it.
#[napi(object)]
pub struct LogRecord {
    /// "debug" | "info" | "warn" | "error".
    pub level: String,
    pub message: String,
    pub fields: Value,
}

/// A weak (unref'd) callback: a logger must never keep the process alive.
pub type LoggerFn = ThreadsafeFunction<LogRecord, (), LogRecord, Status, false, true>;

static LOGGERS: Lazy<Mutex<HashMap<u64, Arc<LoggerFn>>>> = Lazy::new(Default::default);
static ACTIVE: AtomicUsize = AtomicUsize::new(0);
static INSTALLED: OnceCell<()> = OnceCell::new();

fn loggers() -> std::sync::MutexGuard<'static, HashMap<u64, Arc<LoggerFn>>> {
    LOGGERS.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn register(stream: u64, logger: LoggerFn) {
    INSTALLED.get_or_init(|| {
        let subscriber = tracing_subscriber::registry().with(JsLogLayer);
        // Fails only if a global subscriber exists already; then logs go there instead.
        let _ = tracing::subscriber::set_global_default(subscriber);
    });
    if loggers().insert(stream, Arc::new(logger)).is_none() {
        ACTIVE.fetch_add(1, Ordering::Relaxed);
    }
}

pub fn unregister(stream: u64) {
    if loggers().remove(&stream).is_some() {
        ACTIVE.fetch_sub(1, Ordering::Relaxed);
    }
}

struct StreamId(u64);

struct JsLogLayer;

impl<S> Layer<S> for JsLogLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut visitor = StreamFieldVisitor(None);
        attrs.record(&mut visitor);
        if let (Some(stream), Some(span)) = (visitor.0, ctx.span(id)) {
            span.extensions_mut().insert(StreamId(stream));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        if ACTIVE.load(Ordering::Relaxed) == 0 {
            return;
        }
        let Some(stream) = ctx.event_scope(event).and_then(|scope| {
            scope
                .from_root()
                .find_map(|span| span.extensions().get::<StreamId>().map(|s| s.0))
        }) else {
            return;
        };
        let Some(logger) = loggers().get(&stream).cloned() else {
            return;
        };
        let mut fields = JsonVisitor(Map::new());
        event.record(&mut fields);
        let message = match fields.0.remove("message") {
            Some(Value::String(s)) => s,
            _ => String::new(),
        };
        let level = match *event.metadata().level() {
            Level::ERROR => "error",
            Level::WARN => "warn",
            Level::INFO => "info",
            Level::DEBUG | Level::TRACE => "debug",
        };
        logger.call(
            LogRecord {
                level: level.to_string(),
                message: redact(&message),
                fields: Value::Object(fields.0),
            },
            ThreadsafeFunctionCallMode::NonBlocking,
        );
    }
}

struct StreamFieldVisitor(Option<u64>);

impl Visit for StreamFieldVisitor {
    fn record_u64(&mut self, field: &Field, value: u64) {
        if field.name() == "stream" {
            self.0 = Some(value);
        }
    }

    fn record_debug(&mut self, _: &Field, _: &dyn fmt::Debug) {}
}

/// Event fields as JSON; every string is redacted, since a field may quote an error.
struct JsonVisitor(Map<String, Value>);

impl Visit for JsonVisitor {
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), Value::from(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), Value::from(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), Value::from(value));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0
            .insert(field.name().into(), Value::from(redact(value)));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let text = if field.name() == "message" {
            format!("{value:?}")
        } else {
            redact(&format!("{value:?}"))
        };
        self.0.insert(field.name().into(), Value::from(text));
    }
}
