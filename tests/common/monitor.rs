//! `netctl monitor` as a child process, started and waited for until its stream is open
//! (its `-- watching …` line on stderr), so that a test makes its traffic only once every
//! event will be shown.

use std::{
    io::{BufRead, BufReader},
    process::{Child, ChildStdout, Command, ExitStatus, Stdio},
    sync::mpsc,
    thread::JoinHandle,
    time::Duration,
};

use super::{NETCTL, Slot};

pub struct Monitor {
    child: Child,
    stderr: JoinHandle<String>,
}

impl Monitor {
    /// `netctl monitor ARGS` in the slot's prefix, once it watches.
    pub fn start(slot: &Slot, args: &[&str]) -> Monitor {
        let mut child = Command::new(NETCTL)
            .args(["--prefix", &slot.prefix(), "monitor"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("netctl monitor");
        let err = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        let stderr = std::thread::spawn(move || {
            let mut all = String::new();
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                if line.starts_with("-- watching") {
                    let _ = tx.send(());
                }
                all.push_str(&line);
                all.push('\n');
            }
            all
        });
        if rx.recv_timeout(Duration::from_secs(20)).is_err() {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "netctl monitor did not start watching: {}",
                stderr.join().unwrap_or_default()
            );
        }
        Monitor { child, stderr }
    }

    pub fn stdout(&mut self) -> ChildStdout {
        self.child.stdout.take().expect("stdout taken once")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for it to end: its status and everything it wrote on stderr.
    pub fn wait(mut self) -> (ExitStatus, String) {
        let status = self.child.wait().expect("monitor ends");
        (status, self.stderr.join().expect("stderr reader"))
    }
}
