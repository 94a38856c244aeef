//! A real Kannel on loopback: bearerbox + smsbox from Debian's `kannel`
//! package and the `fakesmsc` test SMSC from `kannel-extras`, each on a free
//! 127.0.0.1 port, in a temp dir with a configuration written here. Everything
//! is killed and the dir removed when the [`Kannel`] is dropped.
//!
//! tests/run.sh installs both packages; without them [`Kannel::start`] panics
//! with what to install, so the test fails instead of passing unchecked.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Where Debian's `kannel-extras` puts the test SMSC.
const FAKESMSC: &str = "/usr/lib/kannel/test/fakesmsc";
/// How long the boxes get to connect to each other.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The `sendsms-user` the configuration defines.
pub const USERNAME: &str = "smsrelay";
pub const PASSWORD: &str = "kannel-test-pw";

/// One running Kannel with a fake SMSC behind it.
pub struct Kannel {
    dir: PathBuf,
    /// smsbox's `http://127.0.0.1:PORT/cgi-bin/sendsms`.
    pub sendsms_url: String,
    admin_port: u16,
    /// Where bearerbox waits for the fake SMSC.
    smsc_port: u16,
    /// bearerbox, smsbox, fakesmsc (in start order).
    children: Vec<Child>,
}

/// One SMS (or one part of a concatenated one) as fakesmsc printed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeSms {
    pub from: String,
    pub to: String,
    /// `text`, `ucs-2`, or `udh` for a part of a concatenated message.
    pub kind: String,
    /// The user data header of a part (`udh` only).
    pub udh: Vec<u8>,
    /// The payload: UTF-8 text for `text`, UTF-16BE for `ucs-2`, raw bytes for `udh`.
    pub data: Vec<u8>,
}

impl FakeSms {
    /// The text of a whole message: UTF-16BE decoded for `ucs-2`, as is for `text`.
    /// A `udh` part does not say its coding: decode its `data` with [`utf16be`] or as UTF-8.
    pub fn text(&self) -> String {
        if self.kind == "ucs-2" {
            utf16be(&self.data)
        } else {
            String::from_utf8_lossy(&self.data).into_owned()
        }
    }

    /// (reference, total, index) of a concatenated part, from its 8-bit-reference UDH.
    pub fn part(&self) -> Option<(u8, u8, u8)> {
        // UDH: length, IEI 0x00 (concatenation, 8-bit ref), IE length 3, ref, total, index.
        match self.udh.as_slice() {
            [5, 0, 3, reference, total, index] => Some((*reference, *total, *index)),
            _ => None,
        }
    }
}

/// Decodes UCS-2 / UTF-16BE bytes.
pub fn utf16be(bytes: &[u8]) -> String {
    let units: Vec<u16> = bytes
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)]))
        .collect();
    String::from_utf16_lossy(&units)
}

impl Kannel {
    /// Starts bearerbox, smsbox and fakesmsc and waits until a message can go through.
    pub async fn start() -> Kannel {
        let mut kannel = Self::start_without_smsc().await;
        kannel.connect_smsc().await;
        kannel
    }

    /// Starts bearerbox and smsbox only: sendsms answers, but bearerbox has
    /// no SMSC to hand messages to until [`Kannel::connect_smsc`].
    pub async fn start_without_smsc() -> Kannel {
        let bearerbox = find_binary("bearerbox");
        let smsbox = find_binary("smsbox");
        assert!(
            Path::new(FAKESMSC).is_file(),
            "{FAKESMSC} not found: install Debian's kannel-extras (tests/run.sh does)"
        );
        let mut last_error = String::new();
        // A port picked free can be taken before the box binds it: try again with new ones.
        for _ in 0..3 {
            match Self::try_start(&bearerbox, &smsbox).await {
                Ok(kannel) => return kannel,
                Err(e) => last_error = e,
            }
        }
        panic!("Kannel did not start:\n{last_error}");
    }

