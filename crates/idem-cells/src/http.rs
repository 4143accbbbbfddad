//! Shared HTTP plumbing for cells.

use std::time::Duration;

/// A client with the cell's call timeout. No redirects: a partner redirect on a money
/// movement is a surprise, not something to follow blindly.
pub fn client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(64)
        .build()
        .expect("static client configuration is valid")
}
