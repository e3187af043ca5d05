package android.vsockplugin;

/** Device events, delivered in order, never blocking the device. */
oneway interface IDeviceEventListener {
    /** event: an encoded vsockplugin.Event (control.proto). Ignore unknown oneof arms. */
    void onEvent(in byte[] event);
}
