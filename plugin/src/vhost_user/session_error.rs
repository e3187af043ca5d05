//! Errors of a vhost-user session, typed by what the worker must do with the frontend: a refused
//! request leaves the session running, a fatal error ends it. The worker matches on the variant
//! ([`SessionError::outcome`]), never on message text.

use super::wire::WireError;

/// Why a frontend request could not be served.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The request is refused (a non-zero reply when the frontend asked for one); the session
    /// goes on.
    #[error("{reason}")]
    Refused { reason: String },
    /// The session cannot go on: the worker drops the frontend. `request` names the message
    /// being handled, when there was one.
    #[error("{}{kind}", request_prefix(.request))]
    Fatal {
        request: Option<String>,
        kind: FatalKind,
    },
}

/// What ended a session.
#[derive(Debug, thiserror::Error)]
pub enum FatalKind {
    /// The frontend closed its end: an orderly disconnect (a VMM that exits or restarts).
    #[error("peer closed the connection")]
    Closed,
    /// Reading a message failed: bad framing, too many fds, or a socket error.
    #[error("{0}")]
    Wire(WireError),
    /// A reply could not be written.
    #[error("reply failed: {0}")]
    Reply(std::io::Error),
    /// A message the session cannot answer without running mismatched with the frontend.
    #[error("{0}")]
    Protocol(String),
    /// A local resource (eventfd, ring state) could not be set up.
    #[error("{0}")]
    Resource(String),
}

/// What the worker does after a [`SessionError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Keep serving the frontend.
    Continue,
    /// The frontend left on its own: drop it quietly (logged at info level).
    Disconnected,
    /// The frontend broke the protocol or the session failed: drop it and log an error.
    Dropped,
}

fn request_prefix(request: &Option<String>) -> String {
    request
        .as_deref()
        .map_or_else(String::new, |r| format!("{r}: "))
}

impl SessionError {
    pub fn refused(reason: impl Into<String>) -> SessionError {
        SessionError::Refused {
            reason: reason.into(),
        }
    }

    pub fn protocol(message: impl Into<String>) -> SessionError {
        SessionError::fatal(FatalKind::Protocol(message.into()))
    }

    pub fn resource(message: impl std::fmt::Display) -> SessionError {
        SessionError::fatal(FatalKind::Resource(message.to_string()))
    }

    pub fn reply(e: std::io::Error) -> SessionError {
        SessionError::fatal(FatalKind::Reply(e))
    }

    fn fatal(kind: FatalKind) -> SessionError {
        SessionError::Fatal {
            request: None,
            kind,
        }
    }

    /// Names the request a fatal error happened in (kept if already named).
    pub fn in_request(self, name: &str) -> SessionError {
        match self {
            SessionError::Fatal {
                request: None,
                kind,
            } => SessionError::Fatal {
                request: Some(name.to_string()),
                kind,
            },
            other => other,
        }
    }

    /// What the worker does with the frontend after this error.
    pub fn outcome(&self) -> Outcome {
        match self {
            SessionError::Refused { .. } => Outcome::Continue,
            SessionError::Fatal {
                kind: FatalKind::Closed,
                ..
            } => Outcome::Disconnected,
            SessionError::Fatal { .. } => Outcome::Dropped,
        }
    }
}

/// A message that could not be read: EOF is the frontend leaving, anything else breaks the session.
impl From<WireError> for SessionError {
    fn from(e: WireError) -> SessionError {
        SessionError::fatal(match e {
            WireError::Closed => FatalKind::Closed,
            other => FatalKind::Wire(other),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_follows_the_variant_not_the_text() {
        assert_eq!(
            SessionError::refused("peer closed the connection").outcome(),
            Outcome::Continue
        );
        assert_eq!(
            SessionError::from(WireError::Closed).outcome(),
            Outcome::Disconnected
        );
        // A fatal error whose text happens to say "peer closed" is still a drop.
        assert_eq!(
            SessionError::protocol("peer closed the connection").outcome(),
            Outcome::Dropped
        );
        for e in [
            SessionError::from(WireError::BadFlags(2)),
            SessionError::from(WireError::TooManyFds),
            SessionError::reply(std::io::ErrorKind::BrokenPipe.into()),
            SessionError::resource("eventfd"),
        ] {
            assert_eq!(e.outcome(), Outcome::Dropped, "{e}");
        }
    }

    #[test]
    fn messages_name_the_request() {
        let e = SessionError::from(WireError::Closed).in_request("SET_FEATURES");
        assert_eq!(e.to_string(), "SET_FEATURES: peer closed the connection");
        assert_eq!(e.outcome(), Outcome::Disconnected);
        let e = SessionError::reply(std::io::ErrorKind::BrokenPipe.into())
            .in_request("GET_FEATURES")
            .in_request("ignored");
        assert_eq!(e.to_string(), "GET_FEATURES: reply failed: broken pipe");
        assert_eq!(
            SessionError::refused("no").in_request("X").to_string(),
            "no"
        );
    }

    /// Through a real session: a frontend that hangs up is a disconnect, one that sends a
    /// malformed header is dropped, and one asking IOTLB_MSG of an untranslated session too.
    #[test]
    fn session_errors_carry_the_decision() {
        use crate::config::IotlbMode;
        use crate::iotlb::policy::IotlbPolicy;
        use crate::vhost_user::session::{FrontendSession, SessionConfig};
        use crate::vhost_user::wire;
        use std::os::unix::net::UnixStream;
        use std::time::Duration;

        let config = SessionConfig {
            guest_cid: 3,
            max_queue_size: 256,
            seqpacket: true,
            iotlb: IotlbPolicy {
                mode: IotlbMode::Off,
                access_platform: false,
            },
            iotlb_max_entries: 16,
            iotlb_miss_timeout: Duration::from_millis(100),
        };
        let serve = |send: &dyn Fn(&UnixStream)| {
            let (front, back) = UnixStream::pair().unwrap();
            let mut session = FrontendSession::new(back, config).unwrap();
            send(&front);
            drop(front);
            session.serve_one().unwrap_err()
        };
        let e = serve(&|_| {});
        assert!(
            matches!(
                &e,
                SessionError::Fatal {
                    kind: FatalKind::Closed,
                    ..
                }
            ),
            "{e:?}"
        );
        assert_eq!(e.outcome(), Outcome::Disconnected);

        // Version 2 in the flags: not a vhost-user message.
        let e = serve(&|f| wire::send_message(f, 1, 0x2, &[], &[]).unwrap());
        assert!(
            matches!(
                &e,
                SessionError::Fatal {
                    kind: FatalKind::Wire(_),
                    ..
                }
            ),
            "{e:?}"
        );
        assert_eq!(e.outcome(), Outcome::Dropped);

        // IOTLB_MSG (22) to a session that does not translate.
        let e = serve(&|f| wire::send_message(f, 22, 0x1, &[0u8; 40], &[]).unwrap());
        assert!(
            matches!(&e, SessionError::Fatal { kind: FatalKind::Protocol(_), request: Some(r) } if r == "IOTLB_MSG"),
            "{e:?}"
        );
        assert_eq!(e.outcome(), Outcome::Dropped);
    }
}
