//! The IP type of service (IPv6: traffic class) of a connection's packets, so a network that
//! schedules by DSCP can put storage traffic in its own class.
//!
//! Elliptics sets `IP_TOS` from its `client_net_prio` on client connections and from
//! `server_net_prio` once a connection is to another storage node (`dnet_state_create`,
//! `dnet_state_set_server_prio`); Apsis nodes take the same keys. Zero leaves the socket as it
//! is.

/// Sets the type of service of `sock`'s packets to `tos` (0..=255; 0 does nothing): `IP_TOS`
/// on an IPv4 socket, `IPV6_TCLASS` on an IPv6 one.
pub fn set(sock: &tokio::net::TcpStream, tos: u32) -> std::io::Result<()> {
    if tos == 0 {
        return Ok(());
    }
    let s = socket2::SockRef::from(sock);
    match sock.local_addr()? {
        std::net::SocketAddr::V4(_) => s.set_tos_v4(tos),
        std::net::SocketAddr::V6(_) => s.set_tclass_v6(tos),
    }
}

/// The type of service `sock`'s packets carry.
pub fn get(sock: &tokio::net::TcpStream) -> std::io::Result<u32> {
    let s = socket2::SockRef::from(sock);
    match sock.local_addr()? {
        std::net::SocketAddr::V4(_) => s.tos_v4(),
        std::net::SocketAddr::V6(_) => s.tclass_v6(),
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn set_on_a_socket_the_kernel_reports_it() {
        let (_l, c) = crate::loopback_socket().await;
        assert_eq!(super::get(&c).unwrap(), 0);
        super::set(&c, 0).unwrap();
        assert_eq!(super::get(&c).unwrap(), 0);
        super::set(&c, 0x48).unwrap();
        assert_eq!(super::get(&c).unwrap(), 0x48);
    }
}
