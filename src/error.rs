//! Error categories and the one table that maps them to process exit codes
//! and HTTP statuses.
//!
//! Every error enum of the crate has a `category()`; this module owns only
//! the categories and the table, so the command line and the service can
//! never disagree on what kind of failure an error is. It imports nothing
//! of the crate: it is the ground floor.
//!
//! | category | meaning | exit | HTTP |
//! |---|---|---|---|
//! | `Usage` | bad argument, file, value or request | 2 | 400 |
//! | `Malformed` | the SQL cannot be parsed or planned | 6 | 400 |
//! | `Unauthenticated` | no valid credential | 7 | 401 |
//! | `Forbidden` | the agreement does not allow it | 7 | 403 |
//! | `NotFound` | no such snapshot, saved query or route | 2 | 404 |
//! | `MethodNotAllowed` | wrong HTTP method | 2 | 405 |
//! | `NotAcceptable` | no such output format | 2 | 406 |
//! | `BudgetExhausted` | the privacy budget does not cover it | 8 | 409 |
//! | `TooLarge` | too many cells, too much SQL or body | 8 | 413 |
//! | `Rejected` | the gate refused the query | 6 | 422 |
//! | `Limit` | a limit of the query was hit (time, memory, dimensions) | 8 | 422 |
//! | `InvalidData` | input data failed validation (an import) | 3 | 422 |
//! | `RateLimited` | too many requests | 8 | 429 |
//! | `Integrity` | a snapshot or the audit chain is damaged | 4 | 500 |
//! | `Io` | the environment failed (disk, permissions) | 5 | 500 |
//! | `Internal` | a failure that is not the caller's fault | 70 | 500 |
//! | `Unavailable` | shutting down, or the audit log or disk is unavailable | 75 | 503 |

/// What kind of failure this is, from the caller's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCategory {
    /// The caller gave bad input (arguments, files, values): fix and retry.
    Usage,
    /// The SQL text cannot be parsed or planned.
    Malformed,
    /// No valid credential was presented.
    Unauthenticated,
    /// The agreement does not allow it (element, Minister's permission,
    /// region, stage, validity).
    Forbidden,
    /// The named snapshot, saved query or route does not exist.
    NotFound,
    /// The HTTP method is not allowed on the route.
    MethodNotAllowed,
    /// The requested output format cannot be produced.
    NotAcceptable,
    /// The privacy budget (period or lifetime) does not cover the query.
    BudgetExhausted,
    /// The request or its result grid is larger than allowed.
    TooLarge,
    /// The query gate refused the query (not an aggregate, not a table…).
    Rejected,
    /// A limit of the query was hit (time, memory, dimensions).
    Limit,
    /// Input data failed validation (an import with bad rows).
    InvalidData,
    /// Too many requests.
    RateLimited,
    /// A snapshot on disk is damaged or does not match its manifest, or the
    /// audit chain is broken.
    Integrity,
    /// The environment failed (disk, permissions).
    Io,
    /// A failure that is not the caller's fault.
    Internal,
    /// The service is shutting down, or the audit log or the disk is not
    /// available: retry later.
    Unavailable,
}

impl ErrorCategory {
    /// The table: exit code and HTTP status of each category.
    const fn table(self) -> (i32, u16) {
        use ErrorCategory as C;
        match self {
            C::Usage => (2, 400),
            C::Malformed => (6, 400),
            C::Unauthenticated => (7, 401),
            C::Forbidden => (7, 403),
            C::NotFound => (2, 404),
            C::MethodNotAllowed => (2, 405),
            C::NotAcceptable => (2, 406),
            C::BudgetExhausted => (8, 409),
            C::TooLarge => (8, 413),
            C::Rejected => (6, 422),
            C::Limit => (8, 422),
            C::InvalidData => (3, 422),
            C::RateLimited => (8, 429),
            C::Integrity => (4, 500),
            C::Io => (5, 500),
            C::Internal => (70, 500),
            C::Unavailable => (75, 503),
        }
    }

    /// Process exit code for the command line.
    pub const fn exit_code(self) -> i32 {
        self.table().0
    }

    /// HTTP status code for the service.
    pub const fn http_status(self) -> u16 {
        self.table().1
    }

    /// Whether the caller is at fault (a 4xx).
    pub const fn is_client_error(self) -> bool {
        let s = self.http_status();
        s >= 400 && s < 500
    }
}

#[cfg(test)]
mod tests {
    use super::ErrorCategory as C;

    #[test]
    fn exit_codes_and_statuses_are_distinct_where_they_must_be() {
        for c in [C::Integrity, C::Io, C::Internal, C::Unavailable] {
            assert!(!c.is_client_error(), "{c:?}");
        }
        assert_eq!(C::Rejected.exit_code(), 6);
        assert_eq!(C::Internal.exit_code(), 70);
        assert_eq!(C::TooLarge.http_status(), 413);
    }
}
