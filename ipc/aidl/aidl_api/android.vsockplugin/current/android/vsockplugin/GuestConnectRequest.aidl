package android.vsockplugin;

/** A guest opened a stream connection to CID 2 (the host) on hostPort. */
parcelable GuestConnectRequest {
    /** The guest's context id. */
    long guestCid;
    /** The guest's source port. */
    int guestPort;
    /** The port the guest connected to (the registered port), as an unsigned 32-bit value. */
    int hostPort;
}
