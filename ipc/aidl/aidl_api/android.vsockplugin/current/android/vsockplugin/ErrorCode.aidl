package android.vsockplugin;

/**
 * Service-specific error codes (Status::ServiceSpecific) of every interface in this package.
 * Append only; never renumber.
 */
@Backing(type="int")
enum ErrorCode {
    NONE = 0,
    /** A request's required_features has a bit this server does not implement. */
    UNSUPPORTED_FEATURE = 1,
    /** A payload could not be decoded, or a value is out of range or inconsistent. */
    INVALID_ARGUMENT = 2,
    /** No such connection, registration or listener. */
    NOT_FOUND = 3,
    /** The port (and CID) is already registered by another service. */
    ALREADY_REGISTERED = 4,
    /** The device refused the operation. */
    REFUSED = 5,
}
