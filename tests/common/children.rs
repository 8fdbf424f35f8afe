//! Switchyard instances as child processes (the built binary), for tests that stop them:
//! SIGTERM for a graceful drain, restarted on the same port, like a pod replaced by a
//! rollout.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use super::{eventually, free_port, secret_env};

/// Instances as child processes of the built binary, one per port, auth required; each can
/// be stopped with SIGTERM (a graceful drain) and started again on its port.
pub struct Instances {
    pub ports: Vec<u16>,
    children: Vec<Option<Child>>,
    redis_url: String,
    /// Where each start's log goes (`instance-<i>-<start>.log`).
    dir: std::path::PathBuf,
    starts: usize,
    /// `SWITCHYARD_*` settings of every instance beyond listen, secret and Redis.
    env: Vec<(&'static str, &'static str)>,
}

impl Instances {
    /// `n` instances on free ports (not started).
    pub fn new(
        n: usize,
        redis_url: String,
        dir: &std::path::Path,
        env: Vec<(&'static str, &'static str)>,
    ) -> Self {
        Self {
            ports: (0..n).map(|_| free_port()).collect(),
            children: (0..n).map(|_| None).collect(),
            redis_url,
            dir: dir.to_path_buf(),
            starts: 0,
            env,
        }
    }

    pub fn spawn(&mut self, i: usize) {
        self.starts += 1;
        let log = std::fs::File::create(self.dir.join(format!("instance-{i}-{}.log", self.starts)))
            .expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .env("SWITCHYARD_LISTEN", format!("127.0.0.1:{}", self.ports[i]))
            .env(secret_env().0, secret_env().1)
            .env("SWITCHYARD_REDIS__URL", &self.redis_url)
            .envs(self.env.iter().copied())
            .env_remove("RUST_LOG")
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("spawn switchyard");
        self.children[i] = Some(child);
    }

    /// SIGTERM and wait for the drain to finish; the exit status must be success.
    pub fn terminate(&mut self, i: usize) -> Duration {
        let mut c = self.children[i].take().expect("running");
        let t = Instant::now();
        let ok = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(ok.success());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = c.try_wait().expect("wait") {
                assert!(status.success(), "instance {i} exited with {status}");
                return t.elapsed();
            }
            assert!(Instant::now() < deadline, "instance {i} did not drain");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process id of instance `i`, while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.children[i].as_ref().map(|c| c.id())
    }

    pub async fn wait_ready(&self, i: usize) {
        let url = format!("http://127.0.0.1:{}/readyz", self.ports[i]);
        eventually(Duration::from_secs(10), "instance ready", || {
            let url = url.clone();
            async move { (reqwest::get(&url).await.ok()?.status().as_u16() == 200).then_some(()) }
        })
        .await;
    }
}

impl Drop for Instances {
    fn drop(&mut self) {
        for c in self.children.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
