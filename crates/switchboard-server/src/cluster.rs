//! The demo server as a cluster node: `serve --redis URL --node-id ID`.
//!
//! With `--redis`, the relay hub (the rooms of `WS /ws/rooms/{room}`, their
//! SSE twin and `/stats`) gets a [`RedisBackplane`], so two servers on one
//! Redis behave as one: a member on one node receives, exactly once and in
//! order, what a member on the other sends. `GET /health/cluster` answers
//! 200 with the backplane's health while it is healthy and 503 with the
//! reason otherwise (`GET /ready` does the same for a load balancer);
//! `GET /health` stays the plain liveness "ok". `GET /cluster/stats` and
//! `GET /cluster/members/{room}` show the whole cluster. Without `--redis`
//! (or without the `redis` feature) this module changes nothing: same hub,
//! no routes added. The chat page keeps its own, node-local hub.

#[cfg(feature = "redis")]
pub(crate) use enabled::*;

#[cfg(not(feature = "redis"))]
pub(crate) use disabled::*;

#[cfg(feature = "redis")]
mod enabled {
    use std::{sync::Arc, sync::OnceLock, time::Duration};

    use clap::Args;
    use switchboard::{
        hub::{Hub, HubConfig},
        App, IntoResponse, Json, Path, Response, State, StatusCode,
    };
    use switchboard_redis::{RedisBackplane, RedisConfig};

    /// Cluster flags (feature `redis`).
    #[derive(Args, Debug, Clone, Default)]
    pub(crate) struct ClusterArgs {
        /// Run as a cluster node through this Redis (`redis://host:port`).
        #[arg(long, value_name = "URL")]
        redis: Option<String>,
        /// This node's id in the cluster (letters, digits, '.', '_', '-';
        /// unique per node). Default: `node-<pid>`.
        #[arg(long, value_name = "ID", requires = "redis")]
        node_id: Option<String>,
        /// Prefix of the cluster's Redis keys and channels.
        #[arg(long, value_name = "PREFIX", default_value = "sb", requires = "redis")]
        redis_prefix: String,
    }

    /// The running node's backplane, for a clean leave at shutdown.
    static BACKPLANE: OnceLock<RedisBackplane> = OnceLock::new();

    /// The relay hub: clustered with `--redis`, local otherwise. Exits the
    /// process on invalid cluster settings (a typo must not silently run a
    /// single node).
    pub(crate) fn hub(args: &ClusterArgs, config: HubConfig) -> Hub {
        let Some(url) = &args.redis else {
            return Hub::with_config(config);
        };
        let node = args
            .node_id
            .clone()
            .unwrap_or_else(|| format!("node-{}", std::process::id()));
        let cfg = RedisConfig::new(url, node.as_str()).prefix(args.redis_prefix.as_str());
        let shown = cfg.url_redacted();
        match RedisBackplane::new(cfg) {
            Ok(bp) => {
                tracing::info!(node = %node, redis = %shown, "cluster node");
                let _ = BACKPLANE.set(bp.clone());
                Hub::with_backplane(config, Arc::new(bp))
            }
            Err(e) => {
                eprintln!("switchboard: --redis: {e}");
                std::process::exit(2);
            }
        }
    }

    /// Adds the cluster routes when clustered (`hub` is the app's
    /// `State<Hub>`).
    pub(crate) fn routes(app: App, hub: &Hub) -> App {
        if hub.backplane().is_none() {
            return app;
        }
        app.get("/health/cluster", |State(hub): State<Hub>| async move {
            cluster_health(&hub)
        })
        .get("/cluster/stats", |State(hub): State<Hub>| async move {
            match hub.cluster_stats().await {
                Ok(s) => Json(s).into_response(),
                Err(e) => unavailable(&e.to_string()),
            }
        })
        .get(
            "/cluster/members/{room}",
            |Path(room): Path<String>, State(hub): State<Hub>| async move {
                match hub.cluster_members(&room).await {
                    Ok(m) => Json(m).into_response(),
                    Err(e) => unavailable(&e.to_string()),
                }
            },
        )
    }

    fn cluster_health(hub: &Hub) -> Response {
        let Some(bp) = hub.backplane() else {
            return "ok".into_response();
        };
        let health = bp.health();
        let status = if health.healthy {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        let body = serde_json::json!({ "node": bp.node_id(), "backplane": health });
        (status, Json(body)).into_response()
    }

    fn unavailable(why: &str) -> Response {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "error": why })),
        )
            .into_response()
    }

    /// Leaves the cluster cleanly (removes this node's presence), bounded
    /// by the backplane's command timeout.
    pub(crate) async fn leave() {
        if let Some(bp) = BACKPLANE.get() {
            let _ = tokio::time::timeout(Duration::from_secs(2), bp.shutdown()).await;
        }
    }
}

#[cfg(not(feature = "redis"))]
mod disabled {
    use switchboard::{
        hub::{Hub, HubConfig},
        App,
    };

    /// No cluster flags without the `redis` feature.
    #[derive(clap::Args, Debug, Clone, Default)]
    pub(crate) struct ClusterArgs {}

    pub(crate) fn hub(_: &ClusterArgs, config: HubConfig) -> Hub {
        Hub::with_config(config)
    }

    pub(crate) fn routes(app: App, _: &Hub) -> App {
        app
    }

    pub(crate) async fn leave() {}
}
