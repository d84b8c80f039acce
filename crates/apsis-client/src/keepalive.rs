//! TCP keepalive on every connection, so a peer that vanished without closing is noticed.
//!
//! A host that loses power or is cut off sends no FIN and no RST: the other end of an idle
//! connection would wait on it forever. For a node, every such client keeps a connection and
//! its buffers, and counts against `max_connections` until new clients are refused. For a
//! client, a dead node would stay in its route table until a request timed out against it.
//!
//! Elliptics sets keepalive on each of its sockets (`dnet_set_sockopt`): the first probe after
//! 10 s of silence, then one every 10 s, and the connection is dropped after 3 probes go
//! unanswered. Apsis does the same ([`Keepalive::ELLIPTICS`]). It also sets `TCP_USER_TIMEOUT`
//! to the same limit, which Elliptics does not. That covers a connection with data in flight:
//! keepalive never probes it, and without the timeout, unacknowledged data is retransmitted
//! for ~15 minutes before the kernel gives up.

use std::time::Duration;

/// How a connection checks that its peer is still there (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Keepalive {
    /// Silence before the first probe.
    pub idle: Duration,
    /// Between unanswered probes.
    pub interval: Duration,
    /// Unanswered probes after which the connection is dropped.
    pub count: u32,
}

impl Keepalive {
    /// Elliptics' values: 10 s idle, 10 s between probes, 3 probes, so a silent peer is
    /// dropped after 40 s.
    pub const ELLIPTICS: Keepalive = Keepalive {
        idle: Duration::from_secs(10),
        interval: Duration::from_secs(10),
        count: 3,
    };

    /// Linux's bounds for `TCP_KEEPIDLE` / `TCP_KEEPINTVL` (seconds) and `TCP_KEEPCNT`.
    pub const MAX_SECS: u64 = 32_767;
    pub const MAX_COUNT: u32 = 127;

    /// From whole seconds, within the kernel's bounds (1..=32767 s, 1..=127 probes).
    pub fn from_secs(
        idle: u64,
        interval: u64,
        count: u32,
    ) -> std::result::Result<Keepalive, String> {
        let secs = |name: &str, v: u64| {
            if (1..=Self::MAX_SECS).contains(&v) {
                Ok(Duration::from_secs(v))
            } else {
                Err(format!(
                    "{name} must be 1..={} seconds, not {v}",
                    Self::MAX_SECS
                ))
            }
        };
        if !(1..=Self::MAX_COUNT).contains(&count) {
            return Err(format!(
                "keepalive_count must be 1..={}, not {count}",
                Self::MAX_COUNT
            ));
        }
        Ok(Keepalive {
            idle: secs("keepalive_idle_secs", idle)?,
            interval: secs("keepalive_interval_secs", interval)?,
            count,
        })
    }

    /// How long a silent peer keeps its connection: idle + interval × count.
    pub fn limit(&self) -> Duration {
        self.idle + self.interval * self.count
    }

    /// Turns keepalive on for `sock` with these values, and sets `TCP_USER_TIMEOUT` to
    /// [`Keepalive::limit`].
    pub fn apply(&self, sock: &tokio::net::TcpStream) -> std::io::Result<()> {
        let s = socket2::SockRef::from(sock);
        s.set_tcp_keepalive(
            &socket2::TcpKeepalive::new()
                .with_time(self.idle)
                .with_interval(self.interval)
                .with_retries(self.count),
        )?;
        s.set_tcp_user_timeout(Some(self.limit()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_checked_and_the_limit_adds_up() {
        assert_eq!(Keepalive::from_secs(10, 10, 3), Ok(Keepalive::ELLIPTICS));
        assert_eq!(Keepalive::ELLIPTICS.limit(), Duration::from_secs(40));
        assert!(Keepalive::from_secs(0, 10, 3).is_err());
        assert!(Keepalive::from_secs(10, 40_000, 3).is_err());
        assert!(Keepalive::from_secs(10, 10, 0).is_err());
        assert!(Keepalive::from_secs(10, 10, 128).is_err());
    }

    #[tokio::test]
    async fn applied_to_a_socket_the_kernel_reports_it() {
        let (_l, c) = crate::loopback_socket().await;
        let k = Keepalive::from_secs(7, 3, 4).unwrap();
        k.apply(&c).unwrap();
        let s = socket2::SockRef::from(&c);
        assert!(s.keepalive().unwrap());
        assert_eq!(s.tcp_keepalive_time().unwrap(), Duration::from_secs(7));
        assert_eq!(s.tcp_keepalive_interval().unwrap(), Duration::from_secs(3));
        assert_eq!(s.tcp_keepalive_retries().unwrap(), 4);
        assert_eq!(s.tcp_user_timeout().unwrap(), Some(Duration::from_secs(19)));
    }
}
