//! A real `redis-server` child process on a free loopback port, in its own temp dir.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct RedisServer {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

/// A free loopback port (for child processes and helpers the tests start).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind free port");
    l.local_addr().expect("local addr").port()
}

impl RedisServer {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut s = Self {
            port: free_port(),
            dir,
            child: None,
        };
        s.spawn().await;
        s
    }

    async fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "no", "--protected-mode", "yes"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (make test installs it)");
        self.child = Some(child);
        for _ in 0..200 {
            if let Ok(mut c) = self.try_client().await
                && redis::cmd("PING")
                    .query_async::<String>(&mut c)
                    .await
                    .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("redis-server on port {} did not start", self.port);
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn try_client(&self) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        let info = redis::IntoConnectionInfo::into_connection_info(self.url().as_str())?;
        let settings = info.redis_settings().clone().set_skip_set_lib_name();
        let tcp = redis::io::tcp::TcpSettings::default().set_nodelay(true);
        let client = redis::Client::open(info.set_redis_settings(settings).set_tcp_settings(tcp))?;
        client.get_multiplexed_async_connection().await
    }

    /// A connection for assertions.
    pub async fn client(&self) -> redis::aio::MultiplexedConnection {
        self.try_client().await.expect("connect to test redis")
    }

    /// Kill the server (state is lost: no persistence).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start again on the same port, empty.
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn().await;
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
