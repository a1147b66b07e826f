pub mod bounded;
#[cfg(feature = "model")]
pub mod progress;
pub mod rng;

/// The message of a caught panic (`catch_unwind`'s payload), for errors that report it.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into())
}
