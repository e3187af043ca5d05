package android.vsockplugin;

/** Answer of IHostServiceCallback.onGuestConnect: a connected socket, or a refusal. */
parcelable ConnectReply {
    /**
     * One end of a connected SOCK_STREAM socket; the plugin moves the guest connection's bytes
     * through it. null = refused (the guest gets a reset).
     */
    @nullable ParcelFileDescriptor socket;
    /** Why the connection was refused; reported in logs and routes. Empty when accepted. */
    String refusalReason;
}
