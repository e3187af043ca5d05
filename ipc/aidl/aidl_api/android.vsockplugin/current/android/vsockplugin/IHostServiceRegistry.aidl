package android.vsockplugin;

import android.vsockplugin.IHostServiceCallback;
import android.vsockplugin.ServiceRegistration;

/**
 * Host services register here for a port guests connect to on CID 2. A guest connection to that
 * port is offered to the service's callback, which hands back a connected socket. Binder carries
 * only control; the bytes flow through the socket. When the registering process dies (binder death
 * notification) its registrations are removed.
 */
interface IHostServiceRegistry {
    /** ServiceRegistration.guestCid value meaning "any guest". */
    const long CID_ANY = -1;

    /**
     * Register callback for registration.hostPort. Returns a registration id for unregisterService.
     * Errors: ALREADY_REGISTERED (same port and CID taken), INVALID_ARGUMENT, UNSUPPORTED_FEATURE;
     * EX_SECURITY for a caller outside the allow-list.
     */
    long registerService(in ServiceRegistration registration, IHostServiceCallback callback);

    /** Remove a registration made by this caller. Errors: NOT_FOUND. */
    void unregisterService(long registrationId);
}
