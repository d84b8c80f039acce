//! Client errors, each with the errno Elliptics would report.

use apsis_proto::errno;

/// What went wrong with a request.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The server answered with a negative errno.
    #[error("{} ({status})", errno::name(*status))]
    Status { status: i32 },
    /// No route for the group (−ENXIO, client side, nothing sent).
    #[error("no route to group {group} (ENXIO)")]
    NoRoute { group: u32 },
    /// No answer within the session timeout (−ETIMEDOUT, client side).
    #[error("timed out (ETIMEDOUT)")]
    Timeout,
    /// The connection failed or closed mid-request.
    #[error("connection to {addr}: {msg}")]
    Connection { addr: String, msg: String },
    /// The server sent something this client could not decode.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The request is invalid before anything is sent.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// Too few groups succeeded for the session's checker; every group's error is here.
    #[error("{checker}: {ok} of {total} groups succeeded ({})", group_errors(.groups))]
    Checker {
        checker: &'static str,
        ok: usize,
        total: usize,
        groups: Vec<(u32, ClientError)>,
    },
}

fn group_errors(g: &[(u32, ClientError)]) -> String {
    g.iter()
        .map(|(n, e)| format!("group {n}: {e}"))
        .collect::<Vec<_>>()
        .join("; ")
}

impl ClientError {
    /// The negative errno for this error.
    pub fn errno(&self) -> i32 {
        match self {
            ClientError::Status { status } => *status,
            ClientError::NoRoute { .. } => -errno::ENXIO,
            ClientError::Timeout => -errno::ETIMEDOUT,
            ClientError::Connection { .. } => -errno::ECONNRESET,
            ClientError::Protocol(_) => -errno::EPROTO,
            ClientError::Invalid(_) => -errno::EINVAL,
            // Elliptics reports the failing status.
            ClientError::Checker { groups, .. } => groups
                .first()
                .map(|(_, e)| e.errno())
                .unwrap_or(-errno::EIO),
        }
    }
    pub fn is_not_found(&self) -> bool {
        self.errno() == -errno::ENOENT
    }
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;
