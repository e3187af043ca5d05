package android.vsockplugin;

import android.vsockplugin.ConnectReply;
import android.vsockplugin.GuestConnectRequest;

/** Implemented by a host service; called by the plugin when a guest connects to its port. */
interface IHostServiceCallback {
    /**
     * Return one end of a connected stream socket (the service keeps the other), or a refusal.
     * Called from the plugin's device path: answer promptly; the plugin bounds the wait.
     */
    ConnectReply onGuestConnect(in GuestConnectRequest request);
}
