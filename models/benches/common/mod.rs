//! What the models benches and the GPU op tests share (the tests include this file by
//! path: tracing-subscriber is a dev-dependency, so the library cannot hold it).

/// Warnings (a cuDNN refusal, a fallback to our path) straight to stderr at INFO, without
/// colour codes and past libtest's capture: the device log must show what ran. A second
/// call (another test in the same binary) keeps the first subscriber.
pub fn log_to_stderr() {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .try_init();
}
