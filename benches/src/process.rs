//! The servers a bench section starts (ours, llama-server, Redis, haproxy):
//! a free port for each, stopped when dropped, and ready once `/health`
//! answers.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

/// A process stopped (SIGTERM, then waited for) when dropped.
pub struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
        let _ = self.0.wait();
    }
}

/// Start `command` with its standard streams closed.
pub fn spawn(mut command: Command) -> Result<Proc> {
    Ok(Proc(command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn()?))
}

/// A port free on the loopback now.
pub fn port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Wait up to 120 s for `http://127.0.0.1:{port}/health` to answer.
pub fn healthy(port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let url = format!("http://127.0.0.1:{port}/health");
    while !Command::new("curl").args(["-sf", "-o", "/dev/null", &url]).status().is_ok_and(|s| s.success()) {
        if Instant::now() > deadline {
            bail!("{url} did not answer within 120 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}
