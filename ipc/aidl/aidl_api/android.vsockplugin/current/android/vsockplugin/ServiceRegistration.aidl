package android.vsockplugin;

/** What a host service asks to serve. Fields are only appended, each with a default. */
parcelable ServiceRegistration {
    /** The port guests connect to on CID 2 (unsigned 32-bit value). */
    int hostPort;
    /** Only connections from this guest; IHostServiceRegistry.CID_ANY (-1) = from any guest. */
    long guestCid = -1;
    /** Name reported by routes and logs. */
    String name;
    /** Feature bits (vsockplugin.Feature) the registry must implement, else UNSUPPORTED_FEATURE. */
    long requiredFeatures = 0;
}
