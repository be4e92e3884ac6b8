//! One `mongodb::Client` per distinct connection string, shared by every stream in the
//! process, so many streams share one pool and one set of monitors.

use std::collections::HashMap;
use std::sync::Mutex;

use mongodb::options::ClientOptions;
use mongodb::Client;
use once_cell::sync::Lazy;

use super::errors::EngineError;

/// Every stream holds one connection during its awaitData getMore, so the driver's
/// default of 10 would starve an 11th stream. Applied only when the URI sets none.
pub const DEFAULT_MAX_POOL_SIZE: u32 = 1000;

static CLIENTS: Lazy<Mutex<HashMap<String, Client>>> = Lazy::new(|| Mutex::new(HashMap::new()));

/// The shared client for `uri`, created on first use.
pub async fn client_for(uri: &str) -> Result<Client, EngineError> {
    if let Some(client) = lock().get(uri) {
        return Ok(client.clone());
    }
    let mut options = ClientOptions::parse(uri)
        .await
        .map_err(|e| EngineError::from_driver(&e))?;
    if options.max_pool_size.is_none() {
        options.max_pool_size = Some(DEFAULT_MAX_POOL_SIZE);
    }
    if options.app_name.is_none() {
        options.app_name = Some("resilient-change-stream".into());
    }
    let client = Client::with_options(options).map_err(|e| EngineError::from_driver(&e))?;
    // Two streams may race to create the client: keep the first, drop ours.
    Ok(lock().entry(uri.to_string()).or_insert(client).clone())
}

/// A poisoned map only means another thread panicked while inserting; the map itself is
/// still consistent, so keep using it.
fn lock() -> std::sync::MutexGuard<'static, HashMap<String, Client>> {
    CLIENTS.lock().unwrap_or_else(|p| p.into_inner())
}
