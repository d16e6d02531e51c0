//! A real S3-protocol server for integration tests: an s3s-fs process on a loopback port, serving
//! every folder of its data root as a bucket; killed on drop. Shared by the S3 test suites of the
//! checkpoint crate, the engine crate and the root package (each includes this file with `#[path]`).
#![allow(dead_code)] // each suite uses a different part

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Access key the server accepts.
pub const ACCESS_KEY: &str = "streamjob-test";
/// Secret key the server accepts.
pub const SECRET_KEY: &str = "streamjob-test-secret";

/// A running s3s-fs.
pub struct S3Server {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    /// Holds `root/` (the buckets) and `s3s-fs.log`.
    pub data: tempfile::TempDir,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The s3s-fs binary: `$S3S_FS_BIN`, or where `tests/tools/install-s3s-fs.sh` puts it.
pub fn s3s_fs_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("S3S_FS_BIN") {
        return PathBuf::from(bin);
    }
    let cache = std::env::var_os("STREAMJOB_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME")
                .expect("HOME is not set; set STREAMJOB_CACHE or S3S_FS_BIN");
            PathBuf::from(home).join(".cache/streamjob")
        });
    cache.join("s3s-fs-0.14.1/bin/s3s-fs")
}

impl S3Server {
    /// Start a server with (empty) `buckets`; retries on another port if it cannot listen.
    pub fn start(buckets: &[&str]) -> Self {
        let bin = s3s_fs_binary();
        assert!(
            bin.is_file(),
            "s3s-fs not found at {}: run `bash tests/tools/install-s3s-fs.sh` from the repository root (or set S3S_FS_BIN)",
            bin.display()
        );
        let mut last_log = String::new();
        for _ in 0..3 {
            let data = tempfile::tempdir().expect("temp dir for s3s-fs data");
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("free port")
                .port();
            let log_path = data.path().join("s3s-fs.log");
            let log = std::fs::File::create(&log_path).expect("s3s-fs log file");
            let root = data.path().join("root");
            std::fs::create_dir(&root).expect("s3s-fs root dir");
            for bucket in buckets {
                std::fs::create_dir(root.join(bucket)).expect("bucket folder");
            }
            let child = Command::new(&bin)
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
                .arg(&root)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log handle"))
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("failed to start {}: {e}", bin.display()));
            let mut server = S3Server {
                child,
                endpoint: format!("http://127.0.0.1:{port}"),
                data,
            };
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    // Someone listens; make sure it is our server (it exits if the port was taken).
                    std::thread::sleep(Duration::from_millis(100));
                    if matches!(server.child.try_wait(), Ok(None)) {
                        return server;
                    }
                    break;
                }
                if !matches!(server.child.try_wait(), Ok(None)) {
                    break; // exited, e.g. the port was taken meanwhile: try another one
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            last_log.clear();
            if let Ok(mut f) = std::fs::File::open(&log_path) {
                let _ = f.read_to_string(&mut last_log);
            }
            drop(server);
        }
        panic!("s3s-fs did not start listening; its log:\n{last_log}");
    }

    /// The folder holding the buckets.
    pub fn root(&self) -> PathBuf {
        self.data.path().join("root")
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data.path().join("s3s-fs.log")).unwrap_or_default()
    }
}
