//! `CloudError`: every failure of an AWS call, with the AWS error code mapped to
//! an [`ErrorKind`] in one place ([`classify`]), so callers decide on kinds
//! (retry elsewhere, fall back, give up) and never on strings.

use std::fmt;

/// What kind of failure an AWS error code means to spotkeeper.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// No capacity for this (type, zone, market) right now: try another offering.
    InsufficientCapacity,
    /// An account quota (spot instance count, vCPU limit) is exhausted.
    QuotaExceeded,
    /// The spot price is above the maximum price.
    PriceTooLow,
    /// AWS throttled us (the SDK already retried with backoff).
    Throttled,
    /// The resource does not exist (or not yet: EC2 is eventually consistent).
    NotFound,
    /// A client token was reused with different parameters.
    IdempotencyMismatch,
    /// Credentials are missing, wrong or lack a permission.
    Unauthorized,
    /// AWS rejected a parameter (bad AMI, bad type, bad subnet …).
    InvalidRequest,
    /// The request never got an answer (connection refused, timeout, DNS).
    Unreachable,
    /// Not sent: the caller no longer holds the lease of what the call is
    /// for (another daemon acts on it now). Never from AWS.
    Fenced,
    /// Anything else.
    Other,
}

impl ErrorKind {
    /// A short stable name, for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InsufficientCapacity => "insufficient-capacity",
            Self::QuotaExceeded => "quota-exceeded",
            Self::PriceTooLow => "price-too-low",
            Self::Throttled => "throttled",
            Self::NotFound => "not-found",
            Self::IdempotencyMismatch => "idempotency-mismatch",
            Self::Unauthorized => "unauthorized",
            Self::InvalidRequest => "invalid-request",
            Self::Unreachable => "unreachable",
            Self::Fenced => "fenced",
            Self::Other => "other",
        }
    }

    /// This offering (type, zone, market) cannot be had now, another may:
    /// the launch moves on to the next offering and the daemon avoids this
    /// one for a while. Boxes and pools react to it alike.
    pub fn offering_unavailable(self) -> bool {
        matches!(self, Self::InsufficientCapacity | Self::PriceTooLow)
    }

    /// No spot at all for now (an offering refused, or the account's spot
    /// quota): where the config allows it, on-demand stands in.
    pub fn spot_unavailable(self) -> bool {
        self.offering_unavailable() || self == Self::QuotaExceeded
    }

    /// The call may have taken effect without us hearing so (no answer,
    /// or throttled after retries that may have lost an answer): a launch's
    /// intent stays open so the next try reuses its client token.
    pub fn outcome_unknown(self) -> bool {
        matches!(self, Self::Unreachable | Self::Throttled)
    }

    /// Retrying later may succeed without anyone changing anything; a pass
    /// failing for these backs off rather than reporting a broken config.
    pub fn transient(self) -> bool {
        matches!(self, Self::Unreachable | Self::Throttled | Self::Other)
    }
}

/// Maps an AWS error code (`err.code()`) to its kind. EC2's errors are not
/// modelled in the SDK, so this table is the one place that knows them.
pub fn classify(code: &str) -> ErrorKind {
    match code {
        "InsufficientInstanceCapacity"
        | "InsufficientHostCapacity"
        | "InsufficientReservedInstanceCapacity"
        | "InsufficientCapacity"
        | "Unsupported"
        | "UnfulfillableCapacity"
        | "capacity-not-available"
        | "InsufficientFreeAddressesInSubnet" => ErrorKind::InsufficientCapacity,
        "MaxSpotInstanceCountExceeded"
        | "VcpuLimitExceeded"
        | "InstanceLimitExceeded"
        | "MaxSpotFleetRequestCountExceeded"
        | "VolumeLimitExceeded"
        | "AddressLimitExceeded" => ErrorKind::QuotaExceeded,
        "SpotMaxPriceTooLow" | "price-too-low" => ErrorKind::PriceTooLow,
        "RequestLimitExceeded" | "Throttling" | "ThrottlingException" => ErrorKind::Throttled,
        "IdempotentParameterMismatch" => ErrorKind::IdempotencyMismatch,
        "UnauthorizedOperation"
        | "AuthFailure"
        | "AccessDenied"
        | "AccessDeniedException"
        | "InvalidClientTokenId"
        | "SignatureDoesNotMatch"
        | "ExpiredToken"
        | "OptInRequired"
        | "Blocked" => ErrorKind::Unauthorized,
        "ResourceNotFoundException"
        | "NoSuchHostedZone"
        | "AWS.SimpleQueueService.NonExistentQueue"
        | "QueueDoesNotExist" => ErrorKind::NotFound,
        c if c.ends_with(".NotFound")
            || c.ends_with("NotFound")
            || c.ends_with("NotFoundException") =>
        {
            ErrorKind::NotFound
        }
        c if c.starts_with("Invalid") || c.ends_with(".Malformed") || c == "MissingParameter" => {
            ErrorKind::InvalidRequest
        }
        _ => ErrorKind::Other,
    }
}

