//! A real Prometheus server (Debian's `prometheus` package, installed by
//! tests/tools.sh) scraping one target, on a free port, in a temp dir.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

pub struct Prometheus {
    child: Child,
    dir: PathBuf,
    addr: SocketAddr,
}

impl Prometheus {
    /// Scrapes `target`'s /metrics every second. Retries on another port
    /// when the one picked was taken between choosing and binding it.
    pub fn start(target: SocketAddr) -> Self {
        for _ in 0..5 {
            let mut prometheus = Self::spawn(target);
            if prometheus.wait_listening() {
                return prometheus;
            }
        }
        panic!("prometheus did not start listening");
    }

    /// Until it accepts connections (true) or exits (false).
    fn wait_listening(&mut self) -> bool {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if std::net::TcpStream::connect(self.addr).is_ok() {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        false
    }

    fn spawn(target: SocketAddr) -> Self {
        let addr: SocketAddr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let dir = std::env::temp_dir().join(format!(
            "courier-prom-{}-{}",
            addr.port(),
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: courier\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus (tests/tools.sh installs it)");
        Self { child, dir, addr }
    }

    /// The instant-query URL for `promql`.
    pub fn query_url(&self, promql: &str) -> String {
        let mut url = url_for(self.addr);
        url.query_pairs_mut().append_pair("query", promql);
        url.to_string()
    }
}

fn url_for(addr: SocketAddr) -> reqwest::Url {
    reqwest::Url::parse(&format!("http://{addr}/api/v1/query")).unwrap()
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
        std::fs::remove_dir_all(&self.dir).ok();
    }
}
