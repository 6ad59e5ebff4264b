//! chatgate: a real-time chat gateway.
//!
//! Clients hold WebSocket connections to any node. The router delivers each message to this
//! node's recipients and hands the rest to a [`backend::Broker`]; nodes share cluster state
//! through a [`backend::Presence`]. With no RabbitMQ or Redis configured the in-memory
//! backends make one process a complete chat server.
//!
//! # Layout
//!
//! Modules, from the socket inwards (each only uses those below it):
//!
//! | module | concern |
//! |---|---|
//! | [`server`] | accept loop, hyper http1 connections, graceful shutdown |
//! | [`http`] | plain HTTP endpoints (`api`), the WebSocket handshake (`upgrade`), the web chat page (`page`) |
//! | [`session`] | one WebSocket connection: read loop, requests, token access and `refresh`, rate limit, close |
//! | [`writer`] | one connection's writer task: drain the outbox, `writev`, close |
//! | [`node`] | a node's parts and life cycle (`start`, drain, `release`); heartbeat, token expiry and presence upkeep loops |
//! | [`router`] | the one delivery path: local recipients through the hub, the rest to the dispatcher |
//! | [`dispatch`] | dispatcher shards: presence lookups, per-node batches, confirm windows; the inter-node batch codec |
//! | [`delivery`] | `Target` (a user or a group), who gets the ack, and the ack rule |
//! | [`hub`] | sharded registry of this node's connections by user and group |
//! | [`backend`] | `Presence` and `Broker` traits; in-memory, Redis and RabbitMQ implementations; the reconnect policy |
//! | [`outbox`] | bounded per-connection frame queue; slow-consumer detection |
//! | [`tasks`] | the tracker and stop signal every background task runs under |
//! | [`metrics`] | Prometheus metrics: pre-resolved atomics, a lock-free histogram, scrape-time gauges |
//! | [`auth`] | handshake checks: allowed origins; JWT keys, algorithms and claims; the `groups` claim |
//! | [`ratelimit`] | per-connection token bucket |
//! | [`logging`] | tracing subscriber set-up |
//! | [`config`] | settings (clap: flags and environment), validated once |
//! | [`transport`] | a client connection's bytes: plain TCP or TLS, its two halves; the server certificate and its reload |
//! | [`protocol`] | the wire contract: pure parse, encode-once frames, WebSocket framing |
#![forbid(unsafe_code)]

pub mod auth;
pub mod backend;
pub mod config;
pub mod delivery;
pub mod dispatch;
pub mod http;
pub mod hub;
pub mod logging;
pub mod metrics;
pub mod node;
pub mod outbox;
pub mod protocol;
pub mod ratelimit;
pub mod router;
pub mod server;
pub mod session;
pub mod tasks;
pub mod transport;
pub mod writer;

pub use config::Config;
pub use node::{Backends, Node};
