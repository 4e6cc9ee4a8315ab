//! A RabbitMQ node of a test's own, for tests that restart the broker: the
//! shared node must stay up for every other test. Boots in a few seconds.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub struct PrivateRabbit {
    dir: PathBuf,
    node: String,
    port: u16,
    dist_port: u16,
    /// The node it joins on its first boot (peer discovery), if any.
    joins: Option<String>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

impl PrivateRabbit {
    pub fn start() -> Self {
        Self::start_joining(None)
    }

    /// Boots a node that joins `cluster` (a running node's name) as it
    /// boots, through RabbitMQ's peer discovery, rather than by
    /// `rabbitmqctl join_cluster` after it: one boot instead of a stop, a
    /// join and a second start, which on a loaded machine take a minute.
    fn start_joining(cluster: Option<&str>) -> Self {
        let port = free_port();
        let dist_port = free_port();
        let node = format!("ctest-{port}@localhost");
        let dir = std::env::temp_dir().join(format!("courier-rabbit-{port}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("enabled_plugins"), "[].\n").unwrap();
        let rabbit = Self {
            dir,
            node,
            port,
            dist_port,
            joins: cluster.map(str::to_owned),
        };
        rabbit.boot();
        rabbit
    }

    /// Starts the node's Erlang VM (the first time, or after a crash) and
    /// waits until the broker is up.
    fn boot(&self) {
        let Self {
            dir,
            node,
            port,
            dist_port,
            joins,
        } = self;
        // The machine's rabbitmq.conf pins the listener to 5672; ours
        // replaces it.
        let mut conf = format!("listeners.tcp.local = 127.0.0.1:{port}\n");
        if let Some(cluster) = joins {
            // Peer discovery acts on a node's first boot only (a blank
            // data directory); after a crash the node knows its cluster.
            conf.push_str(&format!(
                "cluster_formation.peer_discovery_backend = classic_config\n\
                 cluster_formation.classic_config.nodes.1 = {cluster}\n\
                 cluster_formation.randomized_startup_delay_range.min = 0\n\
                 cluster_formation.randomized_startup_delay_range.max = 1\n"
            ));
        }
        std::fs::write(dir.join("rabbitmq.conf"), conf).unwrap();
        let chown = Command::new("chown")
            .args(["-R", "rabbitmq:rabbitmq", dir.to_str().unwrap()])
            .status()
            .unwrap();
        assert!(chown.success());
        let d = dir.display();
        let status = Command::new("runuser")
            .args(["-u", "rabbitmq", "--", "env"])
            .arg(format!("RABBITMQ_NODENAME={node}"))
            .arg(format!("RABBITMQ_NODE_PORT={port}"))
            .arg(format!("RABBITMQ_DIST_PORT={dist_port}"))
            .arg(format!("RABBITMQ_CONFIG_FILE={d}/rabbitmq.conf"))
            .arg(format!("RABBITMQ_MNESIA_BASE={d}/mnesia"))
            .arg(format!("RABBITMQ_LOG_BASE={d}/log"))
            .arg(format!("RABBITMQ_ENABLED_PLUGINS_FILE={d}/enabled_plugins"))
            .arg(format!("RABBITMQ_PID_FILE={d}/pid"))
            .args(["rabbitmq-server", "-detached"])
            .status()
            .expect("start a private RabbitMQ node");
        assert!(status.success());
        self.wait_up();
    }

    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// The node's Erlang name (`ctest-<port>@localhost`).
    pub fn node(&self) -> &str {
        &self.node
    }

    fn ctl(&self, args: &[&str]) {
        let status = Command::new("runuser")
            .args([
                "-u",
                "rabbitmq",
                "--",
                "rabbitmqctl",
                "-q",
                "-n",
                &self.node,
            ])
            .args(args)
            .stdout(Stdio::null())
            .status()
            .expect("run rabbitmqctl");
        assert!(status.success(), "rabbitmqctl {args:?} failed");
    }

    fn wait_up(&self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !port_open(self.port) {
            if Instant::now() >= deadline {
                self.failed_to_start("its port did not open within 120 s");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let status = Command::new("runuser")
            .args(["-u", "rabbitmq", "--", "rabbitmqctl", "-q", "-n"])
            .arg(&self.node)
            .args(["await_startup", "--timeout", "120"])
            .stdout(Stdio::null())
            .status()
            .expect("run rabbitmqctl");
        if !status.success() {
            self.failed_to_start("rabbitmqctl await_startup failed");
        }
    }

    /// Fails the test with the end of every file in the node's log
    /// directory, which is removed with the node: the only record of why
    /// a boot failed.
    fn failed_to_start(&self, why: &str) -> ! {
        let dir = self.dir.join("log");
        let mut logs = String::new();
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .map(|entries| entries.flatten().map(|entry| entry.path()).collect())
            .unwrap_or_default();
        files.sort();
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            logs.push_str(&format!(
                "--- the end of {}:\n{}\n",
                file.display(),
                tail.join("\n")
            ));
        }
        if logs.is_empty() {
            logs = format!("(no log files in {})", dir.display());
        }
        panic!(
            "private RabbitMQ {} on port {} did not start: {why}\n{logs}",
            self.node, self.port
        );
    }

    /// Stops the broker application: every connection drops, the node
    /// stays up, durable queues and their messages survive.
    pub fn stop(&self) {
        self.ctl(&["stop_app"]);
    }

    /// The operator's step after a crash (docs/operations.md, "A queue
    /// without a leader"): looks at each of `queues` until every one has a
    /// leader, starting an election for one whose members are followers
    /// only (RabbitMQ 3.10 leaves a queue that was never written to so when
    /// its node crashes, and does not start an election by itself). A queue
    /// still recovering answers nothing for a while, and an election may
    /// not take at once, so this looks again rather than once. Returns the
    /// queues it had to wake.
    pub fn wake_leaderless(&self, queues: &[String]) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut woken = Vec::new();
        loop {
            // One CLI call a round: each boots an Erlang VM, which takes
            // seconds on a loaded machine.
            let states = self.wake_round(queues);
            let mut waiting = Vec::new();
            for (queue, state) in queues.iter().zip(&states) {
                match state.as_str() {
                    "led" => {}
                    "woken" => {
                        if !woken.contains(queue) {
                            woken.push(queue.clone());
                        }
                        waiting.push(queue);
                    }
                    _ => waiting.push(queue),
                }
            }
            if waiting.is_empty() {
                return woken;
            }
            assert!(
                Instant::now() < deadline,
                "quorum queues without a leader 120 s after the boot: {waiting:?} ({states:?})"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// One look at `queues` on this node: for each, `led` (a member
    /// leads), `woken` (followers only, and an election was asked for) or
    /// what else its members said (still recovering, say).
    fn wake_round(&self, queues: &[String]) -> Vec<String> {
        let names: Vec<String> = queues.iter().map(|q| format!("<<\"{q}\">>")).collect();
        let script = format!(
            r#"Look = fun(Q) ->
                 case catch rabbit_quorum_queue:status(<<"/">>, Q) of
                     Members when is_list(Members) ->
                         States = [proplists:get_value(<<"Raft State">>, M) || M <- Members],
                         case {{lists:member(leader, States), lists:member(follower, States)}} of
                             {{true, _}} -> led;
                             {{false, true}} ->
                                 ra:trigger_election({{binary_to_atom(<<"%2F_", Q/binary>>), node()}}),
                                 woken;
                             _ -> States
                         end;
                     Other -> Other
                 end
             end,
             lists:flatten([io_lib:format("~w;", [Look(Q)]) || Q <- [{}]])."#,
            names.join(", ")
        );
        let output = Command::new("runuser")
            .args(["-u", "rabbitmq", "--", "rabbitmqctl", "-q", "-n"])
            .arg(&self.node)
            .args(["eval", &script])
            .output()
            .expect("run rabbitmqctl eval");
        let text = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            return vec![
                format!("no answer: {}", String::from_utf8_lossy(&output.stderr));
                queues.len()
            ];
        }
        // The eval prints one Erlang string: the states, each ended by `;`.
        let states: Vec<String> = text
            .trim()
            .trim_matches('"')
            .split(';')
            .filter(|line| !line.is_empty())
            .map(str::to_owned)
            .collect();
        assert_eq!(states.len(), queues.len(), "unexpected answer: {text}");
        states
    }

    /// Kills the node's Erlang VM with SIGKILL, as a crash or an OOM kill
    /// would: nothing is flushed or closed, and the node is gone at once.
    pub fn crash(&self) {
        let pid = std::fs::read_to_string(self.dir.join("pid")).expect("the node's pid file");
        let status = Command::new("kill")
            .args(["-KILL", pid.trim()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -KILL {pid}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while port_open(self.port) {
            assert!(Instant::now() < deadline, "the killed node still listens");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Boots the node again after [`PrivateRabbit::crash`], on its data.
    pub fn boot_again(&self) {
        self.boot();
    }

    /// Starts the broker application again after [`PrivateRabbit::stop`].
    pub fn start_again(&self) {
        self.ctl(&["start_app"]);
        self.wait_up();
    }
}

/// Private nodes joined into one cluster, for tests of a node's loss.
/// Quorum queues declared on it replicate across its nodes.
pub struct PrivateCluster {
    nodes: Vec<PrivateRabbit>,
}

impl PrivateCluster {
    /// Boots the first node, then the others at once, each joining the
    /// first as it boots; checks that the cluster has every node.
    pub fn start(size: usize) -> Self {
        let began = Instant::now();
        let first = PrivateRabbit::start();
        let name = first.node.clone();
        let mut nodes = vec![first];
        nodes.extend(std::thread::scope(|scope| {
            let booting: Vec<_> = (1..size)
                .map(|_| scope.spawn(|| PrivateRabbit::start_joining(Some(&name))))
                .collect();
            booting
                .into_iter()
                .map(|node| node.join().expect("a private node boots"))
                .collect::<Vec<_>>()
        }));
        let cluster = Self { nodes };
        let running = cluster.running_nodes();
        for node in &cluster.nodes {
            assert!(
                running.contains(&node.node),
                "{} did not join the cluster; running: {running:?}",
                node.node
            );
        }
        // Printed, so that a slow test shows where its time went.
        println!("a cluster of {size} nodes up after {:.0?}", began.elapsed());
        cluster
    }

    /// The nodes the first node sees running in its cluster.
    fn running_nodes(&self) -> Vec<String> {
        let output = Command::new("runuser")
            .args(["-u", "rabbitmq", "--", "rabbitmqctl", "-q", "-n"])
            .arg(&self.nodes[0].node)
            .args(["eval", "rabbit_nodes:all_running()."])
            .output()
            .expect("run rabbitmqctl eval");
        assert!(
            output.status.success(),
            "rabbitmqctl eval rabbit_nodes:all_running() failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        // An Erlang list of atoms: ['ctest-1@localhost','ctest-2@localhost'].
        String::from_utf8_lossy(&output.stdout)
            .trim()
            .trim_matches(['[', ']'])
            .split(',')
            .map(|name| name.trim().trim_matches('\'').to_owned())
            .filter(|name| !name.is_empty())
            .collect()
    }

    /// Every node's AMQP URL, comma-separated, as `amqp.url` takes them.
    pub fn amqp_urls(&self) -> String {
        let urls: Vec<String> = self.nodes.iter().map(PrivateRabbit::amqp_url).collect();
        urls.join(",")
    }

    pub fn node(&self, n: usize) -> &PrivateRabbit {
        &self.nodes[n]
    }

    /// The leader and members of quorum queue `queue`, as node names, as
    /// node `asking` sees them.
    pub fn quorum_members(&self, asking: usize, queue: &str) -> (String, Vec<String>) {
        let output = Command::new("runuser")
            .args(["-u", "rabbitmq", "--", "rabbitmqctl", "-q", "-n"])
            .arg(&self.nodes[asking].node)
            .args([
                "list_queues",
                "--no-table-headers",
                "name",
                "leader",
                "members",
            ])
            .output()
            .expect("run rabbitmqctl list_queues");
        assert!(output.status.success(), "rabbitmqctl list_queues failed");
        let text = String::from_utf8_lossy(&output.stdout);
        let line = text
            .lines()
            .find(|line| line.split('\t').next() == Some(queue))
            .unwrap_or_else(|| panic!("no queue {queue} in:\n{text}"));
        let mut fields = line.split('\t').skip(1);
        let leader = fields.next().unwrap_or_default().to_owned();
        let members = fields
            .next()
            .unwrap_or_default()
            .trim_matches(['[', ']'])
            .split(',')
            .map(|m| m.trim().to_owned())
            .filter(|m| !m.is_empty())
            .collect();
        (leader, members)
    }

    /// The node each client connection named `client` (a connection name
    /// such as "courier worker") is on, as node `asking` sees the cluster.
    pub fn connection_nodes(&self, asking: usize, client: &str) -> Vec<String> {
        let output = Command::new("runuser")
            .args(["-u", "rabbitmq", "--", "rabbitmqctl", "-q", "-n"])
            .arg(&self.nodes[asking].node)
            .args([
                "list_connections",
                "--no-table-headers",
                "pid",
                "client_properties",
            ])
            .output()
            .expect("run rabbitmqctl list_connections");
        assert!(
            output.status.success(),
            "rabbitmqctl list_connections failed"
        );
        // A connection's pid reads `<NODE.N.N.N>`; node names hold no dot.
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|line| line.contains(&format!("\"{client}\"")))
            .filter_map(|line| line.strip_prefix('<')?.split('.').next().map(str::to_owned))
            .collect()
    }

    /// What every node says of the queues: leader, members, messages
    /// ready and unacknowledged, consumers; for a failing test's message.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            let output = Command::new("runuser")
                .args(["-u", "rabbitmq", "--", "rabbitmqctl", "-q", "-n"])
                .arg(&node.node)
                .args([
                    "list_queues",
                    "--timeout",
                    "10",
                    "--no-table-headers",
                    "name",
                    "leader",
                    "online",
                    "messages_ready",
                    "messages_unacknowledged",
                    "consumers",
                ])
                .output()
                .expect("run rabbitmqctl list_queues");
            out.push_str(&format!(
                "as {} sees it:\n{}{}\n",
                node.node,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        out
    }

    /// The index of the node named `name`.
    pub fn index_of(&self, name: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.node == name)
            .unwrap_or_else(|| panic!("{name} is not a node of this cluster"))
    }
}

impl Drop for PrivateRabbit {
    /// Kills the node (its data goes with its directory, so nothing needs
    /// a clean stop), which takes no time where `rabbitmqctl stop` takes
    /// ten seconds or more on a loaded machine.
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("pid")) {
            let _ = Command::new("kill")
                .args(["-KILL", pid.trim()])
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
