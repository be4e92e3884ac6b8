//! Live-server support for the engine tests (`cargo test`): a server from the project's
//! harness (`node harness/cli.js serve`), or `MONGODB_URI` when set.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::engine::reader::ReaderItem;
use crate::engine::stream::spec::WatchSpec;
use crate::engine::stream::ChangeStreamEngine;
use mongodb::bson::{doc, Document, RawDocument};
use mongodb::Client;

pub struct TestServer {
    pub uri: String,
    /// The harness process; the server dies with it (its stdin closes when we drop it).
    child: Option<Child>,
}

impl TestServer {
    pub fn start() -> TestServer {
        if let Ok(uri) = std::env::var("MONGODB_URI") {
            return TestServer { uri, child: None };
        }
        let root = env!("CARGO_MANIFEST_DIR");
        let mut child = Command::new("node")
            .arg(format!("{root}/harness/cli.js"))
            .arg("serve")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node must be on PATH to start the test server");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("harness prints one JSON line");
        let info: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("harness said {line:?}: {e}"));
        let uri = info["uri"]
            .as_str()
            .expect("uri in harness output")
            .to_string();
        TestServer {
            uri,
            child: Some(child),
        }
    }

    pub async fn client(&self) -> Client {
        Client::with_uri_str(&self.uri).await.expect("client")
    }

    pub async fn fail_command(&self, data: Document, mode: mongodb::bson::Bson) {
        let client = self.client().await;
        client
            .database("admin")
            .run_command(doc! {"configureFailPoint": "failCommand", "mode": mode, "data": data})
            .await
            .expect("configureFailPoint (start the server with --enable-test-commands)");
    }

    pub async fn fail_point_off(&self) {
        let client = self.client().await;
        client
            .database("admin")
            .run_command(doc! {"configureFailPoint": "failCommand", "mode": "off"})
            .await
            .expect("configureFailPoint off");
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            drop(child.stdin.take());
            // The harness stops the server when its stdin closes; don't wait forever.
            for _ in 0..100 {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
        }
    }
}

/// A unique namespace per test, so tests can share a MONGODB_URI server.
pub fn unique_name(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{prefix}_{nanos}")
}

pub fn engine(uri: &str, db: &str, coll: &str, extra: Document) -> ChangeStreamEngine {
    let mut spec = doc! {"uri": uri, "db": db, "collection": coll, "maxAwaitTimeMS": 100};
    spec.extend(extra);
    ChangeStreamEngine::new(WatchSpec::from_document(&spec).expect("valid spec"), None)
        .expect("engine")
}

/// Every item until `want` events arrived (or the deadline passed); returns the items
/// and the events' `seq` fields in delivery order.
pub async fn collect_events(
    engine: &ChangeStreamEngine,
    want: usize,
    deadline: Duration,
) -> (Vec<ReaderItem>, Vec<i32>) {
    let mut items = Vec::new();
    let mut seqs = Vec::new();
    let until = tokio::time::Instant::now() + deadline;
    while seqs.len() < want {
        let item = tokio::time::timeout_at(until, engine.next())
            .await
            .unwrap_or_else(|_| {
                panic!("timed out with {} of {want} events: {items:?}", seqs.len())
            });
        if let ReaderItem::Batch(b) = &item {
            seqs.extend(event_seqs(&b.docs));
        }
        let end = matches!(item, ReaderItem::Failed(_) | ReaderItem::Ended(_));
        items.push(item);
        if end {
            break;
        }
    }
    (items, seqs)
}

/// Items until one matches `stop` (included), or panics at the deadline.
pub async fn items_until(
    engine: &ChangeStreamEngine,
    deadline: Duration,
    stop: impl Fn(&ReaderItem) -> bool,
) -> Vec<ReaderItem> {
    let until = tokio::time::Instant::now() + deadline;
    let mut items = Vec::new();
    loop {
        let item = tokio::time::timeout_at(until, engine.next())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting; got {items:?}"));
        let done = stop(&item);
        items.push(item);
        if done {
            return items;
        }
    }
}

/// The `fullDocument.seq` of each event in a concatenated batch buffer.
pub fn event_seqs(mut buf: &[u8]) -> Vec<i32> {
    let mut out = Vec::new();
    while buf.len() >= 4 {
        let len = i32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        let doc = RawDocument::from_bytes(&buf[..len]).expect("event is a BSON document");
        if let Ok(seq) = doc
            .get_document("fullDocument")
            .and_then(|d| d.get_i32("seq"))
        {
            out.push(seq);
        }
        buf = &buf[len..];
    }
    out
}

pub async fn insert_seq(client: &Client, db: &str, coll: &str, range: std::ops::Range<i32>) {
    let docs: Vec<Document> = range.map(|seq| doc! {"seq": seq}).collect();
    client
        .database(db)
        .collection::<Document>(coll)
        .insert_many(docs)
        .await
        .expect("insert");
}

/// A server, a client, and an existing collection of its own.
pub struct Fixture {
    pub server: TestServer,
    pub client: Client,
    pub db: String,
    pub coll: &'static str,
}

impl Fixture {
    pub async fn start() -> Fixture {
        let server = TestServer::start();
        let client = server.client().await;
        let fx = Fixture {
            server,
            client,
            db: unique_name("db"),
            coll: "orders",
        };
        fx.insert(0..1).await; // creates the collection
        fx
    }

    pub async fn insert(&self, range: std::ops::Range<i32>) {
        insert_seq(&self.client, &self.db, self.coll, range).await;
    }

    /// An engine on the collection, opened (its first `next()` starts it) and positioned,
    /// so later writes are seen. An idle stream delivers its first advanced token, or times
    /// out quietly; either way the cursor is open afterwards.
    pub async fn open_engine(&self, extra: Document) -> ChangeStreamEngine {
        let engine = engine(&self.server.uri, &self.db, self.coll, extra);
        let _ = tokio::time::timeout(Duration::from_millis(300), engine.next()).await;
        engine
    }
}
