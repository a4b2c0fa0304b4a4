//! Network namespaces for the cluster fault tests: a bridge in the root namespace whose
//! address the test's Redis and registry listen on, and one namespace per node joined
//! to it by a veth pair, each node with its own address; a node's link can be cut and
//! restored. Everything made here is removed on drop, and what a killed test run left
//! behind is removed by the next one.

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// The prefix of every namespace made here: `sopmt-<pid>-<n>-<node>`.
const PREFIX: &str = "sopmt-";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// One node's namespace.
#[derive(Debug, Clone)]
pub struct NodeNet {
    /// The namespace's name (for `ip netns exec`).
    pub ns: String,
    /// The host end of its veth pair (cut with `ip link set … down`).
    pub host_veth: String,
    /// Its address on the bridge.
    pub addr: Ipv4Addr,
}

/// A bridge and the namespaces of `nodes` nodes.
#[derive(Debug)]
pub struct Net {
    bridge: String,
    host: Ipv4Addr,
    nodes: Vec<NodeNet>,
}

/// Why namespaces cannot be made here, if they cannot (not root, no `ip`).
pub fn unavailable() -> Option<String> {
    if !rustix_is_root() {
        return Some("network namespaces need root".into());
    }
    match Command::new("ip").args(["netns", "list"]).output() {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!(
            "`ip netns list` failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Some(format!("iproute2's `ip` is not usable: {e}")),
    }
}

fn rustix_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Runs `ip ARGS`, panicking with its error output when it fails.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

fn ip_quiet(args: &[&str]) {
    let _ = Command::new("ip").args(args).output();
}

/// Removes namespaces and bridges a test process that no longer exists left behind.
fn sweep_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let pid: u32 = rest
            .split('-')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        if pid != 0 && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            ip_quiet(&["netns", "del", name]);
        }
    }
    let Ok(out) = Command::new("ip")
        .args(["-o", "link", "show", "type", "bridge"])
        .output()
    else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split(':').nth(1).map(str::trim) else {
            continue;
        };
        if let Some(pid) = name.strip_prefix("sbr").and_then(|r| r.split('x').next()) {
            let pid: u32 = u32::from_str_radix(pid, 16).unwrap_or(0);
            if pid != 0 && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                ip_quiet(&["link", "del", name]);
            }
        }
    }
}

impl Net {
    /// Makes the bridge and `nodes` namespaces (at most 200).
    pub fn create(nodes: usize) -> Net {
        assert!(nodes <= 200);
        sweep_stale();
        let pid = std::process::id();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        // 10.213.X.0/24 with X from the pid and the counter; an X already on this
        // machine is skipped.
        let used = String::from_utf8_lossy(
            &Command::new("ip")
                .args(["-4", "-o", "addr", "show"])
                .output()
                .expect("ip addr")
                .stdout,
        )
        .into_owned();
        let mut x = (pid.wrapping_mul(7).wrapping_add(n * 13) % 250 + 1) as u8;
        while used.contains(&format!("10.213.{x}.")) {
            x = x % 250 + 1;
        }
        let bridge = format!("sbr{:x}x{n}", pid & 0xfffff);
        let host = Ipv4Addr::new(10, 213, x, 1);
        ip(&["link", "add", &bridge, "type", "bridge"]);
        let mut net = Net {
            bridge: bridge.clone(),
            host,
            nodes: Vec::new(),
        };
        ip(&["addr", "add", &format!("{host}/24"), "dev", &bridge]);
        ip(&["link", "set", &bridge, "up"]);
        for i in 0..nodes {
            let ns = format!("{PREFIX}{pid}-{n}-{i}");
            let host_veth = format!("sv{:x}x{n}n{i}", pid & 0xfff);
            let peer = format!("sp{:x}x{n}n{i}", pid & 0xfff);
            let addr = Ipv4Addr::new(10, 213, x, 2 + i as u8);
            ip(&["netns", "add", &ns]);
            net.nodes.push(NodeNet {
                ns: ns.clone(),
                host_veth: host_veth.clone(),
                addr,
            });
            ip(&[
                "link", "add", &host_veth, "type", "veth", "peer", "name", &peer,
            ]);
            ip(&["link", "set", &peer, "netns", &ns]);
            ip(&["link", "set", &host_veth, "master", &bridge]);
            ip(&["link", "set", &host_veth, "up"]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                &peer,
            ]);
            ip(&["-n", &ns, "link", "set", &peer, "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
        }
        net
    }

    /// The root namespace's address on the bridge (where Redis and the registry
    /// listen).
    pub fn host(&self) -> Ipv4Addr {
        self.host
    }

    /// Node `i`'s namespace.
    pub fn node(&self, i: usize) -> &NodeNet {
        &self.nodes[i]
    }

    /// Cuts node `i`'s link: nothing reaches it or leaves it until [`restore`].
    pub fn cut(&self, i: usize) {
        ip(&["link", "set", &self.nodes[i].host_veth, "down"]);
    }

    /// Restores node `i`'s link.
    pub fn restore(&self, i: usize) {
        ip(&["link", "set", &self.nodes[i].host_veth, "up"]);
    }

    /// A command that runs `program` inside node `i`'s namespace (`ip netns exec`
    /// execs it, so the child's pid is the program's).
    pub fn command(&self, i: usize, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.nodes[i].ns]).arg(program);
        c
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for node in &self.nodes {
            ip_quiet(&["netns", "del", &node.ns]);
        }
        ip_quiet(&["link", "del", &self.bridge]);
    }
}
