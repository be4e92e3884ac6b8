//! One `mongodb::Client` per distinct connection string, shared by every stream in the
//! process (one pool, one set of monitors), and shut down when its last user lets go, so
//! no socket outlives the streams.

use std::collections::HashMap;
use std::ops::Deref;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mongodb::event::sdam::SdamEvent;
use mongodb::event::EventHandler;
use mongodb::options::{ClientOptions, ServerAddress, ServerMonitoringMode};
use mongodb::Client;
use once_cell::sync::Lazy;
use tokio::task::JoinHandle;

use super::errors::EngineError;

/// Every stream holds one connection during its awaitData getMore, so the driver's
/// default of 10 would starve an 11th stream. Applied only when the URI sets none.
pub const DEFAULT_MAX_POOL_SIZE: u32 = 1000;

struct PooledClient {
    client: Client,
    wire: Arc<WireVersions>,
    users: usize,
}

/// The `maxWireVersion` each server of a client reported in its last `hello` (kept by an
/// SDAM listener): the change-streams spec's resume rule depends on it.
#[derive(Default)]
pub struct WireVersions(Mutex<HashMap<ServerAddress, i32>>);

impl WireVersions {
    fn record(&self, event: SdamEvent) {
        let mut known = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match event {
            SdamEvent::ServerDescriptionChanged(changed) => {
                match changed.new_description.max_wire_version() {
                    Some(wire) => known.insert(changed.address.clone(), wire),
                    None => known.remove(&changed.address),
                };
            }
            SdamEvent::ServerClosed(closed) => {
                known.remove(&closed.address);
            }
            _ => {}
        }
    }

    /// The lowest wire version among the servers known now (the conservative one for a
    /// rule that differs by version); `None` before any `hello` answered.
    pub fn max_wire_version(&self) -> Option<i32> {
        let known = self.0.lock().unwrap_or_else(|p| p.into_inner());
        known.values().copied().min()
    }
}

static CLIENTS: Lazy<Mutex<HashMap<String, PooledClient>>> =
    Lazy::new(|| Mutex::new(HashMap::new()));

/// Shutdowns of clients whose last lease was dropped, until someone awaits them.
static SHUTDOWNS: Lazy<Mutex<Vec<JoinHandle<()>>>> = Lazy::new(|| Mutex::new(Vec::new()));

/// How long an operation waits for a usable server before it fails (and the reader backs
/// off and retries), unless the URI says `serverSelectionTimeoutMS`.
pub const DEFAULT_SERVER_SELECTION_TIMEOUT: Duration = Duration::from_secs(2);

/// How long `settle()` waits for one client's shutdown.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

/// A poisoned map only means another thread panicked while inserting; the map itself is
/// still consistent, so keep using it.
fn lock() -> std::sync::MutexGuard<'static, HashMap<String, PooledClient>> {
    CLIENTS.lock().unwrap_or_else(|p| p.into_inner())
}

/// A use of the shared client for one connection string; the client is shut down when
/// the last lease is dropped.
pub struct ClientLease {
    uri: String,
    client: Client,
    wire: Arc<WireVersions>,
}

impl ClientLease {
    /// The servers' `maxWireVersion` as last reported (see [`WireVersions`]).
    pub fn max_wire_version(&self) -> Option<i32> {
        self.wire.max_wire_version()
    }
}

impl Deref for ClientLease {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

impl Drop for ClientLease {
    fn drop(&mut self) {
        let mut clients = lock();
        let Some(pooled) = clients.get_mut(&self.uri) else {
            return;
        };
        pooled.users -= 1;
        if pooled.users > 0 {
            return;
        }
        if let Some(pooled) = clients.remove(&self.uri) {
            // Close the pool and monitors now rather than when the last handle happens to
            // drop; outside a runtime, dropping the handles does it eventually.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let client = pooled.client;
                let shutdown =
                    runtime.spawn(async move { client.shutdown().immediate(true).await });
                SHUTDOWNS
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(shutdown);
            }
        }
    }
}

