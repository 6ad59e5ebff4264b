//! Several gateways in this test process, sharing an in-process cluster state
//! ([`MemoryCluster`]) and broker ([`MemoryNetwork`]): the dispatcher, batching, sweeps and
//! presence events run exactly as they do on Redis and RabbitMQ, in milliseconds.

use std::sync::Arc;
use std::time::Duration;

use chatgate::Backends;
use chatgate::Config;
use chatgate::backend::memory::{MemoryCluster, MemoryNetwork};

use super::{Client, Gateway};

pub struct InProcess {
    pub cluster: Arc<MemoryCluster>,
    pub network: Arc<MemoryNetwork>,
    pub nodes: Vec<Gateway>,
}

impl InProcess {
    /// `n` gateways (`n0`, `n1`, ...) with node lease `lease`.
    pub async fn start(n: usize, lease: Duration, tune: impl Fn(&mut Config)) -> InProcess {
        let cluster = MemoryCluster::with_lease(lease);
        let network = MemoryNetwork::new();
        let mut nodes = Vec::new();
        for i in 0..n {
            let mut config = Config::for_tests();
            config.node_id = format!("n{i}");
            config.cluster.node_ttl = lease;
            tune(&mut config);
            let backends = Backends::in_process(&cluster, &network, &config.node_id);
            nodes.push(Gateway::start_node(config, backends).await);
        }
        InProcess { cluster, network, nodes }
    }

    pub async fn client(&self, i: usize) -> Client {
        self.nodes[i].client().await
    }
}
