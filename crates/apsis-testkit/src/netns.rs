//! Network namespaces for tests that need separate hosts: one namespace per node, each joined
//! by a veth pair to a bridge in the test's own namespace, on a private /24. Cutting a node's
//! link (`ip link set … down` on the bridge side) partitions it from every other node and from
//! the test's clients; bringing it up heals the partition. Needs root and `ip`.

use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Runs `ip ARGS`; the error carries its stderr.
pub fn ip(args: &[&str]) -> std::io::Result<()> {
    let out = Command::new("ip").args(args).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// A bridge and the namespaces of the hosts on it; everything is deleted on drop.
pub struct Fabric {
    prefix: String,
    bridge: String,
    subnet: [u8; 2],
    hosts: Vec<usize>,
}

impl Fabric {
    /// Creates the bridge with address .254 on a fresh 10.x.y.0/24. Fails without root.
    pub fn new() -> std::io::Result<Fabric> {
        let pid = std::process::id();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        // Interface names are at most 15 bytes: "ap" + 5 digits + 1 letter + "v" + index.
        let prefix = format!("ap{:05}{}", pid % 100_000, (b'a' + (n % 26) as u8) as char);
        let mix = pid
            .wrapping_mul(2654435761)
            .wrapping_add(n.wrapping_mul(40503));
        let subnet = [(100 + (mix >> 8) % 100) as u8, (mix % 250) as u8];
        let f = Fabric {
            bridge: format!("{prefix}br"),
            prefix,
            subnet,
            hosts: Vec::new(),
        };
        ip(&["link", "add", &f.bridge, "type", "bridge"])?;
        let cidr = format!("{}/24", f.addr_of(253));
        ip(&["addr", "add", &cidr, "dev", &f.bridge])?;
        ip(&["link", "set", &f.bridge, "up"])?;
        Ok(f)
    }

    fn addr_of(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, self.subnet[0], self.subnet[1], host + 1)
    }

    /// The namespace name of host `i`.
    pub fn ns(&self, i: usize) -> String {
        format!("{}n{i}", self.prefix)
    }

    fn bridge_side(&self, i: usize) -> String {
        format!("{}v{i}", self.prefix)
    }

    /// Creates host `i` (its namespace, link and address) and returns its address.
    pub fn add_host(&mut self, i: usize) -> std::io::Result<IpAddr> {
        assert!(i < 250, "at most 250 hosts");
        let ns = self.ns(i);
        let outer = self.bridge_side(i);
        let inner = format!("{}p{i}", self.prefix);
        ip(&["netns", "add", &ns])?;
        self.hosts.push(i);
        ip(&[
            "link", "add", &outer, "type", "veth", "peer", "name", &inner,
        ])?;
        ip(&["link", "set", &inner, "netns", &ns])?;
        ip(&["link", "set", &outer, "master", &self.bridge, "up"])?;
        let a = self.addr_of(i as u8);
        let cidr = format!("{a}/24");
        ip(&["-n", &ns, "addr", "add", &cidr, "dev", &inner])?;
        ip(&["-n", &ns, "link", "set", &inner, "up"])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        Ok(IpAddr::V4(a))
    }

    /// Cuts host `i` off: no packet in or out until [`Fabric::heal`].
    pub fn cut(&self, i: usize) -> std::io::Result<()> {
        ip(&["link", "set", &self.bridge_side(i), "down"])
    }

    pub fn heal(&self, i: usize) -> std::io::Result<()> {
        ip(&["link", "set", &self.bridge_side(i), "up"])
    }
}

impl Drop for Fabric {
    fn drop(&mut self) {
        for &i in &self.hosts {
            let _ = ip(&["link", "del", &self.bridge_side(i)]);
            let _ = ip(&["netns", "del", &self.ns(i)]);
        }
        let _ = ip(&["link", "del", &self.bridge]);
    }
}