/// Waits for the shutdowns of clients nobody uses any more. A reader's close awaits this,
/// so that once it resolves no driver task (a cursor's kill, a pool's connection) is still
/// in flight: a process that exits right after close() must not cut one off.
pub async fn settle() {
    let pending = std::mem::take(&mut *SHUTDOWNS.lock().unwrap_or_else(|p| p.into_inner()));
    for shutdown in pending {
        let _ = tokio::time::timeout(SHUTDOWN_WAIT, shutdown).await;
    }
}

/// Leases the shared client for `uri`, creating it on first use.
pub async fn client_for(uri: &str) -> Result<ClientLease, EngineError> {
    if let Some(lease) = lease_existing(uri) {
        return Ok(lease);
    }
    let mut options = ClientOptions::parse(uri)
        .await
        .map_err(|e| EngineError::from_driver(&e))?;
    if options.max_pool_size.is_none() {
        options.max_pool_size = Some(DEFAULT_MAX_POOL_SIZE);
    }
    // After a network error the streaming monitor waits its minimum heartbeat interval
    // (500 ms) before the server is selectable again; polling re-checks at once, so a
    // dropped connection costs ~40 ms instead of ~500 ms. Applied only when the URI sets
    // no `serverMonitoringMode`.
    if options.server_monitoring_mode.is_none() {
        options.server_monitoring_mode = Some(ServerMonitoringMode::Poll);
    }
    // The driver's default (30 s) would make every re-open attempt during an outage wait
    // 30 s before failing: the outage would be announced late and retried in 30 s steps.
    // A short selection lets the backoff set the rhythm. Applied only when the URI sets none.
    if options.server_selection_timeout.is_none() {
        options.server_selection_timeout = Some(DEFAULT_SERVER_SELECTION_TIMEOUT);
    }
    if options.app_name.is_none() {
        options.app_name = Some("resilient-change-stream".into());
    }
    let wire = Arc::new(WireVersions::default());
    let recorder = wire.clone();
    options.sdam_event_handler = Some(EventHandler::callback(move |event| recorder.record(event)));
    let client = Client::with_options(options).map_err(|e| EngineError::from_driver(&e))?;
    // Two streams may race to create the client: keep the first, drop ours.
    let mut clients = lock();
    let pooled = clients.entry(uri.to_string()).or_insert(PooledClient {
        client,
        wire,
        users: 0,
    });
    pooled.users += 1;
    Ok(ClientLease {
        uri: uri.to_string(),
        client: pooled.client.clone(),
        wire: pooled.wire.clone(),
    })
}

fn lease_existing(uri: &str) -> Option<ClientLease> {
    let mut clients = lock();
    let pooled = clients.get_mut(uri)?;
    pooled.users += 1;
    Some(ClientLease {
        uri: uri.to_string(),
        client: pooled.client.clone(),
        wire: pooled.wire.clone(),
    })
}

/// One collection on the shared client of its deployment, connected on first use and held
/// for the owner's life (a MongoDB token store, a group's lease collection).
pub struct SharedCollection {
    uri: String,
    db: String,
    collection: String,
    client: tokio::sync::OnceCell<ClientLease>,
}

impl SharedCollection {
    pub fn new(uri: String, db: String, collection: String) -> Self {
        SharedCollection {
            uri,
            db,
            collection,
            client: tokio::sync::OnceCell::new(),
        }
    }

    pub async fn get(&self) -> Result<mongodb::Collection<mongodb::bson::Document>, EngineError> {
        let client = self
            .client
            .get_or_try_init(|| client_for(&self.uri))
            .await?;
        Ok(client.database(&self.db).collection(&self.collection))
    }

    /// `db.collection`, for messages (never the URI).
    pub fn namespace(&self) -> String {
        format!("{}.{}", self.db, self.collection)
    }
}
