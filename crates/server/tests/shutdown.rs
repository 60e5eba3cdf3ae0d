//! Graceful shutdown: stop accepting, finish in-flight calls (bounded), close storages.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use rrkv::server::ServeOptions;
use rrkv::storage::{DeadlineMs, SetItem, Storage, StorageError};
use rrkv::Server;
use rrkv_client::{Client, Item};

/// A storage whose `set` takes `delay`, and that records whether it was closed.
struct SlowStorage {
    delay: Duration,
    closed: AtomicBool,
}

#[async_trait]
impl Storage for SlowStorage {
    fn driver(&self) -> &'static str {
        "slow"
    }
    async fn has(&self, keys: &[String]) -> Result<Vec<String>, StorageError> {
        Ok(keys.to_vec())
    }
    async fn mget(&self, _: &[String]) -> Result<Vec<(String, Bytes)>, StorageError> {
        Ok(vec![])
    }
    async fn set(&self, _: Vec<SetItem>) -> Result<(), StorageError> {
        tokio::time::sleep(self.delay).await;
        Ok(())
    }
    async fn mexpire(&self, _: Vec<(String, DeadlineMs)>) -> Result<(), StorageError> {
        Ok(())
    }
    async fn ttl(&self, _: &[String]) -> Result<Vec<(String, Option<DeadlineMs>)>, StorageError> {
        Ok(vec![])
    }
    async fn delete(&self, _: &[String]) -> Result<(), StorageError> {
        Ok(())
    }
    async fn clear(&self) -> Result<(), StorageError> {
        Ok(())
    }
    async fn close(&self) -> Result<(), StorageError> {
        self.closed.store(true, Ordering::SeqCst);
        Ok(())
    }
}

async fn start(
    delay: Duration,
    shutdown_timeout: Duration,
) -> (
    Arc<SlowStorage>,
    rrkv_client::Address,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let storage = Arc::new(SlowStorage {
        delay,
        closed: AtomicBool::new(false),
    });
    let options = ServeOptions {
        shutdown_timeout,
        ..ServeOptions::default()
    };
    let server = Server::with_storages(
        vec![("slow".to_string(), storage.clone() as Arc<dyn Storage>)],
        &"tcp://127.0.0.1:0".parse().unwrap(),
        options,
    )
    .await
    .unwrap();
    let address = server.local_address();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.serve(async {
        let _ = stopped.await;
    }));
    (storage, address, stop, task)
}

fn set_item() -> Item {
    Item {
        key: "k".into(),
        value: "v".into(),
        timeout: String::new(),
    }
}

#[tokio::test]
async fn in_flight_calls_finish_and_new_connections_are_refused() {
    let (storage, address, stop, task) =
        start(Duration::from_millis(300), Duration::from_secs(10)).await;
    let mut busy = Client::connect(&address).await.unwrap();
    let mut idle = Client::connect(&address).await.unwrap();
    assert_eq!(idle.has("slow", &["x"]).await.unwrap(), ["x"]);

    let call = tokio::spawn(async move {
        let result = busy.set("slow", vec![set_item()]).await;
        (result, busy)
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    stop.send(()).unwrap();

    let (result, mut busy) = call.await.unwrap();
    result.expect("the call in flight at shutdown is answered");
    assert!(
        busy.has("slow", &["x"]).await.is_err(),
        "then its connection is closed"
    );
    assert!(
        idle.has("slow", &["x"]).await.is_err(),
        "idle connections are closed"
    );
    task.await.unwrap();
    assert!(storage.closed.load(Ordering::SeqCst), "storages are closed");
    assert!(
        Client::connect(&address).await.is_err(),
        "no longer accepting"
    );
}

#[tokio::test]
async fn a_call_that_never_ends_is_cut_off_at_the_shutdown_timeout() {
    let (storage, address, stop, task) =
        start(Duration::from_secs(3600), Duration::from_millis(300)).await;
    let mut stuck = Client::connect(&address).await.unwrap();
    let call = tokio::spawn(async move { stuck.set("slow", vec![set_item()]).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let begun = Instant::now();
    stop.send(()).unwrap();
    task.await.unwrap();
    let took = begun.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert!(
        call.await.unwrap().is_err(),
        "the stuck call's connection was closed"
    );
    assert!(storage.closed.load(Ordering::SeqCst));
}
