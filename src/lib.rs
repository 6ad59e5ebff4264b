//! chatgate: a real-time chat gateway.
//!
//! Clients hold WebSocket connections to any node; nodes route through a [`backend::Broker`]
//! and share cluster state through a [`backend::Presence`]. With no RabbitMQ or Redis
//! configured the in-memory backends make one process a complete chat server.
//!
//! # Layout
//!
//! | module | concern |
//! |---|---|
//! | [`config`] | environment variables, validated once; the `--help` table |
//! | [`server`] | accept loop, hyper http1 connections, graceful shutdown |
//! | [`http`] | plain HTTP endpoints and the WebSocket handshake |
//! | [`web`] | the web chat page at `GET /`, embedded in the binary |
//! | [`auth`] | handshake checks: allowed origins, JWT identity |
//! | [`session`] | one WebSocket connection: read loop, requests, heartbeat, rate limit |
//! | [`writer`] | one connection's writer task: drain the outbox, `writev`, close |
//! | [`outbox`] | bounded per-connection frame queue; slow-consumer detection |
//! | [`hub`] | sharded registry of this node's connections by user and group |
//! | [`router`] | where each encoded frame goes: local hub, or a dispatcher in a cluster |
//! | [`cluster`] | dispatcher shards, inter-node batches, presence maintenance loop |
//! | [`node`] | a node: config, hub, router, backends, life cycle |
//! | [`protocol`] | the wire contract: pure parse, encode-once frames, WebSocket framing |
//! | [`ratelimit`] | per-connection token bucket |
//! | [`backend`] | `Presence` and `Broker` traits; in-memory, Redis and RabbitMQ implementations |
//! | [`logging`] | tracing subscriber set-up |
#![forbid(unsafe_code)]

pub mod auth;
pub mod backend;
pub mod cluster;
pub mod config;
pub mod http;
pub mod hub;
pub mod logging;
pub mod node;
pub mod outbox;
pub mod protocol;
pub mod ratelimit;
pub mod router;
pub mod server;
pub mod session;
pub mod web;
pub mod writer;

pub use config::Config;
pub use node::{Backends, Node};
