//! The status board of an instance's controller: each component publishes its latest
//! status under its name, and the API serves them all together at `/v1/status`.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use serde_json::Value;
use tokio::sync::RwLock;

/// Where a component sends the status it builds for one reader.
pub type StatusRequest = tokio::sync::oneshot::Sender<Value>;

/// How long a reader waits for a component that builds its status on request, before it
/// gets the one built last.
const ON_REQUEST_WAIT: Duration = Duration::from_secs(1);

/// Component name -> its latest status, served at `/v1/status`.
#[derive(Clone, Default)]
pub struct StatusBoard {
    inner: Arc<RwLock<BTreeMap<String, Value>>>,
    header: Arc<RwLock<Value>>,
    /// Components whose status is built only when somebody reads it: theirs grows with
    /// the platform (every backend of 10,000 services) and is mostly unread.
    on_request: Arc<RwLock<BTreeMap<String, tokio::sync::mpsc::Sender<StatusRequest>>>>,
}

impl StatusBoard {
    /// What the board shows above the components (the controller's instance, pid, version).
    pub async fn set_header(&self, header: Value) {
        *self.header.write().await = header;
    }

    pub async fn publish(&self, component: &str, status: Value) {
        self.inner
            .write()
            .await
            .insert(component.to_string(), status);
    }

    /// `component` builds its status when it is read: each reader's request arrives on the
    /// returned channel (a restarted component calls this again).
    pub async fn publish_on_request(
        &self,
        component: &str,
    ) -> tokio::sync::mpsc::Receiver<StatusRequest> {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        self.on_request
            .write()
            .await
            .insert(component.to_string(), tx);
        rx
    }

    /// Asks every on-request component for its status; one that does not answer in time
    /// (busy, restarting) is shown with the status it built last.
    async fn refresh_on_request(&self) {
        let asked: Vec<_> = self
            .on_request
            .read()
            .await
            .iter()
            .map(|(name, tx)| (name.clone(), tx.clone()))
            .collect();
        for (name, tx) in asked {
            let (reply, answer) = tokio::sync::oneshot::channel();
            if tx.try_send(reply).is_err() {
                continue;
            }
            match tokio::time::timeout(ON_REQUEST_WAIT, answer).await {
                Ok(Ok(status)) => self.publish(&name, status).await,
                Ok(Err(_)) => {}
                Err(_) => tracing::debug!(component = name, "status not built in time"),
            }
        }
    }

    pub async fn snapshot(&self) -> Value {
        self.refresh_on_request().await;
        let mut out = match self.header.read().await.clone() {
            Value::Object(header) => header,
            _ => serde_json::Map::new(),
        };
        let components: serde_json::Map<String, Value> = self
            .inner
            .read()
            .await
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        out.insert("components".into(), Value::Object(components));
        Value::Object(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_on_request_status_is_built_for_each_reader() {
        let board = StatusBoard::default();
        let mut requests = board.publish_on_request("lb").await;
        let component = tokio::spawn(async move {
            let mut built = 0;
            while let Some(reader) = requests.recv().await {
                built += 1;
                let _ = reader.send(serde_json::json!({ "built": built }));
            }
        });
        assert_eq!(board.snapshot().await["components"]["lb"]["built"], 1);
        assert_eq!(board.snapshot().await["components"]["lb"]["built"], 2);
        component.abort();
    }

    #[tokio::test]
    async fn a_silent_component_shows_the_status_it_built_last() {
        let board = StatusBoard::default();
        let mut requests = board.publish_on_request("lb").await;
        let (snapshot, ()) = tokio::join!(board.snapshot(), async {
            let r = requests.recv().await.expect("a request");
            r.send(serde_json::json!({ "built": 1 }))
                .expect("reader waits");
        });
        assert_eq!(snapshot["components"]["lb"]["built"], 1);
        // Now it hears but never answers: the reader waits ON_REQUEST_WAIT, then gets the last.
        let hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Some(r) = requests.recv().await {
                held.push(r);
            }
        });
        let snapshot = board.snapshot().await;
        assert_eq!(snapshot["components"]["lb"]["built"], 1);
        hold.abort();
        // Gone (its receiver dropped): no wait at all, the last status again.
        let _ = hold.await;
        let asked = std::time::Instant::now();
        assert_eq!(board.snapshot().await["components"]["lb"]["built"], 1);
        assert!(
            asked.elapsed() < ON_REQUEST_WAIT,
            "waited for a component that is gone"
        );
    }
}