    async fn try_start(bearerbox: &Path, smsbox: &Path) -> Result<Kannel, String> {
        let dir =
            std::env::temp_dir().join(format!("smsrelay-kannel-{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let [admin, smsbox_port, smsc, sendsms] = free_ports();
        std::fs::write(
            dir.join("kannel.conf"),
            config(admin, smsbox_port, smsc, sendsms),
        )
        .map_err(|e| format!("write kannel.conf: {e}"))?;
        let mut kannel = Kannel {
            dir,
            sendsms_url: format!("http://127.0.0.1:{sendsms}/cgi-bin/sendsms"),
            admin_port: admin,
            smsc_port: smsc,
            children: Vec::new(),
        };
        kannel.spawn("bearerbox", Command::new(bearerbox).arg("kannel.conf"))?;
        kannel
            .wait_until("bearerbox answers on its admin port", |status| {
                status.contains("Status: running")
            })
            .await?;
        kannel.spawn("smsbox", Command::new(smsbox).arg("kannel.conf"))?;
        kannel
            .wait_until("smsbox is connected", |status| status.contains("smsbox:"))
            .await?;
        Ok(kannel)
    }

    /// Starts fakesmsc and waits until bearerbox sees it online.
    pub async fn connect_smsc(&mut self) {
        let port = self.smsc_port.to_string();
        let started = self.spawn(
            "fakesmsc",
            Command::new(FAKESMSC).args([
                "-H",
                "127.0.0.1",
                "-r",
                &port,
                // -m 0: send nothing of its own, only print what it receives.
                "-m",
                "0",
                "100 200 text unused",
            ]),
        );
        let connected = match started {
            Ok(()) => {
                self.wait_until("fakesmsc is connected", |status| status.contains("(online"))
                    .await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = connected {
            panic!("fakesmsc did not connect:\n{e}");
        }
    }

    fn spawn(&mut self, name: &str, command: &mut Command) -> Result<(), String> {
        let out = std::fs::File::create(self.dir.join(format!("{name}.out")))
            .map_err(|e| format!("create {name}.out: {e}"))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let child = command
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start {name}: {e}"))?;
        self.children.push(child);
        Ok(())
    }

    /// Polls bearerbox's status page until `ready` holds for it.
    async fn wait_until(&mut self, what: &str, ready: impl Fn(&str) -> bool) -> Result<(), String> {
        let url = format!(
            "http://127.0.0.1:{}/status.txt?password=statuspw",
            self.admin_port
        );
        let client = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        let mut status = String::new();
        while tokio::time::Instant::now() < deadline {
            if let Some(exited) = self.exited() {
                return Err(format!(
                    "{exited} exited while waiting until {what}\n{}",
                    self.logs()
                ));
            }
            if let Ok(response) = client
                .get(&url)
                .timeout(Duration::from_secs(2))
                .send()
                .await
            {
                status = response.text().await.unwrap_or_default();
                if ready(&status) {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!(
            "timed out after {START_TIMEOUT:?} waiting until {what}; last status:\n{status}\n{}",
            self.logs()
        ))
    }

    /// The name of a process that has already exited, if any.
    fn exited(&mut self) -> Option<&'static str> {
        let names = ["bearerbox", "smsbox", "fakesmsc"];
        self.children
            .iter_mut()
            .zip(names)
            .find_map(|(child, name)| matches!(child.try_wait(), Ok(Some(_))).then_some(name))
    }

    /// The tail of every log, for a failure message.
    pub fn logs(&self) -> String {
        let mut all = String::new();
        for name in [
            "bearerbox.out",
            "bearerbox.log",
            "smsbox.out",
            "smsbox.log",
            "fakesmsc.out",
        ] {
            let text = std::fs::read_to_string(self.dir.join(name)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(15)..].join("\n");
            all.push_str(&format!("--- {name} (last lines)\n{tail}\n"));
        }
        all
    }

    /// Every message (part) fakesmsc has received so far, in arrival order.
    pub fn received(&self) -> Vec<FakeSms> {
        let out = std::fs::read(self.dir.join("fakesmsc.out")).unwrap_or_default();
        String::from_utf8_lossy(&out)
            .lines()
            .filter_map(parse_got_message)
            .collect()
    }

    /// Waits until fakesmsc has received at least `n` messages (parts); returns them all.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<FakeSms> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let received = self.received();
            if received.len() >= n || tokio::time::Instant::now() >= deadline {
                return received;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Kannel {
    fn drop(&mut self) {
        // SIGKILL: nothing here needs a clean shutdown (internal DLR storage, no store file).
        for child in self.children.iter_mut().rev() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `Got message N: <from to kind [udh UDH] data DATA>` or `<from to kind DATA>`.
fn parse_got_message(line: &str) -> Option<FakeSms> {
    let rest = line.split_once("Got message ")?.1;
    let body = rest.split_once(": <")?.1.strip_suffix('>')?;
    let mut fields = body.splitn(4, ' ');
    let from = fields.next()?.to_owned();
    let to = fields.next()?.to_owned();
    let kind = fields.next()?.to_owned();
    let rest = fields.next().unwrap_or("");
    let (udh, data) = match kind.as_str() {
        // Plain text is printed as is.
        "text" => (Vec::new(), rest.as_bytes().to_vec()),
        "ucs-2" => (Vec::new(), url_decode(rest)),
        "udh" => {
            let (udh, data) = rest.split_once(" data ")?;
            (url_decode(udh), url_decode(data))
        }
        _ => (Vec::new(), url_decode(rest)),
    };
    Some(FakeSms {
        from,
        to,
        kind,
        udh,
        data,
    })
}

/// Kannel's URL encoding: `%XX` bytes and `+` for a space.
fn url_decode(s: &str) -> Vec<u8> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    out
}

/// `bearerbox`/`smsbox`: on PATH or in /usr/sbin (Debian's place, often not on a user's PATH).
fn find_binary(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!("{name} not found: install Debian's kannel package (tests/run.sh does)")
        })
}

/// Four distinct ports nothing listens on right now.
fn free_ports() -> [u16; 4] {
    // Hold all four listeners at once so the kernel cannot hand out the same port twice.
    let listeners: Vec<std::net::TcpListener> = (0..4)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port"))
        .collect();
    let ports: Vec<u16> = listeners
        .iter()
        .map(|l| l.local_addr().expect("local addr").port())
        .collect();
    [ports[0], ports[1], ports[2], ports[3]]
}

/// The loopback setup from the provider notes, on the given ports.
fn config(admin: u16, smsbox: u16, smsc: u16, sendsms: u16) -> String {
    format!(
        r#"group = core
admin-port = {admin}
admin-interface = 127.0.0.1
admin-password = adminpw
status-password = statuspw
admin-allow-ip = "127.0.0.1"
smsbox-port = {smsbox}
smsbox-interface = 127.0.0.1
box-allow-ip = "127.0.0.1"
log-file = "bearerbox.log"
dlr-storage = internal

group = smsc
smsc = fake
smsc-id = FAKE
our-host = 127.0.0.1
port = {smsc}
connect-allow-ip = "127.0.0.1"

group = smsbox
bearerbox-host = 127.0.0.1
bearerbox-port = {smsbox}
sendsms-port = {sendsms}
sendsms-interface = 127.0.0.1
global-sender = 12345
log-file = "smsbox.log"
http-request-retry = 5
http-queue-delay = 2

group = sendsms-user
username = {USERNAME}
password = {PASSWORD}
user-allow-ip = "127.0.0.1"
max-messages = 10
concatenation = true

group = sms-service
keyword = default
text = "No service specified"
"#
    )
}