/// A failed AWS call: which operation, the AWS code, and AWS's message, in one line.
#[derive(Clone, Debug, thiserror::Error)]
pub struct CloudError {
    /// The AWS operation that failed, e.g. `RunInstances`.
    pub operation: &'static str,
    /// The classified kind.
    pub kind: ErrorKind,
    /// The AWS error code, when AWS answered with one.
    pub code: Option<String>,
    /// AWS's message, or a description of the transport failure.
    pub message: String,
}

impl CloudError {
    /// An error with an AWS code (classified through [`classify`]).
    pub fn from_code(operation: &'static str, code: &str, message: impl Into<String>) -> Self {
        Self {
            operation,
            kind: classify(code),
            code: Some(code.to_owned()),
            message: message.into(),
        }
    }

    /// An error of a given kind without an AWS code (transport failures, bad answers).
    pub fn other(operation: &'static str, kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            operation,
            kind,
            code: None,
            message: message.into(),
        }
    }
}

impl fmt::Display for CloudError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.code {
            Some(code) if self.message.is_empty() => write!(f, "{} failed: {code}", self.operation),
            Some(code) => write!(f, "{} failed: {code}: {}", self.operation, self.message),
            None => write!(f, "{} failed: {}", self.operation, self.message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_quota_and_auth_codes_are_told_apart() {
        assert_eq!(
            classify("InsufficientInstanceCapacity"),
            ErrorKind::InsufficientCapacity
        );
        assert_eq!(
            classify("MaxSpotInstanceCountExceeded"),
            ErrorKind::QuotaExceeded
        );
        assert_eq!(classify("VcpuLimitExceeded"), ErrorKind::QuotaExceeded);
        assert_eq!(classify("SpotMaxPriceTooLow"), ErrorKind::PriceTooLow);
        assert_eq!(classify("RequestLimitExceeded"), ErrorKind::Throttled);
        assert_eq!(classify("InvalidInstanceID.NotFound"), ErrorKind::NotFound);
        assert_eq!(classify("InvalidAMIID.NotFound"), ErrorKind::NotFound);
        assert_eq!(classify("ResourceNotFoundException"), ErrorKind::NotFound);
        assert_eq!(
            classify("AWS.SimpleQueueService.NonExistentQueue"),
            ErrorKind::NotFound
        );
        assert_eq!(classify("ParameterNotFound"), ErrorKind::NotFound);
        assert_eq!(
            classify("IdempotentParameterMismatch"),
            ErrorKind::IdempotencyMismatch
        );
        assert_eq!(classify("UnauthorizedOperation"), ErrorKind::Unauthorized);
        assert_eq!(classify("InvalidParameterValue"), ErrorKind::InvalidRequest);
        assert_eq!(classify("SomethingNew"), ErrorKind::Other);
    }

    #[test]
    fn boxes_and_pools_share_one_reaction_per_kind() {
        assert!(ErrorKind::InsufficientCapacity.offering_unavailable());
        assert!(ErrorKind::PriceTooLow.offering_unavailable());
        assert!(!ErrorKind::QuotaExceeded.offering_unavailable());
        assert!(ErrorKind::QuotaExceeded.spot_unavailable());
        assert!(!ErrorKind::Unauthorized.spot_unavailable());
        assert!(ErrorKind::Unreachable.outcome_unknown());
        assert!(ErrorKind::Throttled.outcome_unknown());
        assert!(!ErrorKind::InvalidRequest.outcome_unknown());
        assert!(ErrorKind::Throttled.transient());
        assert!(!ErrorKind::Unauthorized.transient());
    }

    #[test]
    fn display_is_one_line_naming_the_call() {
        let e = CloudError::from_code("RunInstances", "InvalidAMIID.NotFound", "no such image");
        assert_eq!(
            e.to_string(),
            "RunInstances failed: InvalidAMIID.NotFound: no such image"
        );
    }
}
