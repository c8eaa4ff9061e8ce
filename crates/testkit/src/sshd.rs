//! A real OpenSSH server on loopback for tests of remote commands.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::closed_port;

/// A real OpenSSH server on a loopback port, with throwaway host and user
/// keys, for tests of remote commands. Every session runs through a wrapper
/// that puts a fake `cloud-init` first on the PATH; its answer is set with
/// [`Sshd::set_cloud_init`]. Dropping it stops the server.
#[derive(Debug)]
pub struct Sshd {
    child: Child,
    port: u16,
    user: String,
    dir: tempfile::TempDir,
}

/// What the fake `cloud-init status --wait` answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FakeCloudInit {
    /// `status: done`, exit 0.
    Done,
    /// `status: error`, exit 1.
    Error,
    /// `status: running` (exit 0) the first `n` times, then `status: done`.
    NotYet(u32),
}

fn sshd_binary() -> PathBuf {
    for p in ["/usr/sbin/sshd", "/usr/local/sbin/sshd", "/sbin/sshd"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!("sshd is not installed: run scripts/setup (installs Debian's openssh-server)");
}

pub(crate) fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Sshd {
    /// Starts sshd on a free loopback port, accepting the current user with a fresh key.
    pub fn start() -> Self {
        let sshd = sshd_binary();
        let dir = tempfile::tempdir().expect("a temporary directory for sshd");
        let d = dir.path();
        let user = String::from_utf8(
            Command::new("id")
                .arg("-un")
                .output()
                .expect("id -un")
                .stdout,
        )
        .expect("user name is UTF-8")
        .trim()
        .to_owned();
        for key in ["host_key", "user_key"] {
            run(Command::new("ssh-keygen")
                .args([
                    "-q",
                    "-t",
                    "ed25519",
                    "-N",
                    "",
                    "-C",
                    "spotkeeper-test",
                    "-f",
                ])
                .arg(d.join(key)));
        }
        std::fs::copy(d.join("user_key.pub"), d.join("authorized_keys")).expect("authorized_keys");
        std::fs::create_dir_all(d.join("bin")).expect("bin dir");
        let fake = format!(
            "#!/bin/sh\n# fake cloud-init: answers `status` from {0}/cloud-init.mode\n\
             echo \"$*\" >> {0}/cloud-init.calls\n\
             [ \"$1\" = status ] || exit 0\n\
             mode=$(cat {0}/cloud-init.mode 2>/dev/null || echo done)\n\
             case \"$mode\" in\n\
             done) echo 'status: done'; exit 0 ;;\n\
             error) echo 'status: error'; echo 'errors:'; echo \"  - ('scripts_user', RuntimeError('boom'))\"; exit 1 ;;\n\
             notyet:*) n=${{mode#notyet:}}; c=$(cat {0}/cloud-init.count 2>/dev/null || echo 0); c=$((c+1)); echo $c > {0}/cloud-init.count;\n\
               if [ \"$c\" -le \"$n\" ]; then echo 'status: running'; exit 0; else echo 'status: done'; exit 0; fi ;;\n\
             esac\n",
            d.display()
        );
        write_executable(&d.join("bin/cloud-init"), &fake);
        // File copies (scp, which speaks SFTP) reach the SFTP server through
        // the forced command too.
        let sftp = [
            "/usr/lib/openssh/sftp-server",
            "/usr/libexec/openssh/sftp-server",
            "/usr/lib/ssh/sftp-server",
        ]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("/usr/lib/openssh/sftp-server");
        let wrapper = format!(
            "#!/bin/sh\nPATH={}/bin:$PATH\nexport PATH\n\
             case \"$SSH_ORIGINAL_COMMAND\" in sftp|internal-sftp|*/sftp-server) exec {sftp} ;; esac\n\
             exec /bin/sh -c \"$SSH_ORIGINAL_COMMAND\"\n",
            d.display()
        );
        write_executable(&d.join("wrapper"), &wrapper);
        let port = closed_port();
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\n\
             AuthorizedKeysFile {d}/authorized_keys\nStrictModes no\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nUsePAM no\nPermitRootLogin prohibit-password\n\
             AllowUsers {user}\nForceCommand {d}/wrapper\nSubsystem sftp {sftp}\nLogLevel ERROR\n",
            d = d.display()
        );
        std::fs::write(d.join("sshd_config"), config).expect("sshd_config");
        // sshd refuses to start as root without its privilege separation directory.
        let _ = std::fs::create_dir_all("/run/sshd");
        let child = Command::new(&sshd)
            .args(["-D", "-e", "-f"])
            .arg(d.join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", sshd.display()));
        let server = Self {
            child,
            port,
            user,
            dir,
        };
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return server;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("sshd on 127.0.0.1:{port} does not answer");
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The user it accepts.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The private key it accepts.
    pub fn key_file(&self) -> PathBuf {
        self.dir.path().join("user_key")
    }

    /// A known_hosts file private to this server.
    pub fn known_hosts(&self) -> PathBuf {
        self.dir.path().join("known_hosts")
    }

    /// Puts a fake command first on the sessions' PATH: it records its
    /// arguments (see [`Sshd::calls`]) and runs `body`.
    pub fn fake_command(&self, name: &str, body: &str) {
        let d = self.dir.path();
        write_executable(
            &d.join("bin").join(name),
            &format!(
                "#!/bin/sh\necho \"$*\" >> {}/{name}.calls\n{body}\n",
                d.display()
            ),
        );
    }

    /// The argument lines a fake command (or `cloud-init`) was called with.
    pub fn calls(&self, name: &str) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.calls")))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Sets what the fake `cloud-init status` answers.
    pub fn set_cloud_init(&self, mode: FakeCloudInit) {
        let text = match mode {
            FakeCloudInit::Done => "done".to_owned(),
            FakeCloudInit::Error => "error".to_owned(),
            FakeCloudInit::NotYet(n) => format!("notyet:{n}"),
        };
        let _ = std::fs::remove_file(self.dir.path().join("cloud-init.count"));
        std::fs::write(self.dir.path().join("cloud-init.mode"), text)
            .expect("write cloud-init mode");
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_executable(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).expect("write script");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod script");
}
