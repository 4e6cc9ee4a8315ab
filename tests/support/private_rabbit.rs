//! A RabbitMQ node of a test's own, for tests that restart the broker: the
//! shared node must stay up for every other test. Boots in a few seconds.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub struct PrivateRabbit {
    dir: PathBuf,
    node: String,
    port: u16,
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
        let port = free_port();
        let dist_port = free_port();
        let node = format!("ctest-{port}@localhost");
        let dir = std::env::temp_dir().join(format!("courier-rabbit-{port}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("enabled_plugins"), "[].\n").unwrap();
        // The machine's rabbitmq.conf pins the listener to 5672; ours
        // replaces it.
        std::fs::write(
            dir.join("rabbitmq.conf"),
            format!("listeners.tcp.local = 127.0.0.1:{port}\n"),
        )
        .unwrap();
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
        let rabbit = Self { dir, node, port };
        rabbit.wait_up();
        rabbit
    }

    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
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
            assert!(Instant::now() < deadline, "private RabbitMQ did not start");
            std::thread::sleep(Duration::from_millis(200));
        }
        self.ctl(&["await_startup", "--timeout", "120"]);
    }

    /// Stops the broker application: every connection drops, the node
    /// stays up, durable queues and their messages survive.
    pub fn stop(&self) {
        self.ctl(&["stop_app"]);
    }

    /// Starts the broker application again after [`PrivateRabbit::stop`].
    pub fn start_again(&self) {
        self.ctl(&["start_app"]);
        self.wait_up();
    }
}

impl Drop for PrivateRabbit {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args([
                "-u",
                "rabbitmq",
                "--",
                "rabbitmqctl",
                "-q",
                "-n",
                &self.node,
                "stop",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
