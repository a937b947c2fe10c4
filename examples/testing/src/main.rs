//! Serves the `testing` example's app (see `src/lib.rs` for its routes and
//! `tests/app.rs` for how it is tested).
//!
//! ```text
//! cargo run -p example-testing         # listens on 127.0.0.1:3000
//! cargo test -p example-testing        # runs tests/app.rs, no port needed
//! ```

#[tokio::main]
async fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:3000".into());
    example_testing::app().serve(addr).await
}
